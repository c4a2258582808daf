// Byte patterns that the region tests and region_helper write and check,
// so that two processes agree on what "the other side wrote" means.
#pragma once

#include <cstddef>
#include <span>

namespace shmbus::test {

inline constexpr unsigned pattern_a = 0xa1;
inline constexpr unsigned pattern_b = 0xb2;
inline constexpr unsigned pattern_c = 0xc3;

/// Writes the pattern of `seed`: byte i is (i * 31 + seed) mod 256.
inline void fill(std::span<std::byte> bytes, unsigned seed) {
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
}

/// True if `bytes` holds the pattern of `seed`.
inline bool holds(std::span<const std::byte> bytes, unsigned seed) {
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] != static_cast<std::byte>((i * 31 + seed) & 0xff)) return false;
  return true;
}

}  // namespace shmbus::test
