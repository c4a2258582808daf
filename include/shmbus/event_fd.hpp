// event_fd: a kernel counter that one side signals and the other awaits.
//
// The doorbell of shmbus: signal() is one write(2) (never an io_uring write,
// which the kernel hands to a worker thread and which is several times
// slower to wake the reader); wait() is an io_uring read that resumes the
// awaiting coroutine when the counter becomes non-zero and consumes it.
// The descriptor can be inherited across fork/exec or sent over a Unix
// socket, so the signalling side may be another process.
#pragma once

#include <shmbus/detail/io_operation.hpp>
#include <shmbus/export.hpp>
#include <shmbus/fd.hpp>

#include <chrono>
#include <cstdint>
#include <optional>

namespace shmbus {

class scheduler;

/// An eventfd in counter mode. Move-only.
///
/// Thread-safety: signal() and try_consume() may be called from any thread
/// or process holding the descriptor; a given event_fd should have one
/// waiter at a time (a second one would race for the count).
class SHMBUS_API event_fd {
 public:
  /// A new eventfd with counter `initial` (close-on-exec).
  explicit event_fd(std::uint64_t initial = 0);
  /// Takes ownership of a descriptor received from elsewhere; throws
  /// shmbus::error (errc::not_supported) if it is not an eventfd.
  static event_fd adopt(unique_fd fd);

  /// Adds `n` to the counter, waking a waiter. One write(2); never blocks
  /// unless the counter would overflow. Throws shmbus::error on failure.
  void signal(std::uint64_t n = 1) const;
  /// Same as signal() but reports failure as an errno instead (0 on success).
  int try_signal(std::uint64_t n = 1) const noexcept;
  /// Takes the counter if it is non-zero, without blocking.
  std::optional<std::uint64_t> try_consume() const noexcept;

  /// Awaitable that resumes once the counter is non-zero, with its value
  /// (reset to zero). May suspend; throws errc::cancelled on stop.
  class SHMBUS_API wait_awaitable : public detail::io_awaitable {
   public:
    wait_awaitable(scheduler& s, int fd) noexcept;
    std::uint64_t await_resume();

   private:
    static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
    int m_fd;
    std::uint64_t m_value = 0;
  };
  [[nodiscard]] wait_awaitable wait(scheduler& s) const noexcept { return {s, m_fd.get()}; }

  /// Like wait(), but gives up after `limit`: resumes with the value, or
  /// with std::nullopt when the time ran out first. One read with a
  /// deadline, which the scheduler's one timer for all deadlines serves: no
  /// timer of its own, no allocation. May suspend; throws errc::cancelled
  /// on stop.
  class SHMBUS_API timed_wait_awaitable : public detail::io_awaitable {
   public:
    timed_wait_awaitable(scheduler& s, int fd, std::chrono::nanoseconds limit) noexcept;
    std::optional<std::uint64_t> await_resume();

   private:
    static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
    int m_fd;
    std::uint64_t m_value = 0;
  };
  [[nodiscard]] timed_wait_awaitable wait_for(scheduler& s, std::chrono::nanoseconds limit) const noexcept {
    return {s, m_fd.get(), limit};
  }

  /// The descriptor, still owned by this object.
  int native_handle() const noexcept { return m_fd.get(); }
  /// A duplicate descriptor, e.g. to pass to a child (cloexec cleared when
  /// `cloexec` is false).
  unique_fd duplicate(bool cloexec = true) const;

 private:
  explicit event_fd(unique_fd fd) noexcept : m_fd(std::move(fd)) {}
  unique_fd m_fd;
};

}  // namespace shmbus
