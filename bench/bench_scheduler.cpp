// Scheduler benchmarks: what a co_await, a spawn, a timer and — above all —
// a cross-process eventfd wake-up cost, each against a baseline measured in
// the same run, interleaved with it (see bench_util.hpp).
//
//   await_ready_task  co_await of a task that completes synchronously
//                     vs a plain non-inlined function call
//   spawn_complete    spawn() of a task that runs to completion
//                     vs await_ready_task
//   timer_zero        co_await sleep_for(0ns) through the loop
//                     vs a raw io_uring NOP round trip on a separate ring
//   wakeup_eventfd    two processes ping-pong over two eventfds, each
//                     waiting through its own scheduler (event_fd::wait)
//                     vs the same ping-pong with blocking read(2)/write(2)
//   wakeup_eventfd_vs_uring  (diagnostic) the same, against a bare io_uring
//                     read of the eventfd without the scheduler: what the
//                     scheduler itself adds on top of the kernel's path
//   wakeup_eventfd_bounded  wakeup_eventfd with every scheduler-side wait
//                     bounded (event_fd::wait_for, 1 s), as a channel's sleep
//                     is: what a deadline adds, against the same baseline
//
// Usage: bench_scheduler [--json] [--quick] [--case NAME] [--samples PREFIX]
// Exits 77 (Meson's "skipped") where the kernel refuses io_uring.
#include <shmbus/event_fd.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include "bench_util.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using shmbus::scheduler;
using shmbus::task;
namespace bench = shmbus::bench;

namespace {

// ---- 1. awaiting a ready task ----------------------------------------------

/// Operations per sample for the sub-10 ns cases: one clock read costs about
/// as much as what we measure, so each sample is the mean over a batch.
constexpr std::size_t batch = 512;

/// The baseline: a call the compiler can neither inline nor remove.
[[gnu::noinline]] int plain_call(int x) noexcept {
  bench::clobber_memory();
  return x + 1;
}

/// A task that completes synchronously. Not inlined either, as a task
/// defined in another translation unit would be (this also keeps clang from
/// eliding the frame's allocation, which it could only do here).
[[gnu::noinline]] task<int> ready_value(int x) { co_return x + 1; }

void plain_call_block(std::size_t samples, std::vector<double>& out) {
  int acc = 0;
  for (std::size_t s = 0; s < samples; ++s) {
    const auto t0 = bench::now_ns();
    for (std::size_t i = 0; i < batch; ++i) acc = plain_call(acc);
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / batch);
  }
  bench::do_not_optimize(acc);
}

task<void> await_ready_block(std::size_t samples, std::vector<double>& out) {
  int acc = 0;
  for (std::size_t s = 0; s < samples; ++s) {
    const auto t0 = bench::now_ns();
    for (std::size_t i = 0; i < batch; ++i) acc = co_await ready_value(acc);
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / batch);
  }
  bench::do_not_optimize(acc);
}

// ---- 2. spawn + complete ----------------------------------------------------

task<void> counting_child(std::size_t* counter) {
  ++*counter;
  co_return;
}

/// Each sample: spawn a batch, then yield until every one has run.
task<void> spawn_block(scheduler& s, std::size_t samples, std::vector<double>& out) {
  std::size_t counter = 0;
  for (std::size_t k = 0; k < samples; ++k) {
    const auto t0 = bench::now_ns();
    for (std::size_t i = 0; i < batch; ++i) s.spawn(counting_child(&counter));
    while (s.spawned_count() > 0) co_await s.schedule();
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / batch);
  }
  if (counter != samples * batch) throw std::logic_error("spawned tasks did not all run");
}

// ---- 3. zero-length timer ------------------------------------------------------

task<void> timer_block(scheduler& s, std::size_t n, std::vector<double>& out) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto t0 = bench::now_ns();
    co_await s.sleep_for(0ns);
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0));
  }
}

/// A bare io_uring for the baselines, set up with the flags the scheduler
/// prefers (single issuer, deferred task running) where the kernel has them.
/// Used by one thread, one request at a time.
class raw_ring {
 public:
  raw_ring() {
    const unsigned flag_sets[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, 0};
    int r = -EINVAL;
    for (unsigned flags : flag_sets) {
      io_uring_params params{};
      params.flags = flags;
      r = io_uring_queue_init_params(8, &m_ring, &params);
      if (r == 0) {
        m_flags = flags;
        return;
      }
    }
    throw std::runtime_error(fmt::format("io_uring_queue_init: {}", std::strerror(-r)));
  }
  raw_ring(const raw_ring&) = delete;
  raw_ring& operator=(const raw_ring&) = delete;
  ~raw_ring() { io_uring_queue_exit(&m_ring); }

