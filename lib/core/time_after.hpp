// A deadline that a caller's duration cannot overflow.
//
// Options such as a subscriber's spin take any std::chrono::nanoseconds; a
// user who means "as long as it takes" may pass nanoseconds::max(), and
// now + max overflows (undefined behaviour, and a deadline in the past).
#pragma once

#include <chrono>

namespace shmbus::detail {

/// `now + d`, or the steady clock's last instant where that would overflow.
inline std::chrono::steady_clock::time_point time_after(std::chrono::steady_clock::time_point now,
                                                        std::chrono::nanoseconds d) noexcept {
  const auto end = std::chrono::steady_clock::time_point::max();
  return d >= end - now ? end : now + d;
}

}  // namespace shmbus::detail
