// A seeded stand-in for a process that writes whatever it likes into a
// shared region (DESIGN.md, "Shared memory is untrusted input"): the tests
// choose where (tests/unit/test_*_scribble.cpp), this chooses how wide and
// what. Every seed replays the same writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <system_error>

namespace shmbus::test {

class scribbler {
 public:
  explicit scribbler(std::uint64_t seed) : m_random(seed) {}

  /// A number in [0, n); 0 when n is 0.
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : m_random() % n; }
  bool chance(unsigned percent) { return below(100) < percent; }

  /// Writes one word of 1, 2, 4 or 8 bytes (the low bytes of the value: the
  /// regions are little-endian) at `offset`, rounded down to the word's
  /// width and kept inside the `size` bytes at `base`. The value is one a
  /// reader is likely to mishandle: 0, all ones, 1, INT32_MAX, `span`, a
  /// small number, a power of two, `near` itself (a value the region holds,
  /// e.g. a position) or near it within two `span`s, or random.
  void write_word(std::byte* base, std::size_t size, std::size_t offset, std::uint64_t near, std::uint64_t span) {
    static constexpr std::size_t widths[] = {1, 2, 4, 8};
    const std::size_t width = widths[below(4)];
    offset &= ~(width - 1);
    if (offset + width > size) offset = size - width;
    const std::uint64_t value = pick(near, span);
    std::memcpy(base + offset, &value, width);
  }

 private:
  std::uint64_t pick(std::uint64_t near, std::uint64_t span) {
    switch (below(11)) {
      case 0: return 0;
      case 1: return ~std::uint64_t{0};
      case 2: return 1;
      case 3: return 0x7fffffff;
      case 4: return span;
      case 5: return near + below(2 * span);
      case 6: return near - below(2 * span);
      case 7: return below(64);
      case 8: return std::uint64_t{1} << below(64);
      case 9: return near;
      default: return m_random();
    }
  }

  std::mt19937_64 m_random;
};

/// How many seeds a scribble test runs: `by_default`, or
/// SHMBUS_SCRIBBLE_SEEDS for a longer hunt by hand.
inline std::uint64_t scribble_seeds(std::uint64_t by_default) {
  const char* const more = std::getenv("SHMBUS_SCRIBBLE_SEEDS");
  return more != nullptr ? std::strtoull(more, nullptr, 10) : by_default;
}

/// Runs `step` on a scribbled object: an error it throws (a shmbus::error,
/// or the errno of a refused call: std::system_error either way) is what
/// may happen, and is counted in `refused`; any other exception fails the
/// test.
template <class Step>
void tolerate_errors(Step step, std::uint64_t& refused) {
  try {
    step();
  } catch (const std::system_error&) {
    ++refused;
  }
}

}  // namespace shmbus::test