  /// Submits one request prepared by `prep(sqe)`, waits for its completion
  /// and returns its result: one io_uring_enter when nothing interrupts it.
  template <class Prep>
  int round_trip(Prep&& prep) {
    io_uring_sqe* sqe = io_uring_get_sqe(&m_ring);
    if (sqe == nullptr) throw std::runtime_error("io_uring: no free SQE");
    prep(*sqe);
    io_uring_sqe_set_data64(sqe, 1);
    int r = io_uring_submit_and_wait(&m_ring, 1);
    io_uring_cqe* cqe = nullptr;
    // A signal interrupts the wait, not the submission: wait again.
    while (r == -EINTR || (r >= 0 && io_uring_peek_cqe(&m_ring, &cqe) != 0)) r = io_uring_wait_cqe(&m_ring, &cqe);
    if (r < 0 && cqe == nullptr) throw std::runtime_error(fmt::format("io_uring_enter: {}", std::strerror(-r)));
    const int res = cqe->res;
    io_uring_cqe_seen(&m_ring, cqe);
    return res;
  }

  void nop_block(std::size_t n, std::vector<double>& out) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto t0 = bench::now_ns();
      if (round_trip([](io_uring_sqe& sqe) { io_uring_prep_nop(&sqe); }) < 0)
        throw std::runtime_error("io_uring NOP failed");
      const auto t1 = bench::now_ns();
      out.push_back(static_cast<double>(t1 - t0));
    }
  }

  /// The kernel's own zero-length IORING_OP_TIMEOUT, without the scheduler:
  /// tells the loop's overhead apart from the kernel's timer path.
  void timeout_block(std::size_t n, std::vector<double>& out) {
    __kernel_timespec zero{};
    for (std::size_t i = 0; i < n; ++i) {
      const auto t0 = bench::now_ns();
      const int r = round_trip([&](io_uring_sqe& sqe) { io_uring_prep_timeout(&sqe, &zero, 0, 0); });
      if (r < 0 && r != -ETIME) throw std::runtime_error("io_uring TIMEOUT failed");
      const auto t1 = bench::now_ns();
      out.push_back(static_cast<double>(t1 - t0));
    }
  }

  /// Reads an eventfd's counter through the ring (what event_fd::wait asks
  /// the kernel for, without the scheduler around it).
  void read_eventfd(int fd) {
    std::uint64_t value = 0;
    const int r = round_trip([&](io_uring_sqe& sqe) { io_uring_prep_read(&sqe, fd, &value, sizeof value, 0); });
    if (r != static_cast<int>(sizeof value))
      throw std::runtime_error(fmt::format("io_uring read of eventfd {}: {}", fd, r < 0 ? std::strerror(-r) : "short"));
  }

  bool deferred() const noexcept { return (m_flags & IORING_SETUP_DEFER_TASKRUN) != 0; }

 private:
  io_uring m_ring{};
  unsigned m_flags = 0;
};

// ---- 4. cross-process eventfd wake-up ----------------------------------------

/// Set by the SIGCHLD handler: the echoing process is gone. The handler also
/// signals the eventfd the pinging side waits on, so that a wait blocked on
/// a dead peer returns and sees the flag instead of hanging.
volatile std::sig_atomic_t g_child_exited = 0;
int g_unblock_fd = -1;

extern "C" void on_sigchld(int) {
  g_child_exited = 1;
  const int saved = errno;
  if (g_unblock_fd >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(g_unblock_fd, &one, sizeof one);
  }
  errno = saved;
}

void check_peer_alive() {
  if (g_child_exited != 0) throw std::runtime_error("the echoing process exited during the measurement");
}

void raw_read(int fd) {
  std::uint64_t value = 0;
  ssize_t r;
  do r = ::read(fd, &value, sizeof value);
  while (r < 0 && errno == EINTR && g_child_exited == 0);
  if (r != static_cast<ssize_t>(sizeof value)) {
    check_peer_alive();
    throw std::runtime_error(fmt::format("read: {}", std::strerror(errno)));
  }
}

