#include <shmbus/event_fd.hpp>

#include <shmbus/error.hpp>
#include <shmbus/scheduler.hpp>

#include "core/syscall.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <string>

namespace shmbus {
namespace {

std::string describe(int fd) { return fmt::format("eventfd {}", fd); }

/// /proc/self/fdinfo/N of an eventfd has an "eventfd-count:" line; nothing
/// else has. (fstat cannot tell: every anon inode looks the same.)
bool is_eventfd(int fd) {
  std::ifstream info(fmt::format("/proc/self/fdinfo/{}", fd));
  std::string line;
  while (std::getline(info, line))
    if (line.rfind("eventfd-count:", 0) == 0) return true;
  return false;
}

}  // namespace

// Blocking mode on purpose: an io_uring read of an O_NONBLOCK eventfd fails
// with EAGAIN instead of waiting. try_consume() asks for non-blocking
// behaviour per call with RWF_NOWAIT.
event_fd::event_fd(std::uint64_t initial) {
  if (initial > 0xffffffffu)
    throw error(errc::bad_size, "eventfd", "event_fd", fmt::format("initial count {} > 2^32-1", initial));
  m_fd.reset(::eventfd(static_cast<unsigned>(initial), EFD_CLOEXEC));
  if (!m_fd) throw_errno("eventfd", "event_fd");
}

event_fd event_fd::adopt(unique_fd fd) {
  if (!fd) throw error(std::make_error_code(std::errc::bad_file_descriptor), "adopt", "event_fd", "no descriptor");
  if (!is_eventfd(fd.get())) throw error(errc::not_supported, "adopt", describe(fd.get()), "not an eventfd");
  // A descriptor made elsewhere may be non-blocking; our waits need blocking.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0) throw_errno("fcntl", describe(fd.get()));
  if ((flags & O_NONBLOCK) != 0 && ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) < 0)
    throw_errno("fcntl", describe(fd.get()));
  return event_fd(std::move(fd));
}

int event_fd::try_signal(std::uint64_t n) const noexcept {
  const auto r = detail::retry_on_eintr([&] { return ::write(m_fd.get(), &n, sizeof n); });
  return r == static_cast<ssize_t>(sizeof n) ? 0 : errno;
}

void event_fd::signal(std::uint64_t n) const {
  if (int err = try_signal(n); err != 0) throw_errno(err, "write", describe(m_fd.get()));
}

std::optional<std::uint64_t> event_fd::try_consume() const noexcept {
  std::uint64_t value = 0;
  iovec iov{&value, sizeof value};
  const auto r = detail::retry_on_eintr([&] { return ::preadv2(m_fd.get(), &iov, 1, -1, RWF_NOWAIT); });
  if (r != static_cast<ssize_t>(sizeof value)) return std::nullopt;
  return value;
}

unique_fd event_fd::duplicate(bool cloexec) const {
  unique_fd copy(::fcntl(m_fd.get(), cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 0));
  if (!copy) throw_errno("dup", describe(m_fd.get()));
  return copy;
}

event_fd::wait_awaitable::wait_awaitable(scheduler& s, int fd) noexcept : io_awaitable(s, &prep), m_fd(fd) {}

void event_fd::wait_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& w = static_cast<wait_awaitable&>(self);
  io_uring_prep_read(&sqe, w.m_fd, &w.m_value, sizeof w.m_value, 0);
}

std::uint64_t event_fd::wait_awaitable::await_resume() {
  const int r = finish();
  if (r == -ECANCELED) throw error(errc::cancelled, "wait", describe(m_fd));
  if (r < 0) throw_errno(-r, "wait", describe(m_fd));
  if (r != static_cast<int>(sizeof m_value))
    throw error(std::make_error_code(std::errc::io_error), "wait", describe(m_fd), fmt::format("short read of {} bytes", r));
  return m_value;
}

event_fd::timed_wait_awaitable::timed_wait_awaitable(scheduler& s, int fd, std::chrono::nanoseconds limit) noexcept
    : io_awaitable(s, &prep), m_fd(fd) {
  m_deadline_ns = detail::deadline_after(limit);
}

void event_fd::timed_wait_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& w = static_cast<timed_wait_awaitable&>(self);
  io_uring_prep_read(&sqe, w.m_fd, &w.m_value, sizeof w.m_value, 0);
}

std::optional<std::uint64_t> event_fd::timed_wait_awaitable::await_resume() {
  // Both a stop request and the deadline end the read with
  // -ECANCELED; the token tells them apart.
  const bool stopped = stop_requested();
  const int r = finish();
  if (r == -ECANCELED || r == -EINTR) {
    if (stopped) throw error(errc::cancelled, "wait", describe(m_fd));
    return std::nullopt;
  }
  if (r < 0) throw_errno(-r, "wait", describe(m_fd));
  if (r != static_cast<int>(sizeof m_value))
    throw error(std::make_error_code(std::errc::io_error), "wait", describe(m_fd), fmt::format("short read of {} bytes", r));
  return m_value;
}

}  // namespace shmbus
