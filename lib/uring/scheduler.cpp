// The io_uring event loop behind shmbus::scheduler. Protocols are described
// in docs/SCHEDULER.md; the comments here say why each step is where it is.
#include <shmbus/scheduler.hpp>

#include <shmbus/error.hpp>
#include <shmbus/fd.hpp>

#include "core/syscall.hpp"
#include "uring/ready_queue.hpp"

#include <fmt/format.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

namespace shmbus {
namespace detail {

/// The promise of the wrapper coroutine that spawn() creates; also the
/// node of the scheduler's list of live spawned tasks.
class spawned_task {
 public:
  struct handle {
    using promise_type = spawned_task;
    std::coroutine_handle<spawned_task> m_coroutine;
  };

  explicit spawned_task(scheduler& s, task<void>&) noexcept : m_scheduler(&s), m_stop_token(s.stop_token()) {}

  handle get_return_object() noexcept { return {std::coroutine_handle<spawned_task>::from_promise(*this)}; }
  std::suspend_always initial_suspend() const noexcept { return {}; }
  void unhandled_exception() noexcept { m_exception = std::current_exception(); }
  void return_void() const noexcept {}
  /// Spawned tasks inherit the scheduler's stop token.
  const std::stop_token& stop_token() const noexcept { return m_stop_token; }

  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<spawned_task> self) const noexcept {
      spawned_task& p = self.promise();
      p.m_scheduler->on_spawned_done(p, p.m_exception);
      self.destroy();  // legal: the frame is suspended at its final point
    }
    void await_resume() const noexcept {}
  };
  final_awaiter final_suspend() const noexcept { return {}; }

  spawned_task* m_prev = nullptr;
  spawned_task* m_next = nullptr;

 private:
  scheduler* m_scheduler;
  std::stop_token m_stop_token;
  std::exception_ptr m_exception;
};

namespace {
spawned_task::handle run_spawned(scheduler&, task<void> body) { co_await std::move(body); }

}  // namespace

/// Work handed in from other threads.
struct remote_item {
  std::function<void()> m_function;
  std::coroutine_handle<> m_coroutine;
  io_operation* m_cancel = nullptr;
};

/// The internal read that keeps the wake-up eventfd armed.
struct wake_operation : io_operation {
  explicit wake_operation(scheduler_impl& impl) noexcept : io_operation(&prep), m_impl(&impl) {}
  static void prep(io_operation& op, io_uring_sqe& sqe) noexcept;
  scheduler_impl* m_impl;
};

namespace {
/// A duration (or a CLOCK_MONOTONIC time) as io_uring's timespec; negative
/// is zero.
__kernel_timespec to_timespec(std::chrono::nanoseconds ns) noexcept {
  if (ns.count() < 0) ns = std::chrono::nanoseconds(0);
  return {static_cast<std::int64_t>(ns.count() / 1'000'000'000), static_cast<long long>(ns.count() % 1'000'000'000)};
}
}  // namespace

/// The one kernel timer behind every request deadline: an absolute
/// IORING_OP_TIMEOUT set for the earliest deadline it was armed for.
struct deadline_timer_operation : io_operation {
  deadline_timer_operation() noexcept : io_operation(&prep) {}
  static void prep(io_operation& op, io_uring_sqe& sqe) noexcept;
  void set(std::int64_t at_ns) noexcept {
    m_armed_ns = at_ns;
    m_at = to_timespec(std::chrono::nanoseconds(at_ns));
  }
  __kernel_timespec m_at{};
  std::int64_t m_armed_ns = 0;
  bool m_cancel_sent = false;  // an earlier deadline came: re-armed on its completion
  bool m_fired = false;        // its CQE was reaped this turn
};

struct scheduler_impl {
  io_uring m_ring{};
  unsigned m_cq_entries = 0;
  unsigned m_turns_without_reap = 0;

  ready_queue m_ready;
  io_operation* m_parked_head = nullptr;
  io_operation* m_parked_tail = nullptr;
  std::size_t m_in_flight = 0;  // SQEs submitted or queued whose CQE is not reaped

