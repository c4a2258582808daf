// Awaitable io_uring requests on file descriptors: read, write, poll, fsync.
//
// Each returns an awaitable holding the request (no allocation). All of them
// may suspend, honour the awaiting task's stop token (the request is
// cancelled in the kernel; the await throws errc::cancelled), and throw
// shmbus::error with the errno and "fd N" as the object on failure.
// The fd and buffer must stay valid until the await completes.
#pragma once

#include <shmbus/detail/io_operation.hpp>
#include <shmbus/export.hpp>
#include <shmbus/scheduler.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

namespace shmbus {

/// Offset meaning "the file's current position" (pipes, sockets, eventfds).
inline constexpr std::uint64_t current_position = ~std::uint64_t{0};

/// Awaitable read(2)/pread(2); resumes with the number of bytes read (0 at end of file).
class SHMBUS_API read_awaitable : public detail::io_awaitable {
 public:
  read_awaitable(scheduler& s, int fd, std::span<std::byte> buffer, std::uint64_t offset) noexcept;
  std::size_t await_resume();

 private:
  static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
  int m_fd;
  std::span<std::byte> m_buffer;
  std::uint64_t m_offset;
};

/// Awaitable write(2)/pwrite(2); resumes with the number of bytes written.
class SHMBUS_API write_awaitable : public detail::io_awaitable {
 public:
  write_awaitable(scheduler& s, int fd, std::span<const std::byte> data, std::uint64_t offset) noexcept;
  std::size_t await_resume();

 private:
  static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
  int m_fd;
  std::span<const std::byte> m_data;
  std::uint64_t m_offset;
};

/// Awaitable one-shot poll; resumes with the returned events (POLLIN, ...).
class SHMBUS_API poll_awaitable : public detail::io_awaitable {
 public:
  poll_awaitable(scheduler& s, int fd, unsigned events) noexcept;
  unsigned await_resume();

 private:
  static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
  int m_fd;
  unsigned m_events;
};

/// What an fsync waits for.
enum class sync_kind : std::uint8_t {
  data,  ///< fdatasync: the data and the metadata needed to read it back
  full,  ///< fsync: all metadata too
};

/// Awaitable fsync/fdatasync of a byte range (length 0: to the end of file).
class SHMBUS_API fsync_awaitable : public detail::io_awaitable {
 public:
  fsync_awaitable(scheduler& s, int fd, sync_kind kind, std::uint64_t offset, std::uint64_t length) noexcept;
  void await_resume();

 private:
  static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
  int m_fd;
  sync_kind m_kind;
  std::uint64_t m_offset;
  std::uint64_t m_length;
};

/// Reads into `buffer` from `fd` at `offset` (or the current position).
[[nodiscard]] inline read_awaitable async_read(scheduler& s, int fd, std::span<std::byte> buffer,
                                               std::uint64_t offset = current_position) noexcept {
  return {s, fd, buffer, offset};
}
/// Writes `data` to `fd` at `offset` (or the current position).
[[nodiscard]] inline write_awaitable async_write(scheduler& s, int fd, std::span<const std::byte> data,
                                                 std::uint64_t offset = current_position) noexcept {
  return {s, fd, data, offset};
}
/// Waits until `fd` reports one of `events` (POLLIN by default).
[[nodiscard]] SHMBUS_API poll_awaitable async_poll(scheduler& s, int fd, unsigned events = 0x001) noexcept;
/// Makes the range durable, like fdatasync (sync_kind::data) or fsync.
[[nodiscard]] inline fsync_awaitable async_fsync(scheduler& s, int fd, sync_kind kind = sync_kind::data,
                                                 std::uint64_t offset = 0, std::uint64_t length = 0) noexcept {
  return {s, fd, kind, offset, length};
}

}  // namespace shmbus
