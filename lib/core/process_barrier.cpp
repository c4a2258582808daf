#include "core/process_barrier.hpp"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace shmbus::detail {
namespace {

long membarrier(int command) noexcept { return ::syscall(__NR_membarrier, command, 0u, 0); }

bool register_once() noexcept {
  const long supported = membarrier(MEMBARRIER_CMD_QUERY);
  if (supported < 0 || (supported & MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return false;
  return membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
}

}  // namespace

bool enable_light_barriers() noexcept {
  static const bool registered = register_once();  // thread-safe, once per process
  return registered;
}

bool heavy_barrier() noexcept { return membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0; }

}  // namespace shmbus::detail