  // Cross-thread wake-up: an eventfd read kept in flight while the loop runs.
  unique_fd m_wake_fd;
  std::uint64_t m_wake_buffer = 0;
  wake_operation m_wake_op{*this};
  std::atomic<bool> m_remote_pending{false};
  std::mutex m_remote_mutex;
  std::vector<remote_item> m_remote;  // guarded by m_remote_mutex
  std::vector<remote_item> m_remote_taken;

  // Requests with a deadline, submitted and not yet completed (unordered:
  // there are few, and the list is scanned only when the timer fires).
  io_operation* m_deadlines = nullptr;
  deadline_timer_operation m_deadline_timer;

  spawned_task* m_spawned_head = nullptr;
  std::size_t m_spawned_count = 0;
  std::function<void(std::exception_ptr)> m_exception_handler;
  std::stop_source m_stop;
  bool m_running = false;
  bool m_shutting_down = false;
};

}  // namespace detail

using detail::io_operation;
using detail::scheduler_impl;
using detail::to_timespec;

namespace {

/// user_data of requests whose completion nobody waits for (cancels).
constexpr std::uint64_t ignored_user_data = 0;

void default_exception_handler(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    fmt::print(stderr, "shmbus: exception escaped a spawned task: {}\n", x.what());
  } catch (...) {
    fmt::print(stderr, "shmbus: exception of unknown type escaped a spawned task\n");
  }
}

struct opcode_need {
  int m_opcode;
  const char* m_name;
};
constexpr opcode_need required_opcodes[] = {
    {IORING_OP_READ, "IORING_OP_READ (5.6)"},
    {IORING_OP_WRITE, "IORING_OP_WRITE (5.6)"},
    {IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD (5.1)"},
    {IORING_OP_TIMEOUT, "IORING_OP_TIMEOUT (5.4)"},
    {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL (5.5)"},
    {IORING_OP_FSYNC, "IORING_OP_FSYNC (5.1)"},
};

/// Requests in flight that leave room in the CQ for the deadline timer's
/// CQE.
std::size_t request_room(const scheduler_impl& impl) noexcept { return impl.m_cq_entries - 1; }

/// Now on CLOCK_MONOTONIC (steady_clock's clock and IORING_OP_TIMEOUT's
/// default), in nanoseconds.
std::int64_t monotonic_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Next free SQE. When the SQ is full, submitting hands every queued SQE to
/// the kernel and frees the whole queue; a ring that keeps refusing to take
/// SQEs has broken our bookkeeping (in-flight never exceeds the CQ), and
/// carrying on would lose a wake-up, so that ends the process.
io_uring_sqe& next_sqe(io_uring& ring) noexcept {
  for (int attempt = 0; attempt < 64; ++attempt) {
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring)) return *sqe;
    io_uring_submit(&ring);
  }
  fmt::print(stderr, "shmbus: io_uring accepts no submissions; aborting\n");
  std::abort();
}

/// Creates the ring with the best flags this kernel accepts: SINGLE_ISSUER
/// and DEFER_TASKRUN (6.1) run completions only when we enter the kernel,
/// on our thread; COOP_TASKRUN (5.19) avoids IPIs; plain rings elsewhere.
int create_ring(io_uring& ring, unsigned entries) {
  const unsigned flag_sets[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int r = -EINVAL;
  for (unsigned flags : flag_sets) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_CQSIZE;
    // At least 4: the wake-up read and the deadline timer's kept slot
    // leave room for requests even with one SQ entry.
    params.cq_entries = std::max(entries * 2, 4u);
    r = io_uring_queue_init_params(entries, &ring, &params);
    if (r != -EINVAL) return r;  // success, or a refusal no other flags fix
  }
  return r;
}

}  // namespace

void detail::wake_operation::prep(io_operation& op, io_uring_sqe& sqe) noexcept {
  scheduler_impl& impl = *static_cast<wake_operation&>(op).m_impl;
  io_uring_prep_read(&sqe, impl.m_wake_fd.get(), &impl.m_wake_buffer, sizeof impl.m_wake_buffer, 0);
}

void detail::deadline_timer_operation::prep(io_operation& op, io_uring_sqe& sqe) noexcept {
  auto& t = static_cast<deadline_timer_operation&>(op);
  io_uring_prep_timeout(&sqe, &t.m_at, 0, IORING_TIMEOUT_ABS);
}

