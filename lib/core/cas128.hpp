// One 16-byte compare-and-swap of a pair of words in shared memory.
//
// On x86-64 this is `lock cmpxchg16b` written out: lock-free, a full
// barrier, and atomic across processes. Written out rather than through
// __sync/__atomic builtins because ThreadSanitizer replaces 16-byte
// builtins with an emulation under a process-local lock, which silently
// stops being atomic between processes.
#pragma once

#include <cstdint>

namespace shmbus::detail {

/// Compares {word[0], word[1]} with {first, second}; if equal, stores
/// {new_first, new_second} and returns true; else loads the current pair
/// into first/second and returns false. `word` must be 16-byte aligned.
inline bool cas128(std::uint64_t* word, std::uint64_t& first, std::uint64_t& second, std::uint64_t new_first,
                   std::uint64_t new_second) noexcept {
#if defined(__x86_64__)
  bool swapped = false;
  __asm__ __volatile__("lock cmpxchg16b %1"
                       : "=@ccz"(swapped), "+m"(*word), "+m"(word[1]), "+a"(first), "+d"(second)
                       : "b"(new_first), "c"(new_second)
                       : "memory");
  return swapped;
#else
  __extension__ typedef unsigned __int128 u128;  // a GNU extension, hence the marker
  const u128 expected = (static_cast<u128>(second) << 64) | first;
  const u128 desired = (static_cast<u128>(new_second) << 64) | new_first;
  const u128 previous = __sync_val_compare_and_swap(reinterpret_cast<u128*>(word), expected, desired);
  if (previous == expected) return true;
  first = static_cast<std::uint64_t>(previous);
  second = static_cast<std::uint64_t>(previous >> 64);
  return false;
#endif
}

/// True if this CPU performs an aligned 16-byte SSE store as one atomic
/// write: so Intel and AMD document it for every processor with AVX.
inline bool store128_is_atomic() noexcept {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx");
#else
  return false;
#endif
}

/// Stores {first, second} into the 16-byte aligned `word` with one store
/// (atomic where store128_is_atomic()); release ordering on x86-64. Not for
/// use where store128_is_atomic() is false.
inline void store128(std::uint64_t* word, std::uint64_t first, std::uint64_t second) noexcept {
#if defined(__x86_64__)
  __extension__ typedef long long v2di __attribute__((vector_size(16)));
  const v2di pair = {static_cast<long long>(first), static_cast<long long>(second)};
  __asm__ __volatile__("movdqa %1, %0" : "=m"(*reinterpret_cast<v2di*>(word)) : "x"(pair) : "memory");
#else
  (void)word, (void)first, (void)second;
  __builtin_trap();
#endif
}

}  // namespace shmbus::detail