/// The four eventfds: e1/e2 for the scheduler side, b1/b2 for the baseline.
/// All blocking (an io_uring read of a non-blocking eventfd fails at once).
struct doorbells {
  shmbus::event_fd e1, e2;
  shmbus::unique_fd b1{::eventfd(0, EFD_CLOEXEC)}, b2{::eventfd(0, EFD_CLOEXEC)};
};

/// What the baseline side waits with.
enum class baseline_kind : std::uint8_t {
  syscalls,  ///< blocking read(2): the reference the target is set against
  uring,     ///< an io_uring read on a bare ring (diagnostic: the kernel's
             ///< io_uring path without the scheduler around it)
};

/// The baseline's wait, one per process (its ring, if any, made after fork).
class baseline_waiter {
 public:
  explicit baseline_waiter(baseline_kind kind) {
    if (kind == baseline_kind::uring) m_ring.emplace();
  }
  void wait(int fd) {
    if (m_ring) m_ring->read_eventfd(fd);
    else raw_read(fd);
  }

 private:
  std::optional<raw_ring> m_ring;
};

/// The scheduler side's wait bounded as a channel's sleep is (a wait that
/// runs out, which a live peer never lets happen, is repeated).
task<void> bounded_wait(scheduler& s, const shmbus::event_fd& e) {
  for (;;) {
    // Not `while (!(co_await ...).has_value())`: g++ 12 miscompiles that
    // (docs/SCHEDULER.md, "task<T>").
    const std::optional<std::uint64_t> value = co_await e.wait_for(s, std::chrono::seconds(1));
    if (value.has_value()) co_return;
    check_peer_alive();
  }
}

/// Process A, scheduler side: one sample per round trip, halved.
task<void> ping_scheduler(scheduler& s, const doorbells& d, bool bounded, std::size_t n, std::vector<double>& out) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto t0 = bench::now_ns();
    d.e1.signal();
    if (bounded) co_await bounded_wait(s, d.e2);
    else co_await d.e2.wait(s);
    const auto t1 = bench::now_ns();
    check_peer_alive();
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
}

/// Process B, scheduler side.
task<void> echo_scheduler(scheduler& s, const doorbells& d, bool bounded, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (bounded) co_await bounded_wait(s, d.e1);
    else co_await d.e1.wait(s);
    d.e2.signal();
  }
}

/// Process A, baseline side: signalled with write(2) like event_fd::signal.
void ping_baseline(const doorbells& d, baseline_waiter& w, std::size_t n, std::vector<double>& out) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto t0 = bench::now_ns();
    bench::eventfd_add_one(d.b1.get());
    w.wait(d.b2.get());
    const auto t1 = bench::now_ns();
    check_peer_alive();
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
}

void echo_baseline(const doorbells& d, baseline_waiter& w, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    w.wait(d.b1.get());
    bench::eventfd_add_one(d.b2.get());
  }
}

/// Process B: mirrors run_interleaved's sequence of blocks exactly (warm-up
/// A B, then pairs A B), so no other synchronisation is needed. Writes its
/// start status ('P' pinned, 'U' not, 'E' failed) to `status_fd`, and
/// after its last block how long it waited for a CPU (int64 ns).
[[noreturn]] void echo_process(const doorbells& d, baseline_kind kind, bool bounded, const bench::plan& p,
                               int status_fd) {
  char status = 'E';
  try {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const bool pinned = bench::pin_to_cpu(1);
    scheduler s;  // created after the fork: each process has its own
    baseline_waiter w(kind);
    status = pinned ? 'P' : 'U';
    if (::write(status_fd, &status, 1) != 1) ::_exit(3);
    const std::int64_t wait0 = bench::cpu_wait_ns();
    for (std::size_t i = 0; i < p.warmup_blocks + p.pairs; ++i) {
      s.run(echo_scheduler(s, d, bounded, p.block));
      echo_baseline(d, w, p.block);
    }
    const std::int64_t waited = bench::cpu_wait_since(wait0);
    if (::write(status_fd, &waited, sizeof waited) != sizeof waited) ::_exit(3);
    ::close(status_fd);
    // Exit only when told: our SIGCHLD must not reach A while it measures.
    raw_read(d.b1.get());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_scheduler: echo process: %s\n", e.what());
    if (status == 'E') {
      [[maybe_unused]] const auto r = ::write(status_fd, &status, 1);
    }
    ::_exit(1);
  }
  ::_exit(0);
}