scheduler::scheduler(options opts) : m_impl(std::make_unique<scheduler_impl>()), m_owner(std::this_thread::get_id()) {
  if (opts.entries == 0 || opts.entries > 32768)
    throw error(errc::bad_size, "scheduler", "io_uring", fmt::format("{} entries (1..32768)", opts.entries));
  auto& impl = *m_impl;
  if (int r = create_ring(impl.m_ring, opts.entries); r < 0)
    throw_errno(-r, "io_uring_queue_init", "scheduler");
  impl.m_cq_entries = impl.m_ring.cq.ring_entries;

  struct ring_guard {
    io_uring* m_ring;
    ~ring_guard() {
      if (m_ring) io_uring_queue_exit(m_ring);
    }
  } guard{&impl.m_ring};

  if (io_uring_probe* probe = io_uring_get_probe_ring(&impl.m_ring)) {
    for (const auto& need : required_opcodes) {
      if (!io_uring_opcode_supported(probe, need.m_opcode)) {
        io_uring_free_probe(probe);
        throw error(errc::not_supported, "io_uring probe", "scheduler",
                    fmt::format("the kernel lacks {}", need.m_name));
      }
    }
    io_uring_free_probe(probe);
  } else {
    throw error(errc::not_supported, "io_uring probe", "scheduler", "the kernel lacks IORING_REGISTER_PROBE (5.6)");
  }
  // The ring's memory must not be shared with a forked child: it would see
  // (and could corrupt) our queues.
  if (int r = io_uring_ring_dontfork(&impl.m_ring); r < 0) throw_errno(-r, "io_uring_ring_dontfork", "scheduler");

  impl.m_wake_fd.reset(::eventfd(0, EFD_CLOEXEC));
  if (!impl.m_wake_fd) throw_errno("eventfd", "scheduler wake-up");
  impl.m_exception_handler = default_exception_handler;
  guard.m_ring = nullptr;
}

