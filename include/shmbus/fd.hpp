// unique_fd: sole owner of a file descriptor.
#pragma once

#include <shmbus/export.hpp>

#include <utility>

namespace shmbus {

/// Owns one file descriptor and closes it on destruction.
///
/// Move-only; not thread-safe (like any value). close(2) is not retried on
/// EINTR: on Linux the descriptor is released even then.
class SHMBUS_API unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : m_fd(fd) {}
  unique_fd(unique_fd&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.m_fd, -1));
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  /// The descriptor, or -1.
  int get() const noexcept { return m_fd; }
  explicit operator bool() const noexcept { return m_fd >= 0; }
  /// Gives the descriptor up without closing it.
  [[nodiscard]] int release() noexcept { return std::exchange(m_fd, -1); }
  /// Closes the current descriptor (if any) and takes `fd`.
  void reset(int fd = -1) noexcept;

 private:
  int m_fd = -1;
};

}  // namespace shmbus
