// A lifetime probe: counts constructions and destructions so a test can
// prove that a coroutine frame released everything it held.
#pragma once

#include <cstddef>

namespace shmbus::test {

struct counted {
  static inline std::size_t constructed = 0;
  static inline std::size_t destroyed = 0;
  static void reset() noexcept { constructed = destroyed = 0; }
  static std::size_t alive() noexcept { return constructed - destroyed; }

  counted() noexcept { ++constructed; }
  counted(const counted&) noexcept { ++constructed; }
  counted(counted&&) noexcept { ++constructed; }
  counted& operator=(const counted&) = default;
  counted& operator=(counted&&) = default;
  ~counted() { ++destroyed; }
};

}  // namespace shmbus::test