scheduler::~scheduler() {
  auto& impl = *m_impl;
  impl.m_shutting_down = true;
  // Waits with a stop token are cancelled by their callbacks, right here.
  impl.m_stop.request_stop();
  cancel(impl.m_wake_op);
  cancel(impl.m_deadline_timer);

  bool cancel_all_sent = false;
  for (;;) {
    resume_ready();
    if (!impl.m_ready.empty()) continue;
    if (impl.m_in_flight == 0 && impl.m_parked_head == nullptr) break;
    // Requests without a stop token (or ones a task issued while unwinding)
    // are cancelled wholesale; each round at most one such request.
    if (!cancel_all_sent && impl.m_in_flight > 0) {
      io_uring_sqe& sqe = next_sqe(impl.m_ring);
      io_uring_prep_cancel64(&sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(&sqe, ignored_user_data);
      ++impl.m_in_flight;
      cancel_all_sent = true;
    }
    poll_io(true);
    cancel_all_sent = false;
  }
  // What remains is suspended on something that is not a kernel request (a
  // coroutine event nobody will set); no request refers to those frames.
  while (impl.m_spawned_head != nullptr) {
    auto h = std::coroutine_handle<detail::spawned_task>::from_promise(*impl.m_spawned_head);
    impl.m_spawned_head = impl.m_spawned_head->m_next;
    h.destroy();
  }
  io_uring_queue_exit(&impl.m_ring);
}

void scheduler::check_owner(const char* operation) const {
  if (!on_owner_thread())
    throw error(errc::not_supported, operation, "scheduler",
                "called from a thread that does not own the scheduler (use post() or schedule())");
}

void scheduler::enter_run() {
  check_owner("run");
  if (m_impl->m_running)
    throw error(errc::not_supported, "run", "scheduler", "run() called from a coroutine already running on it");
  m_impl->m_running = true;
}

namespace {
thread_local scheduler* t_current = nullptr;
}  // namespace

scheduler* scheduler::current() noexcept { return t_current; }

void scheduler::drive(std::coroutine_handle<> root) {
  struct running_guard {
    scheduler_impl* m_impl;
    scheduler* m_previous;
    ~running_guard() {
      m_impl->m_running = false;
      t_current = m_previous;
    }
  } guard{m_impl.get(), std::exchange(t_current, this)};
  enqueue(root);
  for (;;) {
    resume_ready();
    if (root.done()) return;
    poll_io(m_impl->m_ready.empty());
  }
}

void scheduler::resume_ready() {
  auto& impl = *m_impl;
  // Only what is queued now: a coroutine that keeps yielding must not starve
  // the completions.
  for (std::size_t n = impl.m_ready.size(); n > 0; --n) impl.m_ready.pop().resume();
}

void scheduler::poll_io(bool may_block) {
  auto& impl = *m_impl;

  while (impl.m_parked_head != nullptr && impl.m_in_flight < request_room(impl)) {
    io_operation* op = impl.m_parked_head;
    impl.m_parked_head = op->m_next_parked;
    if (impl.m_parked_head == nullptr) impl.m_parked_tail = nullptr;
    op->m_next_parked = nullptr;
    issue(*op);
  }

  // acq_rel pairs with post()'s exchange: whatever a poster pushed before
  // setting the flag is visible to our lock below.
  if (impl.m_remote_pending.exchange(false, std::memory_order_acq_rel)) take_remote();

  if (!impl.m_shutting_down && impl.m_wake_op.m_state == io_operation::state::idle) submit(impl.m_wake_op);

  const bool block = may_block && impl.m_ready.empty() && impl.m_in_flight > 0;
  if (block) {
    int r = io_uring_submit_and_wait(&impl.m_ring, 1);
    (void)r;  // -EINTR and -EBUSY are retried by the next turn
    impl.m_turns_without_reap = 0;
  } else if (io_uring_sq_ready(&impl.m_ring) > 0) {
    io_uring_submit_and_get_events(&impl.m_ring);
    impl.m_turns_without_reap = 0;
  } else if (impl.m_in_flight > 0 && ++impl.m_turns_without_reap >= 8) {
    // With deferred (or cooperative) task running, completions are posted
    // only when this thread enters the kernel. A busy loop enters every few
    // turns rather than every turn.
    io_uring_get_events(&impl.m_ring);
    impl.m_turns_without_reap = 0;
  }

  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&impl.m_ring, head, cqe) {
    ++seen;
    --impl.m_in_flight;
    const std::uint64_t data = io_uring_cqe_get_data64(cqe);
    if (data == ignored_user_data) continue;
    auto* op = reinterpret_cast<io_operation*>(static_cast<std::uintptr_t>(data));
    op->m_result = cqe->res;
    if (op == &impl.m_wake_op) {
      op->m_state = io_operation::state::idle;  // re-armed on the next turn
      continue;
    }
    if (op == &impl.m_deadline_timer) {
      op->m_state = io_operation::state::idle;
      impl.m_deadline_timer.m_fired = true;  // expired, or cancelled for an earlier deadline
      continue;
    }
    if (op->m_on_deadline_list) forget_deadline(*op);
    op->m_state = io_operation::state::completed;
    impl.m_ready.push(op->m_waiter);
  }
  // Advance before any waiter runs: a resumed coroutine may submit again.
  io_uring_cq_advance(&impl.m_ring, seen);
  // After the whole batch: a request whose CQE came with the timer's has
  // left the list and is not cancelled. Its cancels go into the SQ before
  // anything a resumed waiter submits, so none can reach a later request
  // made at the same address.
  if (impl.m_deadline_timer.m_fired) expire_deadlines();
}

void scheduler::watch_deadline(io_operation& op) noexcept {
  auto& impl = *m_impl;
  op.m_deadline_prev = nullptr;
  op.m_deadline_next = impl.m_deadlines;
  if (impl.m_deadlines != nullptr) impl.m_deadlines->m_deadline_prev = &op;
  impl.m_deadlines = &op;
  op.m_on_deadline_list = true;

  detail::deadline_timer_operation& timer = impl.m_deadline_timer;
  if (timer.m_state != io_operation::state::in_flight) {
    if (impl.m_shutting_down) return;
    timer.set(op.m_deadline_ns);
    issue(timer);  // into the CQ slot kept for it (see submit)
    return;
  }
  // Usually the timer is set for an earlier deadline (most deadlines are
  // now + the same bound). Otherwise take it back; its completion re-arms
  // it for the earliest.
  if (op.m_deadline_ns < timer.m_armed_ns && !timer.m_cancel_sent) {
    timer.m_cancel_sent = true;
    cancel(timer);
  }
}

