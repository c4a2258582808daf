// Which sanitizer this translation unit is built with (g++ and clang spell
// it differently).
#pragma once

#if defined(__SANITIZE_THREAD__)
#define SHMBUS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHMBUS_TSAN 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SHMBUS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SHMBUS_ASAN 1
#endif
#endif

/// Sanitized builds run the long multi-process tests with fewer messages:
/// the full counts run in the plain build of the same CI run.
#if defined(SHMBUS_TSAN) || defined(SHMBUS_ASAN)
#define SHMBUS_SANITIZED 1
#endif
