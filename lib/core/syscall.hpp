// Private helpers around raw system calls.
#pragma once

#include <cerrno>
#include <utility>

namespace shmbus::detail {

/// Calls `f` until it does not fail with EINTR; returns its last result.
template <class F>
auto retry_on_eintr(F&& f) {
  for (;;) {
    auto r = f();
    if (!(r == -1 && errno == EINTR)) return r;
  }
}

}  // namespace shmbus::detail
