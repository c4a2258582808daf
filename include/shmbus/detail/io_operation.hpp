// The state of one io_uring request, embedded in an awaiter that lives in
// the frame of the suspended coroutine waiting for it.
//
// Invariants (see docs/SCHEDULER.md):
//   - user_data of the request is the address of its io_operation; the
//     scheduler reserves 0 (ignored completions) and the addresses of its own
//     internal operations.
//   - a frame holding an io_operation is never resumed (hence never
//     destroyed) while the request is in flight: cancellation submits
//     IORING_OP_ASYNC_CANCEL and then waits for the request's own completion.
//   - everything here is touched only by the scheduler's thread, except that
//     a stop callback running on another thread queues a cancel request
//     under the scheduler's remote mutex (see cancel_from_stop_callback).
#pragma once

#include <shmbus/export.hpp>
#include <shmbus/task.hpp>

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <optional>
#include <stop_token>

struct io_uring_sqe;

namespace shmbus {
class scheduler;
}

namespace shmbus::detail {

struct io_operation {
  /// Fills the SQE for this request (everything except user_data).
  using prep_fn = void (*)(io_operation& self, io_uring_sqe& sqe) noexcept;

  enum class state : std::uint8_t {
    idle,       ///< not submitted
    parked,     ///< waiting for room in the completion queue
    in_flight,  ///< an SQE carries its address
    completed,  ///< its CQE was reaped; the waiter is queued to resume
  };

  explicit io_operation(prep_fn prep) noexcept : m_prep(prep) {}
  io_operation(const io_operation&) = delete;
  io_operation& operator=(const io_operation&) = delete;

  prep_fn m_prep;
  /// When non-zero, a CLOCK_MONOTONIC time in nanoseconds: a request still
  /// pending then is cancelled (it completes with -ECANCELED). Submitted
  /// requests with a deadline are on the scheduler's deadline list, served by
  /// one kernel timer for all of them (docs/SCHEDULER.md, "Deadlines").
  std::int64_t m_deadline_ns = 0;
  io_operation* m_deadline_prev = nullptr;
  io_operation* m_deadline_next = nullptr;
  std::coroutine_handle<> m_waiter;
  io_operation* m_next_parked = nullptr;
  int m_result = 0;
  state m_state = state::idle;
  bool m_on_deadline_list = false;
};

/// The io_operation::m_deadline_ns that lies `limit` from now (at least
/// now; saturated far in the future).
SHMBUS_API std::int64_t deadline_after(std::chrono::nanoseconds limit) noexcept;

/// Base of every awaitable io_uring request: stop-token plumbing.
///
/// await_suspend takes the awaiting coroutine's stop token; if stop is
/// already requested the request is not submitted and the result is
/// -ECANCELED; otherwise it is submitted and a stop callback is registered
/// that cancels it in the kernel.
class SHMBUS_API io_awaitable : public io_operation {
 public:
  bool await_ready() const noexcept { return false; }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> waiter) noexcept {
    return suspend(waiter, stop_token_of(waiter));
  }

 protected:
  io_awaitable(scheduler& sched, prep_fn prep) noexcept : io_operation(prep), m_scheduler(&sched) {}

  /// Submits the request; false when it completed without suspending.
  bool suspend(std::coroutine_handle<> waiter, const std::stop_token& token) noexcept;
  /// Tears down the stop callback; returns the CQE result (-errno on failure).
  int finish() noexcept;

  scheduler& owner() const noexcept { return *m_scheduler; }
  /// Whether the awaiting coroutine's stop token was triggered.
  bool stop_requested() const noexcept { return m_token.stop_requested(); }

 private:
  struct canceller {
    io_awaitable* m_op;
    void operator()() const noexcept;
  };

  scheduler* m_scheduler;
  std::stop_token m_token;
  std::optional<std::stop_callback<canceller>> m_stop_callback;
};

}  // namespace shmbus::detail