void scheduler::forget_deadline(io_operation& op) noexcept {
  auto& impl = *m_impl;
  if (op.m_deadline_prev != nullptr) op.m_deadline_prev->m_deadline_next = op.m_deadline_next;
  else impl.m_deadlines = op.m_deadline_next;
  if (op.m_deadline_next != nullptr) op.m_deadline_next->m_deadline_prev = op.m_deadline_prev;
  op.m_deadline_prev = op.m_deadline_next = nullptr;
  op.m_on_deadline_list = false;
}

void scheduler::expire_deadlines() noexcept {
  auto& impl = *m_impl;
  detail::deadline_timer_operation& timer = impl.m_deadline_timer;
  timer.m_fired = false;
  timer.m_cancel_sent = false;
  const std::int64_t now = monotonic_ns();
  std::int64_t earliest = 0;
  for (io_operation* op = impl.m_deadlines; op != nullptr;) {
    io_operation* next = op->m_deadline_next;
    if (op->m_deadline_ns <= now) {
      // Its waiter resumes on the request's own CQE (-ECANCELED, or its
      // result if it won the race), as with a stop request.
      forget_deadline(*op);
      cancel(*op);
    } else if (earliest == 0 || op->m_deadline_ns < earliest) {
      earliest = op->m_deadline_ns;
    }
    op = next;
  }
  if (earliest != 0 && !impl.m_shutting_down) {
    timer.set(earliest);
    issue(timer);
  }
}

void scheduler::take_remote() {
  auto& impl = *m_impl;
  {
    std::lock_guard lock(impl.m_remote_mutex);
    impl.m_remote_taken.swap(impl.m_remote);
  }
  for (auto& item : impl.m_remote_taken) {
    if (item.m_coroutine) {
      enqueue(item.m_coroutine);
    } else if (item.m_cancel != nullptr) {
      // The frame is alive: its awaiter retracts queued cancels before it
      // can be resumed (io_awaitable::finish).
      cancel(*item.m_cancel);
    } else if (item.m_function) {
      try {
        item.m_function();
      } catch (...) {
        impl.m_exception_handler(std::current_exception());
      }
    }
  }
  impl.m_remote_taken.clear();
}

void scheduler::enqueue(std::coroutine_handle<> h) noexcept {
  try {
    m_impl->m_ready.push(h);
  } catch (const std::bad_alloc&) {
    // Growing the ready queue is the only allocation here; without memory
    // we cannot keep a promise to resume, and losing a coroutine is worse.
    std::terminate();
  }
}

void scheduler::submit(io_operation& op) noexcept {
  auto& impl = *m_impl;
  if (op.m_deadline_ns != 0) watch_deadline(op);
  if (impl.m_in_flight >= request_room(impl) || impl.m_parked_head != nullptr) {
    // Keep in-flight requests within the CQ's size so it cannot overflow,
    // less one CQE kept for the deadline timer, so that requests waiting
    // for room never keep it from expiring them; FIFO so that parked
    // requests keep their order.
    op.m_state = io_operation::state::parked;
    op.m_next_parked = nullptr;
    if (impl.m_parked_tail) impl.m_parked_tail->m_next_parked = &op;
    else impl.m_parked_head = &op;
    impl.m_parked_tail = &op;
    return;
  }
  issue(op);
}

void scheduler::issue(io_operation& op) noexcept {
  auto& impl = *m_impl;
  io_uring_sqe& sqe = next_sqe(impl.m_ring);
  op.m_prep(op, sqe);
  io_uring_sqe_set_data64(&sqe, reinterpret_cast<std::uintptr_t>(&op));
  op.m_state = io_operation::state::in_flight;
  ++impl.m_in_flight;
}

