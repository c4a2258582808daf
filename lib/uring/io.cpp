#include <shmbus/io.hpp>

#include <shmbus/error.hpp>

#include <fmt/format.h>
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <climits>

namespace shmbus {
namespace {

/// Turns a negative CQE result into the error the await throws.
[[noreturn]] void throw_result(int result, const char* operation, int fd) {
  const std::string object = fmt::format("fd {}", fd);
  if (result == -ECANCELED) throw error(errc::cancelled, operation, object);
  throw_errno(-result, operation, object);
}

// A single request transfers at most INT_MAX bytes (its result is an int).
unsigned clamp_length(std::size_t n) noexcept {
  return static_cast<unsigned>(std::min<std::size_t>(n, INT_MAX));
}

}  // namespace

read_awaitable::read_awaitable(scheduler& s, int fd, std::span<std::byte> buffer, std::uint64_t offset) noexcept
    : io_awaitable(s, &prep), m_fd(fd), m_buffer(buffer), m_offset(offset) {}

void read_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& r = static_cast<read_awaitable&>(self);
  io_uring_prep_read(&sqe, r.m_fd, r.m_buffer.data(), clamp_length(r.m_buffer.size()), r.m_offset);
}

std::size_t read_awaitable::await_resume() {
  const int r = finish();
  if (r < 0) throw_result(r, "read", m_fd);
  return static_cast<std::size_t>(r);
}

write_awaitable::write_awaitable(scheduler& s, int fd, std::span<const std::byte> data, std::uint64_t offset) noexcept
    : io_awaitable(s, &prep), m_fd(fd), m_data(data), m_offset(offset) {}

void write_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& w = static_cast<write_awaitable&>(self);
  io_uring_prep_write(&sqe, w.m_fd, w.m_data.data(), clamp_length(w.m_data.size()), w.m_offset);
}

std::size_t write_awaitable::await_resume() {
  const int r = finish();
  if (r < 0) throw_result(r, "write", m_fd);
  return static_cast<std::size_t>(r);
}

poll_awaitable::poll_awaitable(scheduler& s, int fd, unsigned events) noexcept
    : io_awaitable(s, &prep), m_fd(fd), m_events(events) {}

void poll_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& p = static_cast<poll_awaitable&>(self);
  io_uring_prep_poll_add(&sqe, p.m_fd, p.m_events);
}

unsigned poll_awaitable::await_resume() {
  const int r = finish();
  if (r < 0) throw_result(r, "poll", m_fd);
  return static_cast<unsigned>(r);
}

poll_awaitable async_poll(scheduler& s, int fd, unsigned events) noexcept { return {s, fd, events}; }

fsync_awaitable::fsync_awaitable(scheduler& s, int fd, sync_kind kind, std::uint64_t offset,
                                 std::uint64_t length) noexcept
    : io_awaitable(s, &prep), m_fd(fd), m_kind(kind), m_offset(offset), m_length(length) {}

void fsync_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& f = static_cast<fsync_awaitable&>(self);
  io_uring_prep_fsync(&sqe, f.m_fd, f.m_kind == sync_kind::data ? IORING_FSYNC_DATASYNC : 0);
  // liburing 2.3's helper has no range arguments; the kernel reads them from
  // off and len (vfs_fsync_range), where 0 length means "to the end". A
  // length that does not fit len's 32 bits syncs to the end: more, never less.
  sqe.off = f.m_offset;
  sqe.len = f.m_length > UINT_MAX ? 0 : static_cast<unsigned>(f.m_length);
}

void fsync_awaitable::await_resume() {
  const int r = finish();
  if (r < 0) throw_result(r, "fsync", m_fd);
}

}  // namespace shmbus
