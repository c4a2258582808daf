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