void scheduler::cancel(io_operation& op) noexcept {
  auto& impl = *m_impl;
  switch (op.m_state) {
    case io_operation::state::idle:
    case io_operation::state::completed:
      return;
    case io_operation::state::parked: {
      io_operation** link = &impl.m_parked_head;
      io_operation* prev = nullptr;
      while (*link != &op) {
        prev = *link;
        link = &(*link)->m_next_parked;
      }
      *link = op.m_next_parked;
      if (impl.m_parked_tail == &op) impl.m_parked_tail = prev;
      op.m_next_parked = nullptr;
      if (op.m_on_deadline_list) forget_deadline(op);
      op.m_result = -ECANCELED;
      op.m_state = io_operation::state::completed;
      if (op.m_waiter) enqueue(op.m_waiter);
      return;
    }
    case io_operation::state::in_flight: {
      io_uring_sqe& sqe = next_sqe(impl.m_ring);
      io_uring_prep_cancel64(&sqe, reinterpret_cast<std::uintptr_t>(&op), 0);
      io_uring_sqe_set_data64(&sqe, ignored_user_data);
      ++impl.m_in_flight;
      return;
    }
  }
}

void scheduler::cancel_from_other_thread(io_operation& op) noexcept {
  {
    std::lock_guard lock(m_impl->m_remote_mutex);
    try {
      m_impl->m_remote.push_back(detail::remote_item{{}, {}, &op});
    } catch (const std::bad_alloc&) {
      std::terminate();
    }
  }
  wake();
}

void scheduler::retract_cancel(io_operation& op) noexcept {
  std::lock_guard lock(m_impl->m_remote_mutex);
  std::erase_if(m_impl->m_remote, [&](const detail::remote_item& i) { return i.m_cancel == &op; });
}

void scheduler::wake() noexcept {
  // Write the eventfd only on the false -> true edge: one system call per
  // batch of posts, none while the loop has not yet taken the last one.
  if (!m_impl->m_remote_pending.exchange(true, std::memory_order_acq_rel)) {
    const std::uint64_t one = 1;
    detail::retry_on_eintr([&] { return ::write(m_impl->m_wake_fd.get(), &one, sizeof one); });
  }
}

void scheduler::post(std::function<void()> fn) {
  {
    std::lock_guard lock(m_impl->m_remote_mutex);
    m_impl->m_remote.push_back(detail::remote_item{std::move(fn), {}, nullptr});
  }
  wake();
}

void scheduler::schedule_awaitable::await_suspend(std::coroutine_handle<> h) const {
  if (m_scheduler->on_owner_thread()) {
    m_scheduler->enqueue(h);
    return;
  }
  {
    std::lock_guard lock(m_scheduler->m_impl->m_remote_mutex);
    m_scheduler->m_impl->m_remote.push_back(detail::remote_item{{}, h, nullptr});
  }
  m_scheduler->wake();
}

void scheduler::spawn(task<void> t) {
  check_owner("spawn");
  if (!t.valid()) throw error(errc::broken_promise, "spawn", "task", "the task holds no coroutine");
  auto& impl = *m_impl;
  if (impl.m_shutting_down) throw error(errc::closed, "spawn", "scheduler", "the scheduler is shutting down");
  auto h = detail::run_spawned(*this, std::move(t)).m_coroutine;
  detail::spawned_task& node = h.promise();
  node.m_next = impl.m_spawned_head;
  if (impl.m_spawned_head) impl.m_spawned_head->m_prev = &node;
  impl.m_spawned_head = &node;
  ++impl.m_spawned_count;
  enqueue(h);
}

void scheduler::on_spawned_done(detail::spawned_task& t, std::exception_ptr e) noexcept {
  auto& impl = *m_impl;
  if (t.m_prev) t.m_prev->m_next = t.m_next;
  else impl.m_spawned_head = t.m_next;
  if (t.m_next) t.m_next->m_prev = t.m_prev;
  --impl.m_spawned_count;
  if (!e) return;
  if (impl.m_stop.stop_requested()) {
    // A cancellation we asked for is how a stopped task ends, not a failure.
    try {
      std::rethrow_exception(e);
    } catch (const error& x) {
      if (x.code() == errc::cancelled) return;
    } catch (...) {
    }
  }
  try {
    impl.m_exception_handler(e);
  } catch (...) {
    // A handler that throws has nowhere to report to; the exception it was
    // given was delivered.
  }
}

