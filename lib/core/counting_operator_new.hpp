// Replaces the global operator new and delete (every replaceable form, so
// that new and delete always pair, which the sanitizers check) with ones
// that count allocations: how tests and benchmarks show that a path makes
// no heap allocation.
//
// Include it in exactly one translation unit of a test or benchmark
// program, never in the library: the replacement is program-wide.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace shmbus::detail {

inline thread_local std::uint64_t t_heap_allocations = 0;

/// Allocations made through operator new by the calling thread since it
/// started. Per thread, because that is what a "no allocation per message"
/// check means: the library's own threads (the doorbell server, started
/// with the first subscriber) allocate when they start and when a peer
/// connects, at moments no caller controls, and a process-wide count would
/// charge that to whatever the caller was timing.
inline std::uint64_t heap_allocations_in_this_thread() noexcept { return t_heap_allocations; }

namespace counting_new {

inline void count_allocation() noexcept { ++t_heap_allocations; }

inline void* counted_malloc(std::size_t n) noexcept {
  count_allocation();
  return std::malloc(n == 0 ? 1 : n);
}
inline void* counted_or_throw(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
inline void* counted_aligned(std::size_t n, std::align_val_t al) noexcept {
  count_allocation();
  const auto a = static_cast<std::size_t>(al);
  const std::size_t rounded = n == 0 ? a : (n + a - 1) / a * a;
  return std::aligned_alloc(a, rounded);
}
inline void* counted_aligned_or_throw(std::size_t n, std::align_val_t al) {
  if (void* p = counted_aligned(n, al)) return p;
  throw std::bad_alloc();
}

}  // namespace counting_new
}  // namespace shmbus::detail

void* operator new(std::size_t n) { return shmbus::detail::counting_new::counted_or_throw(n); }
void* operator new[](std::size_t n) { return shmbus::detail::counting_new::counted_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return shmbus::detail::counting_new::counted_malloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return shmbus::detail::counting_new::counted_malloc(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return shmbus::detail::counting_new::counted_aligned_or_throw(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return shmbus::detail::counting_new::counted_aligned_or_throw(n, a);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return shmbus::detail::counting_new::counted_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return shmbus::detail::counting_new::counted_aligned(n, a);
}
// Inlined into a caller, these pair a free() with what g++ takes for the
// library's operator new, and -Wmismatched-new-delete fires (seen at -O1),
// though both sides are the replacements above and malloc/free do pair.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