bench::result wakeup_case(const bench::plan& p, baseline_kind kind, bool bounded) {
  doorbells d;
  if (!d.b1 || !d.b2) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");

  g_child_exited = 0;
  g_unblock_fd = -1;
  struct sigaction sa {};
  sa.sa_handler = on_sigchld;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_NOCLDSTOP;  // no SA_RESTART: a blocked read returns EINTR
  struct sigaction old_sa {};
  ::sigaction(SIGCHLD, &sa, &old_sa);

  const double slowdown_before = bench::cpu_slowdown(0, 1);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t child = ::fork();
  if (child < 0) throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
  if (child == 0) {
    ::close(status_pipe[0]);
    echo_process(d, kind, bounded, p, status_pipe[1]);
  }
  ::close(status_pipe[1]);

  struct reaper {
    pid_t m_pid;
    int m_fd;
    struct sigaction m_old;
    int m_status = -1;
    int wait() {
      if (m_pid > 0) {
        int st = 0;
        while (::waitpid(m_pid, &st, 0) < 0 && errno == EINTR) {
        }
        m_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        m_pid = -1;
      }
      return m_status;
    }
    ~reaper() {
      if (m_pid > 0) {
        ::kill(m_pid, SIGKILL);
        wait();
      }
      ::close(m_fd);
      g_unblock_fd = -1;
      ::sigaction(SIGCHLD, &m_old, nullptr);
    }
  } child_guard{child, status_pipe[0], old_sa};

  const bool pinned_a = bench::pin_to_cpu(0);
  char status = 0;
  if (::read(status_pipe[0], &status, 1) != 1 || status == 'E')
    throw std::runtime_error("the echoing process failed to start (see its message above)");
  const bool pinned = pinned_a && status == 'P';

  scheduler s;  // this process's own, created after the fork
  baseline_waiter w(kind);
  // Waits are unblocked by the SIGCHLD handler on either side's doorbell.
  bench::side sched_side{"scheduler", [&](std::size_t n, std::vector<double>& out) {
                           g_unblock_fd = d.e2.native_handle();
                           s.run(ping_scheduler(s, d, bounded, n, out));
                         }};
  bench::side base_side{"baseline", [&](std::size_t n, std::vector<double>& out) {
                          g_unblock_fd = d.b2.get();
                          ping_baseline(d, w, n, out);
                        }};
  const bench::comparison c = bench::run_interleaved(sched_side, base_side, p);
  g_unblock_fd = -1;
  std::int64_t echo_wait = -1;  // B writes it after its last block
  ssize_t got = 0;
  do got = ::read(status_pipe[0], &echo_wait, sizeof echo_wait);
  while (got < 0 && errno == EINTR);
  if (got != sizeof echo_wait) throw std::runtime_error("the echoing process did not report its CPU wait");
  bench::eventfd_add_one(d.b1.get());  // lets B exit
  if (const int st = child_guard.wait(); st != 0)
    throw std::runtime_error(fmt::format("the echoing process exited with status {}", st));
  const double slowdown_after = bench::cpu_slowdown(0, 1);

  bench::result r;
  r.op = "one-way wake-up (round trip / 2)";
  if (kind == baseline_kind::syscalls) {
    r.name = bounded ? "wakeup_eventfd_bounded" : "wakeup_eventfd";
    r.baseline = "raw_eventfd_pingpong";
  } else {
    r.name = "wakeup_eventfd_vs_uring";
    r.baseline = "bare_uring_eventfd_pingpong";
  }
  bench::fill(r, c);
  // How many times slower a fixed loop ran on this process's CPU than on
  // the echoing one's, before and after.
  bench::add_slowdown(r, slowdown_before, slowdown_after);
  bench::add_cpu_wait(r, "workers_cpu_wait_ms", echo_wait);
  r.add_extra("pinned", pinned);
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  r.add_extra("block", static_cast<std::int64_t>(p.block));
  return r;
}

bench::result wakeup_eventfd(const bench::plan& p) { return wakeup_case(p, baseline_kind::syscalls, false); }
bench::result wakeup_eventfd_vs_uring(const bench::plan& p) { return wakeup_case(p, baseline_kind::uring, false); }
bench::result wakeup_eventfd_bounded(const bench::plan& p) { return wakeup_case(p, baseline_kind::syscalls, true); }

// ---- the cases -------------------------------------------------------------------