void scheduler::set_exception_handler(std::function<void(std::exception_ptr)> handler) {
  check_owner("set_exception_handler");
  m_impl->m_exception_handler = handler ? std::move(handler) : default_exception_handler;
}

void scheduler::request_stop() noexcept { m_impl->m_stop.request_stop(); }
std::stop_token scheduler::stop_token() const noexcept { return m_impl->m_stop.get_token(); }
std::size_t scheduler::spawned_count() const noexcept { return m_impl->m_spawned_count; }
std::size_t scheduler::in_flight() const noexcept { return m_impl->m_in_flight; }

// ---- timers ---------------------------------------------------------------

scheduler::timer_awaitable::timer_awaitable(scheduler& s, __kernel_timespec ts, bool absolute, bool due) noexcept
    : io_awaitable(s, &prep), m_ts(ts), m_absolute(absolute), m_due(due) {}

bool scheduler::timer_awaitable::yield(std::coroutine_handle<> waiter, const std::stop_token& token) noexcept {
  if (token.stop_requested()) {
    m_result = -ECANCELED;
    return false;
  }
  m_result = -ETIME;  // what the kernel reports for an expired timeout
  owner().enqueue(waiter);
  return true;
}

void scheduler::timer_awaitable::prep(io_operation& self, io_uring_sqe& sqe) noexcept {
  auto& t = static_cast<timer_awaitable&>(self);
  // CLOCK_MONOTONIC is IORING_OP_TIMEOUT's default clock and steady_clock's.
  io_uring_prep_timeout(&sqe, &t.m_ts, 0, t.m_absolute ? IORING_TIMEOUT_ABS : 0);
}

void scheduler::timer_awaitable::await_resume() {
  const int r = finish();
  if (r == -ETIME || r >= 0) return;
  if (r == -ECANCELED) throw error(errc::cancelled, "sleep", "timer");
  throw_errno(-r, "sleep", "timer");
}

scheduler::timer_awaitable scheduler::sleep_for(clock::duration d) noexcept {
  return {*this, to_timespec(std::chrono::duration_cast<std::chrono::nanoseconds>(d)), false,
          d <= clock::duration::zero()};
}

scheduler::timer_awaitable scheduler::sleep_until(clock::time_point deadline) noexcept {
  return {*this, to_timespec(std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch())),
          true, deadline <= clock::now()};
}

// ---- io_awaitable ---------------------------------------------------------

namespace detail {

std::int64_t deadline_after(std::chrono::nanoseconds limit) noexcept {
  const std::int64_t now = monotonic_ns();
  const std::int64_t wait = std::max<std::int64_t>(limit.count(), 0);
  // Never 0, which means no deadline.
  if (wait > std::numeric_limits<std::int64_t>::max() - now) return std::numeric_limits<std::int64_t>::max();
  return std::max<std::int64_t>(now + wait, 1);
}

bool io_awaitable::suspend(std::coroutine_handle<> waiter, const std::stop_token& token) noexcept {
  if (token.stop_requested()) {
    m_token = token;  // so that stop_requested() tells this from a timeout
    m_result = -ECANCELED;
    return false;
  }
  m_waiter = waiter;
  m_scheduler->submit(*this);
  if (token.stop_possible()) {
    m_token = token;
    // May run the callback right here if stop was requested meanwhile.
    m_stop_callback.emplace(m_token, canceller{this});
  }
  return true;
}

int io_awaitable::finish() noexcept {
  if (m_stop_callback) {
    // Waits for a callback running on another thread to return.
    m_stop_callback.reset();
    if (m_token.stop_requested()) m_scheduler->retract_cancel(*this);
  }
  m_token = {};
  m_state = state::idle;
  return m_result;
}

void io_awaitable::canceller::operator()() const noexcept {
  scheduler& s = *m_op->m_scheduler;
  if (s.on_owner_thread()) s.cancel(*m_op);
  else s.cancel_from_other_thread(*m_op);
}

}  // namespace detail
}  // namespace shmbus
