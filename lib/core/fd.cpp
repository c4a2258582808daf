#include <shmbus/fd.hpp>

#include <unistd.h>

namespace shmbus {

void unique_fd::reset(int fd) noexcept {
  if (m_fd >= 0 && m_fd != fd) ::close(m_fd);
  m_fd = fd;
}

}  // namespace shmbus
