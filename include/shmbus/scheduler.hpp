// scheduler: one io_uring, one thread, many coroutines.
//
// A scheduler owns an io_uring and a queue of coroutines ready to run. Its
// thread drives it through run(); every wait (timers, fd readiness, reads,
// writes, fsyncs, eventfds) is an io_uring request whose user_data is the
// address of the waiting awaiter, so no allocation happens per request.
//
// The loop (see docs/SCHEDULER.md for the full protocol):
//
//   ┌─► resume the coroutines queued ready (only those queued at the start)
//   │   issue parked requests while the completion queue has room
//   │   take work posted by other threads
//   │   submit SQEs; block in io_uring_enter only if nothing is ready
//   │   reap a batch of CQEs, queue their waiters, advance the CQ
//   └── (waiters run on the next turn, after the CQ was advanced)
//
// Threads: the scheduler must be constructed, run and destroyed on one
// thread (its io_uring is single-issuer). post() and schedule() from another
// thread are the ways in; they wake the loop through an eventfd that is
// written only when the loop has not already been told.
#pragma once

#include <shmbus/detail/io_operation.hpp>
#include <shmbus/export.hpp>
#include <shmbus/task.hpp>

#include <linux/time_types.h>

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <stop_token>
#include <thread>

namespace shmbus {

class scheduler;

namespace detail {
class spawned_task;
struct scheduler_impl;
}  // namespace detail

/// One io_uring and the coroutines it drives. Not copyable, not movable
/// (awaiters hold its address).
///
/// Thread-safety: everything except post(), schedule() and
/// request_stop() must be called on the owning thread.
class SHMBUS_API scheduler {
 public:
  using clock = std::chrono::steady_clock;

  struct options {
    /// Submission queue entries; the completion queue gets twice as many
    /// (at least 4).
    unsigned entries = 256;
  };

  scheduler() : scheduler(options{}) {}
  /// Creates the io_uring (single-issuer with deferred task running where
  /// the kernel has it) and checks every opcode we use; throws
  /// shmbus::error (errc::not_supported) naming what the kernel lacks.
  explicit scheduler(options opts);
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;
  /// Stops every spawned task (their waits are cancelled in the kernel),
  /// waits for every in-flight request to complete, then frees what is left.
  ~scheduler();

  /// Drives the loop on this thread until `t` completes; returns its value
  /// or rethrows its exception. Spawned tasks run meanwhile. Must not be
  /// called from inside a coroutine running on this scheduler.
  template <class T>
  T run(task<T> t) {
    if (!t.valid()) throw error(errc::broken_promise, "run", "task", "the task holds no coroutine");
    if (!t.done()) {
      enter_run();
      drive(t.handle());
    }
    return std::move(t).operator co_await().await_resume();
  }

  /// Starts `t` on this scheduler without waiting for it. The task inherits
  /// the scheduler's stop token (requested by request_stop() and by the
  /// destructor). An exception escaping it goes to the exception handler;
  /// a cancellation caused by stopping the scheduler is not reported.
  void spawn(task<void> t);

  /// Called with every exception escaping a spawned task. The default
  /// prints it on stderr. Owning thread only.
  void set_exception_handler(std::function<void(std::exception_ptr)> handler);

  /// Runs `fn` on the scheduler's thread at its next turn. Thread-safe.
  void post(std::function<void()> fn);

  /// Asks every spawned task to stop (their stop token). Thread-safe.
  void request_stop() noexcept;
  /// The token spawned tasks inherit.
  std::stop_token stop_token() const noexcept;

  /// Number of spawned tasks still running.
  std::size_t spawned_count() const noexcept;
  /// Number of io_uring requests in flight or parked (internal ones too).
  std::size_t in_flight() const noexcept;

  /// True when called on the thread that owns this scheduler.
  bool on_owner_thread() const noexcept { return std::this_thread::get_id() == m_owner; }

  /// The scheduler whose run() is driving the calling thread, or nullptr.
  /// Awaitables that are not handed a scheduler (a channel's next(), a
  /// publisher held back) wait on this one: one thread, one loop.
  static scheduler* current() noexcept;

  // ---- awaitables -------------------------------------------------------

  /// Awaitable that requeues the awaiting coroutine on this scheduler: a
  /// yield on the owning thread, a hop onto it from any other thread.
  struct schedule_awaitable {
    scheduler* m_scheduler;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) const;
    void await_resume() const noexcept {}
  };
  [[nodiscard]] schedule_awaitable schedule() noexcept { return {this}; }

  /// Awaitable timer (an io_uring timeout request). Throws errc::cancelled
  /// when its stop token is triggered.
  /// A timer that is already due (zero or negative duration, deadline in
  /// the past) does not go to the kernel: it is a yield, ordered before
  /// every later deadline.
  class SHMBUS_API timer_awaitable : public detail::io_awaitable {
   public:
    timer_awaitable(scheduler& s, __kernel_timespec ts, bool absolute, bool due) noexcept;
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> waiter) noexcept {
      if (!m_due) return io_awaitable::await_suspend(waiter);
      return yield(waiter, detail::stop_token_of(waiter));
    }
    void await_resume();

   private:
    static void prep(io_operation& self, io_uring_sqe& sqe) noexcept;
    bool yield(std::coroutine_handle<> waiter, const std::stop_token& token) noexcept;
    __kernel_timespec m_ts;
    bool m_absolute;
    bool m_due;
  };
  /// Suspends for `d` (at least). May suspend; throws errc::cancelled.
  [[nodiscard]] timer_awaitable sleep_for(clock::duration d) noexcept;
  /// Suspends until `deadline` on the steady clock (CLOCK_MONOTONIC).
  [[nodiscard]] timer_awaitable sleep_until(clock::time_point deadline) noexcept;

  // ---- internal interface of awaiters (detail) ---------------------------

  /// Queues a coroutine to resume on this loop's next turn. Owning thread.
  void enqueue(std::coroutine_handle<> h) noexcept;
  /// Hands a request to the kernel, or parks it while the CQ is full.
  void submit(detail::io_operation& op) noexcept;
  /// Cancels a request; its waiter still resumes only on the request's own
  /// completion. Owning thread only.
  void cancel(detail::io_operation& op) noexcept;
  /// Queues a cancel request from a stop callback on another thread.
  void cancel_from_other_thread(detail::io_operation& op) noexcept;
  /// Forgets a queued cross-thread cancel before the op's frame goes away.
  void retract_cancel(detail::io_operation& op) noexcept;
  /// Spawned-task bookkeeping and exception reporting.
  void on_spawned_done(detail::spawned_task& t, std::exception_ptr e) noexcept;

 private:
  void check_owner(const char* operation) const;
  void enter_run();
  void drive(std::coroutine_handle<> root);
  void resume_ready();
  void poll_io(bool may_block);
  void take_remote();
  void issue(detail::io_operation& op) noexcept;
  void wake() noexcept;
  // Deadlines (docs/SCHEDULER.md): one kernel timer for every request that
  // has one, armed for the earliest.
  void watch_deadline(detail::io_operation& op) noexcept;
  void forget_deadline(detail::io_operation& op) noexcept;
  void expire_deadlines() noexcept;

  std::unique_ptr<detail::scheduler_impl> m_impl;
  std::thread::id m_owner;
};

}  // namespace shmbus