bench::result await_ready_task(const bench::plan& p) {
  scheduler s;
  bench::side a{"await_ready_task", [&](std::size_t n, std::vector<double>& out) { s.run(await_ready_block(n, out)); }};
  bench::side b{"plain_call", plain_call_block};
  bench::result r;
  r.name = "await_ready_task";
  r.op = "co_await of a ready task";
  r.baseline = "plain_call";
  bench::fill(r, bench::run_interleaved(a, b, p));
  r.add_extra("ops_per_sample", static_cast<std::int64_t>(batch));
  return r;
}

bench::result spawn_complete(const bench::plan& p) {
  scheduler s;
  bench::side a{"spawn_complete", [&](std::size_t n, std::vector<double>& out) { s.run(spawn_block(s, n, out)); }};
  bench::side b{"await_ready_task", [&](std::size_t n, std::vector<double>& out) { s.run(await_ready_block(n, out)); }};
  bench::result r;
  r.name = "spawn_complete";
  r.op = "spawned task run to completion";
  r.baseline = "await_ready_task";
  bench::fill(r, bench::run_interleaved(a, b, p));
  r.add_extra("ops_per_sample", static_cast<std::int64_t>(batch));
  return r;
}

bench::result timer_zero(const bench::plan& p) {
  scheduler s;
  raw_ring nop;
  bench::side a{"timer_zero", [&](std::size_t n, std::vector<double>& out) { s.run(timer_block(s, n, out)); }};
  bench::side b{"io_uring_nop", [&](std::size_t n, std::vector<double>& out) { nop.nop_block(n, out); }};
  bench::result r;
  r.name = "timer_zero";
  r.op = "co_await sleep_for(0ns)";
  r.baseline = "io_uring_nop";
  bench::fill(r, bench::run_interleaved(a, b, p));
  r.add_extra("nop_ring_defer_taskrun", nop.deferred());
  // Diagnostic, not the baseline: the same zero timeout on the raw ring.
  bench::side raw_timeout{"io_uring_timeout0", [&](std::size_t n, std::vector<double>& out) { nop.timeout_block(n, out); }};
  bench::plan diag = p;
  diag.pairs = (p.pairs + 1) / 2;
  const bench::comparison d = bench::run_interleaved(a, raw_timeout, diag);
  const double raw_p50 = bench::compute_stats(d.samples_b).p50;
  bench::add_number(r, "raw_timeout0_p50_ns", raw_p50, 1);
  bench::add_number(r, "ratio_vs_raw_timeout0", bench::compute_stats(d.samples_a).p50 / raw_p50, 3);
  return r;
}

struct case_spec {
  const char* name;
  bench::result (*run)(const bench::plan&);
  bench::plan full;
  bench::plan quick;
};

// Cases 1 and 2: a block is `block` samples of `batch` operations each.
const case_spec cases[] = {
    {"await_ready_task", await_ready_task, {2, 10, 200}, {1, 2, 10}},
    {"spawn_complete", spawn_complete, {2, 10, 100}, {1, 2, 5}},
    {"timer_zero", timer_zero, {1, 10, 2000}, {1, 2, 100}},
    {"wakeup_eventfd", wakeup_eventfd, {1, 10, 2000}, {1, 2, 200}},
    {"wakeup_eventfd_vs_uring", wakeup_eventfd_vs_uring, {1, 10, 2000}, {1, 2, 200}},
    {"wakeup_eventfd_bounded", wakeup_eventfd_bounded, {1, 10, 2000}, {1, 2, 200}},
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> names;
  for (const auto& c : cases) names.emplace_back(c.name);
  const bench::options opts = bench::parse_options(argc, argv, names, "bench_scheduler");
  bench::skip_without_io_uring();

  if (!opts.json)
    fmt::print("shmbus scheduler benchmarks{} (p50/p99/p99.9 over all samples; A/B blocks interleaved)\n",
               opts.quick ? " [quick]" : "");
  int failures = 0;
  for (const auto& c : cases) {
    if (!opts.only.empty() && opts.only != c.name) continue;
    try {
      const std::int64_t wait0 = bench::cpu_wait_ns();
      bench::result r = c.run(opts.quick ? c.quick : c.full);
      // This process's wait; a wake-up case adds its echoing process's.
      bench::add_cpu_wait(r, "cpu_wait_ms", bench::cpu_wait_since(wait0));
      r.bench = "scheduler";
      bench::report(r, opts.json);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_scheduler: case %s failed: %s\n", c.name, e.what());
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}
