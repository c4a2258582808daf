// Channel benchmarks: latency and throughput of shmbus channels between
// real processes, each case against a baseline measured in the same run and
// interleaved with it (A B A B ..., see bench_util.hpp).
//
//   pingpong_spin    one-way latency (round trip / 2) over two byte channels
//                    (ping, pong), co_await publish / co_await next on a
//                    scheduler, subscribers spinning (spin = 1 s: never park);
//                    sizes 8, 64, 1024, 4096 B
//                    vs raw_cacheline_pingpong: two processes spinning (with
//                    pause) on std::atomic_ref<uint64_t> words in a shared
//                    mapping. Diagnostic third side: raw_copy_pingpong, the
//                    same carrying the payload (copied in, and echoed by a
//                    copy from the ping buffer to the pong buffer, as the
//                    channel echo does).
//   pingpong_event   the same with spin = 0: every next() parks on its eventfd
//                    doorbell at once
//                    vs eventfd_pingpong: blocking read(2)/write(2) on two
//                    eventfds.
//   throughput       1 publisher -> 1 subscriber process, 64 B and 4 KiB,
//                    block policy, 1 MiB ring (--ring): try_publish in a loop
//                    (retry on would_block), try_next + copy out
//                    vs spsc_ring: a minimal shared-memory SPSC ring written
//                    here (fixed-size slots, copy in, copy out, head/tail
//                    with acquire/release and cached peer indices), same
//                    message size and ring bytes. Third side: memcpy of the
//                    same size into a ring-sized buffer, one process.
//   throughput_zero_copy  4 KiB: try_loan + commit, the publisher making the
//                    message in place (every byte written), the subscriber
//                    summing every word of the view (no copy)
//                    vs spsc_ring (copying); third side: the copying channel
//                    in the same rounds.
//   throughput_backoff  64 B and 4 KiB, as throughput, but the subscriber
//                    waits as next() does: on an empty ring it spins with
//                    subscriber_options::spin_backoff (--backoff, default
//                    2 us) between looks (spin_for_message)
//                    vs spsc_ring; third side: the channel polled
//                    continuously (try_next, as in throughput); fourth:
//                    spsc_ring_backoff, the ring's reader waiting the same
//                    gap on an empty ring; same rounds.
//   fanout           1 publisher -> N subscriber processes (N = 1, 2, 4), 64 B,
//                    msgs/s per subscriber, vs broadcast_ring (the SPSC ring
//                    with one tail per reader). The publisher runs on CPU 0
//                    and the N subscribers share CPU 1: with 2 vCPUs, N > 1
//                    oversubscribes the machine (they time-share one vCPU).
//   op_cost          the library's cost per message, in one process and one
//                    thread: try_publish, try_next and a copy out, message by
//                    message, 1 MiB ring (--ring); sizes 8, 64, 1024, 4096 B
//                    vs plain_ring_copies: the same copies into and out of a
//                    plain buffer of the ring's size. The difference
//                    (overhead_ns_p50) is instructions, without the
//                    cross-core traffic that makes the other cases noisy.
//                    Third side: channel_loan, the same message published
//                    through try_loan, a copy into the loan, and commit
//                    (loan_overhead_ns_p50). Fourth: channel_await, through
//                    co_await publish() and co_await next() on a scheduler
//                    (await_overhead_ns_p50).
//
// Every channel publisher takes publisher_options::prefetch_ahead from
// --ahead (default when_streaming, the library's default; "prefetch_ahead"
// in each result).
//
// Pinning: the parent runs on CPU 0 and its workers on CPU 1 (sched_setaffinity;
// "pinned" says whether that was granted), restored after each case. Every
// process populates its page tables for the shared mappings before measuring
// (MADV_POPULATE_WRITE): a first lap through a fresh ring otherwise takes a
// minor page fault per 4 KiB page per process (1-5 us each on these VMs).
//
// Processes: the parent creates the channels (memfd) and an arena (memfd) for
// the baselines and the bookkeeping, then forks and execs this binary with
// `--worker ROLE key=value...`; the worker adopts the inherited descriptors
// (channel::attach(region::adopt_fd(...))). Both run the same sequence of
// blocks (warm-up, then rounds of A, B[, C]), so the only synchronisation
// besides the measured traffic is a "blocks done" counter per worker.
//
// Throughput samples are taken by the subscriber: one sample = the mean time
// per message over a batch of messages received back to back. msgs_per_s is
// the sustained rate, 1e9 / mean of the samples (messages / time of all the
// measured batches), and "ratio" and the pair ratios compare sustained rates
// (a batch rate's distribution is bimodal here: when the host slows the
// cache-line traffic, and in fan-out where subscribers time-share a vCPU);
// msgs_per_s_p50 and ratio_p50 give the median batch's rate too.
//
// Allocations: this binary replaces the global operator new with a counting
// one; the allocations made during the measured channel blocks (warm-up
// excluded) by the thread that runs them, divided by the messages of those
// blocks, are printed for the parent and for the workers (allocs_per_msg,
// worker_allocs_per_msg). The library's doorbell thread is not counted: it
// allocates when it starts and when a peer connects, not per message.
//
// Usage: bench_channel [--json] [--quick] [--case NAME] [--samples PREFIX]
//                      [--pairs N] [--ring BYTES] [--backoff NS] [--ahead MODE]
// (--samples files are named <case>_<size>, fanout_<N> for fan-out.)
// Exits 77 (Meson's "skipped") where the kernel refuses io_uring.
#include <shmbus/channel.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/region.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include "bench_util.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

// Counts heap allocations (parent and workers alike).
#include "core/counting_operator_new.hpp"
// The library's pause between polls, for the baselines' spin loops too.
#include "core/cpu_relax.hpp"

using namespace std::chrono_literals;
using shmbus::scheduler;
using shmbus::task;
namespace bench = shmbus::bench;

namespace {

using shmbus::detail::cpu_relax;
using shmbus::detail::heap_allocations_in_this_thread;

/// Allocations made during measured blocks, and the messages of those blocks.
struct alloc_tally {
  std::uint64_t allocs = 0;
  std::uint64_t messages = 0;
  void add(std::uint64_t a, std::uint64_t m) noexcept {
    allocs += a;
    messages += m;
  }
  double per_message() const noexcept {
    return messages == 0 ? 0.0 : static_cast<double>(allocs) / static_cast<double>(messages);
  }
};

// ---- shared words and the arena ----------------------------------------------------

inline std::atomic_ref<std::uint64_t> shared(std::uint64_t& w) noexcept { return std::atomic_ref<std::uint64_t>(w); }

constexpr std::size_t cache_line = 64;
/// What messages are filled with, besides their stamp (a counter).
constexpr int fill_byte = 0x5a;
constexpr std::uint64_t fill_word = 0x5a5a5a5a5a5a5a5aull;
constexpr std::size_t max_workers = 8;
constexpr std::size_t max_payload = 4096;

struct alignas(cache_line) padded_word {
  std::uint64_t value;
};

/// What a worker reports back (its own cache line).
struct alignas(cache_line) worker_report {
  std::uint64_t allocations;  ///< during measured channel blocks
  std::uint64_t messages;     ///< of those blocks
  std::uint64_t pinned;       ///< 1 if pinned to its CPU
  std::uint64_t errors;       ///< messages with unexpected contents
  std::int64_t cpu_wait_ns;   ///< runnable but off the CPU while measuring (-1: unknown)
};

/// The first bytes of the arena. Zero-filled at creation (memfd).
struct control_block {
  padded_word ready;   ///< workers set up and subscribed
  padded_word failed;  ///< a worker gave up (it printed why)
  padded_word exit;    ///< the parent is done: workers may exit
  padded_word ping;    ///< raw ping-pong words
  padded_word pong;
  padded_word done[max_workers];  ///< blocks finished, per worker
  worker_report report[max_workers];
  // Geometry of what follows, written by the parent before any worker starts.
  std::uint64_t samples_offset;  ///< double[max_workers][samples_per_worker]
  std::uint64_t samples_per_worker;
  std::uint64_t buffers_offset;  ///< raw_copy_pingpong: ping buffer, pong buffer (max_payload each)
  std::uint64_t ring_offset;     ///< broadcast ring: head, tails[max_workers], slots
  std::uint64_t ring_bytes;
  std::uint64_t slot_size;
};

std::uint64_t round_up(std::uint64_t n, std::uint64_t to) noexcept { return (n + to - 1) / to * to; }

/// The arena's layout for `samples` samples per worker and a ring of
/// `ring_bytes` (0: no ring).
struct arena_layout {
  std::uint64_t samples_offset, buffers_offset, ring_offset, total;
  arena_layout(std::uint64_t samples, std::uint64_t ring_bytes) {
    samples_offset = round_up(sizeof(control_block), cache_line);
    buffers_offset = round_up(samples_offset + max_workers * samples * sizeof(double), 4096);
    ring_offset = buffers_offset + 2 * max_payload;
    const std::uint64_t ring_header = (1 + max_workers) * cache_line;
    total = round_up(ring_offset + round_up(ring_header, 4096) + ring_bytes, 4096);
  }
};

/// A view of the arena, in the parent or in a worker.
struct arena_view {
  std::byte* base = nullptr;
  control_block& control() const noexcept { return *reinterpret_cast<control_block*>(base); }
  double* samples(std::size_t worker) const noexcept {
    auto& c = control();
    return reinterpret_cast<double*>(base + c.samples_offset) + worker * c.samples_per_worker;
  }
  std::byte* ping_buffer() const noexcept { return base + control().buffers_offset; }
  std::byte* pong_buffer() const noexcept { return base + control().buffers_offset + max_payload; }
  std::uint64_t& ring_head() const noexcept {
    return reinterpret_cast<padded_word*>(base + control().ring_offset)->value;
  }
  std::uint64_t& ring_tail(std::size_t worker) const noexcept {
    return reinterpret_cast<padded_word*>(base + control().ring_offset)[1 + worker].value;
  }
  std::byte* ring_slots() const noexcept {
    return base + control().ring_offset + round_up((1 + max_workers) * cache_line, 4096);
  }
};

// ---- the baselines' rings ------------------------------------------------------------

/// The minimal broadcast ring: one writer, `readers` readers, fixed-size
/// slots, each side caching the other's index (SPSC when readers == 1).
class ring_writer {
 public:
  ring_writer(const arena_view& a, std::size_t readers)
      : m_arena(a),
        m_readers(readers),
        m_size(a.control().slot_size),
        m_slots(a.control().ring_bytes / a.control().slot_size),
        m_data(a.ring_slots()) {}

  /// Copies `msg` into the next slot, spinning while the ring is full.
  void push(const std::byte* msg) noexcept {
    while (m_head - m_limit >= m_slots) {
      std::uint64_t slowest = ~std::uint64_t{0};
      for (std::size_t i = 0; i < m_readers; ++i) {
        const std::uint64_t t = shared(m_arena.ring_tail(i)).load(std::memory_order_acquire);
        if (t < slowest) slowest = t;
      }
      m_limit = slowest;
      if (m_head - m_limit >= m_slots) cpu_relax();
    }
    std::memcpy(m_data + (m_head & (m_slots - 1)) * m_size, msg, m_size);
    ++m_head;
    shared(m_arena.ring_head()).store(m_head, std::memory_order_release);
  }

 private:
  arena_view m_arena;
  std::size_t m_readers;
  std::uint64_t m_size;
  std::uint64_t m_slots;
  std::byte* m_data;
  std::uint64_t m_head = 0;
  std::uint64_t m_limit = 0;  // cached slowest tail
};

class ring_reader {
 public:
  ring_reader(const arena_view& a, std::size_t index)
      : m_arena(a),
        m_index(index),
        m_size(a.control().slot_size),
        m_slots(a.control().ring_bytes / a.control().slot_size),
        m_data(a.ring_slots()) {}

  /// Copies the next message into `out`, spinning while there is none:
  /// polling the head continuously, or, with `backoff_ns` > 0, that long
  /// apart (reading the clock in between, as the channel's spin_backoff).
  void pop(std::byte* out, std::int64_t backoff_ns = 0) noexcept {
    while (m_tail == m_head) {
      m_head = shared(m_arena.ring_head()).load(std::memory_order_acquire);
      if (m_tail != m_head) break;
      if (backoff_ns <= 0) {
        cpu_relax();
        continue;
      }
      const std::int64_t look_at = bench::now_ns() + backoff_ns;
      while (bench::now_ns() < look_at) cpu_relax();
    }
    std::memcpy(out, m_data + (m_tail & (m_slots - 1)) * m_size, m_size);
    ++m_tail;
    shared(m_arena.ring_tail(m_index)).store(m_tail, std::memory_order_release);
  }

 private:
  arena_view m_arena;
  std::size_t m_index;
  std::uint64_t m_size;
  std::uint64_t m_slots;
  const std::byte* m_data;
  std::uint64_t m_tail = 0;
  std::uint64_t m_head = 0;  // cached head
};

// ---- processes -------------------------------------------------------------------------

/// Set while workers must stay alive: a worker's exit then means it failed,
/// and the parent (which may be spinning on it) exits too.
volatile std::sig_atomic_t g_abort_on_child_exit = 0;

extern "C" void on_sigchld(int) {
  if (g_abort_on_child_exit != 0) {
    const char msg[] = "bench_channel: a worker process exited during the measurement\n";
    [[maybe_unused]] const auto r = ::write(2, msg, sizeof msg - 1);
    ::_exit(1);
  }
}

extern "C" void on_sigalrm(int) {
  const char msg[] = "bench_channel: a case took too long (a worker hung?); giving up\n";
  [[maybe_unused]] const auto r = ::write(2, msg, sizeof msg - 1);
  ::_exit(1);
}

/// CPUs this program may run on, counted at start (before any pinning).
int g_cpus = 0;

int cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return static_cast<int>(std::thread::hardware_concurrency());
  return CPU_COUNT(&set);
}

/// Restores the calling thread's CPU affinity when it goes.
class affinity_guard {
 public:
  affinity_guard() { m_ok = ::sched_getaffinity(0, sizeof m_set, &m_set) == 0; }
  affinity_guard(const affinity_guard&) = delete;
  affinity_guard& operator=(const affinity_guard&) = delete;
  ~affinity_guard() {
    if (m_ok) ::sched_setaffinity(0, sizeof m_set, &m_set);
  }

 private:
  cpu_set_t m_set{};
  bool m_ok = false;
};

/// This program's path, for the workers' exec: /proc/self/exe read once (an
/// exec of "/proc/self/exe" itself would run valgrind's launcher under
/// valgrind, whose readlink of it names the client program instead).
const std::string& self_path() {
  static const std::string path = [] {
    std::vector<char> buf(4096);
    const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
    if (n <= 0) return std::string("/proc/self/exe");
    return std::string(buf.data(), static_cast<std::size_t>(n));
  }();
  return path;
}

/// The workers of one case, over one arena. Kills and reaps them if the
/// case ends early (an exception).
class worker_group {
 public:
  explicit worker_group(const arena_view& a) : m_arena(a) {}
  worker_group(const worker_group&) = delete;
  worker_group& operator=(const worker_group&) = delete;
  ~worker_group() {
    g_abort_on_child_exit = 0;
    for (pid_t pid : m_pids) {
      ::kill(pid, SIGKILL);
      reap(pid);
    }
  }

  /// fork + exec of this binary as `--worker role args...`; `fds` stay open
  /// across the exec (their close-on-exec flag is cleared in the child).
  void spawn(const std::string& role, const std::vector<std::string>& args, const std::vector<int>& fds) {
    // Everything the child needs is made before fork: between fork and exec
    // it only calls async-signal-safe functions (the parent has threads).
    std::vector<std::string> all{"bench_channel", "--worker", role};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const char* const path = self_path().c_str();
    const pid_t parent = ::getpid();
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
    if (pid == 0) {
      for (int fd : fds) {
        const int flags = ::fcntl(fd, F_GETFD);
        if (flags < 0 || ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) != 0) ::_exit(126);
      }
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(125);
      ::execv(path, argv.data());
      ::_exit(127);
    }
    m_pids.push_back(pid);
  }

  /// Waits until `count` workers are ready (then their exit aborts the
  /// bench until finish()).
  void wait_ready(std::size_t count) {
    auto& c = m_arena.control();
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (shared(c.ready.value).load(std::memory_order_acquire) < count) {
      if (shared(c.failed.value).load(std::memory_order_acquire) != 0)
        throw std::runtime_error("a worker failed to start (see its message above)");
      for (pid_t pid : m_pids) {
        int st = 0;
        if (::waitpid(pid, &st, WNOHANG) == pid) {
          std::erase(m_pids, pid);
          throw std::runtime_error(fmt::format("a worker exited during set-up (status {})", status_of(st)));
        }
      }
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("workers did not start in 30 s");
      std::this_thread::sleep_for(200us);
    }
    g_abort_on_child_exit = 1;
  }

  /// Waits until every one of the first `workers` has finished `blocks` blocks.
  void wait_done(std::size_t workers, std::uint64_t blocks) const noexcept {
    auto& c = m_arena.control();
    for (std::size_t w = 0; w < workers; ++w) {
      while (shared(c.done[w].value).load(std::memory_order_acquire) < blocks) {
        cpu_relax();
        ::sched_yield();  // oversubscribed runs: let the workers have the CPU
      }
    }
  }

  /// Lets the workers exit and reaps them; throws if one failed.
  void finish() {
    g_abort_on_child_exit = 0;
    shared(m_arena.control().exit.value).store(1, std::memory_order_release);
    std::vector<pid_t> pids;
    pids.swap(m_pids);
    int worst = 0;
    for (pid_t pid : pids) {
      const int st = reap(pid);
      if (st != 0) worst = st;
    }
    if (worst != 0) throw std::runtime_error(fmt::format("a worker exited with status {}", worst));
    if (shared(m_arena.control().failed.value).load(std::memory_order_acquire) != 0)
      throw std::runtime_error("a worker reported a failure");
  }

 private:
  static int status_of(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }
  static int reap(pid_t pid) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0) {
      if (errno != EINTR) return -1;
    }
    return status_of(st);
  }

  arena_view m_arena;
  std::vector<pid_t> m_pids;
};

/// Makes the arena for a case (zero-filled memfd) and writes its geometry.
shmbus::region make_arena(std::uint64_t samples_per_worker, std::uint64_t ring_bytes, std::uint64_t slot_size) {
  const arena_layout l(samples_per_worker, ring_bytes);
  shmbus::region r = shmbus::region::create_memfd("bench_channel-arena", l.total);
  auto& c = *reinterpret_cast<control_block*>(r.data());
  c.samples_offset = l.samples_offset;
  c.samples_per_worker = samples_per_worker;
  c.buffers_offset = l.buffers_offset;
  c.ring_offset = l.ring_offset;
  c.ring_bytes = ring_bytes;
  c.slot_size = slot_size;
  return r;
}

/// Maps every page of `r` in this process now (page tables populated for
/// writing, nothing written), so that first-touch page faults — one per
/// 4 KiB page per process on the first lap of a ring, 1-5 us each here —
/// are not measured. Falls back to reading one byte per page.
void prefault(const shmbus::region& r) noexcept {
  if (r.data() == nullptr) return;
  if (::madvise(r.data(), r.size(), MADV_POPULATE_WRITE) == 0) return;
  const std::size_t page = shmbus::region::page_size();
  for (std::size_t off = 0; off < r.size(); off += page)
    bench::do_not_optimize(std::atomic_ref<std::byte>(r.data()[off]).load(std::memory_order_relaxed));
}

/// Waits for the parent's go-ahead to exit (so that no SIGCHLD reaches it
/// while it still measures), without spinning.
void wait_for_exit(const arena_view& a) {
  while (shared(a.control().exit.value).load(std::memory_order_acquire) == 0) std::this_thread::sleep_for(1ms);
}

std::uint64_t first_word(std::span<const std::byte> bytes) noexcept {
  std::uint64_t v = 0;
  std::memcpy(&v, bytes.data(), sizeof v);
  return v;
}

shmbus::channel_options channel_options_for(std::uint64_t ring_bytes) {
  shmbus::channel_options o;
  o.capacity = ring_bytes;
  o.max_message = static_cast<std::uint32_t>(max_payload);
  o.policy = shmbus::overflow_policy::block;
  return o;
}

// ---- settings ------------------------------------------------------------------------

struct settings {
  bool quick = false;
  /// Every channel publisher's publisher_options::prefetch_ahead (--ahead).
  shmbus::prefetch_ahead_mode ahead = shmbus::prefetch_ahead_mode::when_streaming;
  std::size_t pairs = 0;               ///< 0: each case's default
  std::uint64_t ring_bytes = 1 << 20;  ///< throughput and fan-out rings
  std::uint64_t backoff_ns = 2000;     ///< throughput_backoff's subscriber_options::spin_backoff
};

constexpr std::pair<std::string_view, shmbus::prefetch_ahead_mode> ahead_modes[] = {
    {"when_streaming", shmbus::prefetch_ahead_mode::when_streaming},
    {"always", shmbus::prefetch_ahead_mode::always},
    {"never", shmbus::prefetch_ahead_mode::never},
};

std::string_view ahead_name(shmbus::prefetch_ahead_mode m) {
  for (const auto& [name, mode] : ahead_modes)
    if (mode == m) return name;
  return "?";
}

/// The mode named `name`; false if there is none.
bool parse_ahead(std::string_view name, shmbus::prefetch_ahead_mode& out) {
  for (const auto& [n, mode] : ahead_modes)
    if (n == name) {
      out = mode;
      return true;
    }
  return false;
}

shmbus::publisher_options publishing_with(shmbus::prefetch_ahead_mode ahead) {
  shmbus::publisher_options o;
  o.prefetch_ahead = ahead;
  return o;
}

using bench::add_number;
using bench::emit_fn;
using bench::plan_for;

void add_alloc_fields(bench::result& r, const alloc_tally& parent, const arena_view& a, std::size_t workers) {
  alloc_tally w;
  for (std::size_t i = 0; i < workers; ++i) {
    const worker_report& rep = a.control().report[i];
    w.add(rep.allocations, rep.messages);
  }
  add_number(r, "allocs_per_msg", parent.per_message(), 6);
  add_number(r, "worker_allocs_per_msg", w.per_message(), 6);
  r.add_extra("allocs", static_cast<std::int64_t>(parent.allocs + w.allocs));
}

/// How long the parent (`parent_wait_ns`) and the workers together waited
/// for a CPU while measuring; a large figure marks a disturbed run.
void add_cpu_wait_fields(bench::result& r, std::int64_t parent_wait_ns, const arena_view& a, std::size_t workers) {
  std::int64_t w = 0;
  for (std::size_t i = 0; i < workers && w >= 0; ++i) {
    const std::int64_t v = a.control().report[i].cpu_wait_ns;
    w = v < 0 ? -1 : w + v;
  }
  bench::add_cpu_wait(r, "cpu_wait_ms", parent_wait_ns);
  bench::add_cpu_wait(r, "workers_cpu_wait_ms", w);
}

bool workers_pinned(const arena_view& a, std::size_t workers) {
  for (std::size_t i = 0; i < workers; ++i)
    if (a.control().report[i].pinned == 0) return false;
  return true;
}

// ---- 1. ping-pong ------------------------------------------------------------------------

enum class pp_mode : std::uint8_t { spin, event };

shmbus::subscriber_options pp_subscriber_options(pp_mode mode) {
  shmbus::subscriber_options o;
  o.spin = mode == pp_mode::spin ? std::chrono::nanoseconds(1s) : std::chrono::nanoseconds(0);
  return o;
}

/// Parent, channel side: one sample per round trip, halved.
task<void> ping_channel(shmbus::byte_publisher& pub, shmbus::byte_subscriber& sub, std::span<std::byte> msg,
                        std::uint64_t& counter, std::size_t n, std::vector<double>& out, alloc_tally* tally) {
  const std::uint64_t a0 = heap_allocations_in_this_thread();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t c = ++counter;
    std::memcpy(msg.data(), &c, sizeof c);
    const auto t0 = bench::now_ns();
    co_await pub.publish(msg);
    const shmbus::byte_message m = co_await sub.next();
    const auto t1 = bench::now_ns();
    if (m.data.size() != msg.size() || first_word(m.data) != c)
      throw std::runtime_error(fmt::format("echo {} of {} B came back wrong", c, msg.size()));
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
  if (tally != nullptr) tally->add(heap_allocations_in_this_thread() - a0, 2 * n);  // two messages per round trip
}

/// Worker, channel side.
task<void> echo_channel(shmbus::byte_subscriber& sub, shmbus::byte_publisher& pub, std::size_t n,
                        alloc_tally* tally) {
  const std::uint64_t a0 = heap_allocations_in_this_thread();
  for (std::size_t i = 0; i < n; ++i) {
    const shmbus::byte_message m = co_await sub.next();
    co_await pub.publish(m.data);
  }
  if (tally != nullptr) tally->add(heap_allocations_in_this_thread() - a0, 2 * n);
}

/// Raw cache-line ping-pong: the parent stores i in `ping`, the worker
/// answers by storing it in `pong`.
void ping_cacheline(const arena_view& a, std::uint64_t& counter, std::size_t n, std::vector<double>& out) {
  auto ping = shared(a.control().ping.value);
  auto pong = shared(a.control().pong.value);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t c = ++counter;
    const auto t0 = bench::now_ns();
    ping.store(c, std::memory_order_release);
    while (pong.load(std::memory_order_acquire) != c) cpu_relax();
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
}

void echo_cacheline(const arena_view& a, std::uint64_t& counter, std::size_t n) {
  auto ping = shared(a.control().ping.value);
  auto pong = shared(a.control().pong.value);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t c = ++counter;
    while (ping.load(std::memory_order_acquire) != c) cpu_relax();
    pong.store(c, std::memory_order_release);
  }
}

/// The same carrying the payload: copied into the ping buffer, copied by the
/// worker from the ping buffer to the pong buffer, checked by its first word.
void ping_copy(const arena_view& a, std::span<const std::byte> msg, std::uint64_t& counter, std::size_t n,
               std::vector<double>& out) {
  auto ping = shared(a.control().ping.value);
  auto pong = shared(a.control().pong.value);
  std::vector<std::byte> local(msg.begin(), msg.end());
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t c = ++counter;
    std::memcpy(local.data(), &c, sizeof c);
    const auto t0 = bench::now_ns();
    std::memcpy(a.ping_buffer(), local.data(), local.size());
    ping.store(c, std::memory_order_release);
    while (pong.load(std::memory_order_acquire) != c) cpu_relax();
    const std::uint64_t back = first_word({a.pong_buffer(), local.size()});
    const auto t1 = bench::now_ns();
    if (back != c) throw std::runtime_error("raw copy ping-pong: wrong echo");
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
}

void echo_copy(const arena_view& a, std::size_t size, std::uint64_t& counter, std::size_t n) {
  auto ping = shared(a.control().ping.value);
  auto pong = shared(a.control().pong.value);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t c = ++counter;
    while (ping.load(std::memory_order_acquire) != c) cpu_relax();
    std::memcpy(a.pong_buffer(), a.ping_buffer(), size);
    pong.store(c, std::memory_order_release);
  }
}

void raw_read(int fd) {
  std::uint64_t value = 0;
  ssize_t r;
  do r = ::read(fd, &value, sizeof value);
  while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(sizeof value)) throw std::runtime_error(fmt::format("read: {}", std::strerror(errno)));
}

void ping_eventfd(int to_worker, int from_worker, std::size_t n, std::vector<double>& out) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto t0 = bench::now_ns();
    bench::eventfd_add_one(to_worker);
    raw_read(from_worker);
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / 2);
  }
}

void echo_eventfd(int from_parent, int to_parent, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    raw_read(from_parent);
    bench::eventfd_add_one(to_parent);
  }
}

bench::result pingpong_one(pp_mode mode, std::size_t size, const bench::plan& p, shmbus::prefetch_ahead_mode ahead) {
  affinity_guard affinity;
  shmbus::region arena_region = make_arena(0, 0, size);
  const arena_view arena{arena_region.data()};
  const shmbus::channel_options o = channel_options_for(std::uint64_t{1} << 20);  // the default ring
  shmbus::channel ping = shmbus::channel::create_memfd("bench-ping", o, {});
  shmbus::channel pong = shmbus::channel::create_memfd("bench-pong", o, {});
  shmbus::unique_fd efd_ping{::eventfd(0, EFD_CLOEXEC)}, efd_pong{::eventfd(0, EFD_CLOEXEC)};
  if (!efd_ping || !efd_pong) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
  prefault(arena_region);
  prefault(ping.backing());
  prefault(pong.backing());

  const bool pinned_parent = bench::pin_to_cpu(0);
  const double slowdown_before = bench::cpu_slowdown(0, 1);
  scheduler s;
  shmbus::byte_subscriber sub(pong, pp_subscriber_options(mode));  // before the worker can answer
  shmbus::byte_publisher pub(ping, publishing_with(ahead));

  worker_group workers(arena);
  const int fds[] = {arena_region.fd(), ping.backing().fd(), pong.backing().fd(), efd_ping.get(), efd_pong.get()};
  workers.spawn("pingpong",
                {fmt::format("arena={}", fds[0]), fmt::format("ping={}", fds[1]), fmt::format("pong={}", fds[2]),
                 fmt::format("efd_ping={}", fds[3]), fmt::format("efd_pong={}", fds[4]),
                 fmt::format("mode={}", mode == pp_mode::spin ? "spin" : "event"), fmt::format("size={}", size),
                 fmt::format("ahead={}", ahead_name(ahead)),
                 fmt::format("block={}", p.block), fmt::format("warmup={}", p.warmup_blocks),
                 fmt::format("rounds={}", p.warmup_blocks + p.pairs), "cpu=1"},
                {std::begin(fds), std::end(fds)});
  workers.wait_ready(1);

  std::vector<std::byte> msg(size, std::byte{fill_byte});
  // The two raw sides share the words, so they share one counter: a block
  // never starts with the word already holding the value it waits for.
  std::uint64_t channel_counter = 0, raw_counter = 0;
  alloc_tally tally;
  std::size_t channel_blocks = 0;
  bench::side channel_side{"channel", [&](std::size_t n, std::vector<double>& out) {
                             out.reserve(out.size() + n);
                             alloc_tally* t = channel_blocks++ >= p.warmup_blocks ? &tally : nullptr;
                             s.run(ping_channel(pub, sub, msg, channel_counter, n, out, t));
                           }};
  bench::side base_side;
  std::vector<bench::side> more;
  if (mode == pp_mode::spin) {
    base_side = {"raw_cacheline_pingpong",
                 [&](std::size_t n, std::vector<double>& out) { ping_cacheline(arena, raw_counter, n, out); }};
    more.push_back({"raw_copy_pingpong",
                    [&](std::size_t n, std::vector<double>& out) { ping_copy(arena, msg, raw_counter, n, out); }});
  } else {
    base_side = {"eventfd_pingpong", [&](std::size_t n, std::vector<double>& out) {
                   ping_eventfd(efd_ping.get(), efd_pong.get(), n, out);
                 }};
  }
  const std::int64_t wait0 = bench::cpu_wait_ns();
  const bench::comparison c = bench::run_interleaved(channel_side, base_side, p, more);
  const std::int64_t parent_wait = bench::cpu_wait_since(wait0);
  workers.finish();
  const double slowdown_after = bench::cpu_slowdown(0, 1);

  bench::result r;
  r.name = mode == pp_mode::spin ? "pingpong_spin" : "pingpong_event";
  r.sample_name = fmt::format("{}_{}", r.name, size);
  r.op = fmt::format("one-way latency of a {} B message (round trip / 2)", size);
  r.baseline = base_side.name;
  bench::fill(r, c);
  r.add_extra("size", static_cast<std::int64_t>(size));
  add_number(r, "msgs_per_s", r.ops_per_s, 0);
  if (mode == pp_mode::spin) {
    const bench::stats d = bench::compute_stats(c.samples_more[0]);
    add_number(r, "raw_copy_p50_ns", d.p50, 1);
    add_number(r, "raw_copy_p99_ns", d.p99, 1);
    add_number(r, "ratio_vs_raw_copy", r.measured.p50 / d.p50, 3);
  }
  add_alloc_fields(r, tally, arena, 1);
  add_cpu_wait_fields(r, parent_wait, arena, 1);
  bench::add_slowdown(r, slowdown_before, slowdown_after);
  r.add_extra("pinned", pinned_parent && workers_pinned(arena, 1));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  r.add_extra("block", static_cast<std::int64_t>(p.block));
  r.add_extra("prefetch_ahead", ahead_name(ahead));
  return r;
}

// ---- 2 and 3. throughput and fan-out ---------------------------------------------------------

enum class read_kind : std::uint8_t { copy, zero_copy };

/// Parent, channel side: `count` messages, each stamped with a counter.
void publish_channel(shmbus::byte_publisher& pub, read_kind kind, std::span<std::byte> msg, std::uint64_t& counter,
                     std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t c = ++counter;
    if (kind == read_kind::copy) {
      std::memcpy(msg.data(), &c, sizeof c);
      for (;;) {
        const shmbus::publish_status st = pub.try_publish(msg);
        if (st == shmbus::publish_status::ok) break;
        if (st != shmbus::publish_status::would_block) throw std::runtime_error("try_publish refused the message");
        cpu_relax();
      }
    } else {
      shmbus::byte_loan loan = pub.try_loan(static_cast<std::uint32_t>(msg.size()));
      while (!loan) {
        cpu_relax();
        loan = pub.try_loan(static_cast<std::uint32_t>(msg.size()));
      }
      // The message is made in place: every byte written, stamped in its
      // first and last words.
      std::byte* d = loan.data().data();
      std::memset(d, fill_byte, msg.size());
      std::memcpy(d, &c, sizeof c);
      std::memcpy(d + msg.size() - sizeof c, &c, sizeof c);
      loan.commit();
    }
  }
}

void publish_ring(ring_writer& w, std::span<std::byte> msg, std::uint64_t& counter, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t c = ++counter;
    std::memcpy(msg.data(), &c, sizeof c);
    w.push(msg.data());
  }
}

/// One process copying `size`-byte messages into a ring-sized buffer.
void memcpy_block(std::span<std::byte> dst, std::span<std::byte> msg, std::uint64_t& position, std::size_t n,
                  std::size_t per_sample, std::vector<double>& out) {
  const std::uint64_t slots = dst.size() / msg.size();
  for (std::size_t s = 0; s < n; ++s) {
    const auto t0 = bench::now_ns();
    for (std::size_t k = 0; k < per_sample; ++k) {
      std::memcpy(dst.data() + (position & (slots - 1)) * msg.size(), msg.data(), msg.size());
      ++position;
      bench::clobber_memory();
    }
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
  }
}

/// Worker's reading of one message of the channel: copy out (then check the
/// copy's first word) or read in place. In place, every word is read, as the
/// copy reads every byte: the two sides differ by the copy alone. (Reading
/// only one word per cache line made the whole stream slower here, not
/// faster, for reasons not established: docs/BENCHMARKS.md, the twelfth
/// round.) The zero-copy publisher stamps the first and last words and fills
/// the rest (a multiple of 8 bytes, at least 16).
inline bool consume(std::span<const std::byte> data, read_kind kind, std::byte* local, std::uint64_t expected) {
  if (kind == read_kind::copy) {
    std::memcpy(local, data.data(), data.size());
    bench::clobber_memory();
    return first_word({local, data.size()}) == expected;
  }
  const std::size_t words = data.size() / sizeof expected;
  if (words < 2 || data.size() % sizeof expected != 0) return false;
  // Four sums, so that the adds do not wait on one another and the loop
  // runs at the pace of its loads, as memcpy's reading does.
  std::uint64_t sums[4] = {};
  std::size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    for (std::size_t j = 0; j < 4; ++j) sums[j] += first_word(data.subspan((i + j) * sizeof expected));
  }
  std::uint64_t sum = 0;
  for (const std::uint64_t s : sums) sum += s;
  for (; i < words; ++i) sum += first_word(data.subspan(i * sizeof expected));
  return sum == 2 * expected + (words - 2) * fill_word && first_word(data) == expected &&
         first_word(data.subspan(data.size() - sizeof expected)) == expected;
}

/// Worker: `n` samples of `per_sample` messages from the channel. A sample
/// starts when the previous one ended (the first when the first message
/// arrived).
void sink_channel(shmbus::byte_subscriber& sub, read_kind kind, bool backoff, std::size_t size, std::byte* local,
                  std::uint64_t& expected, std::size_t n, std::size_t per_sample, double* samples,
                  std::uint64_t& errors) {
  std::int64_t t_prev = 0;
  for (std::size_t s = 0; s < n; ++s) {
    for (std::size_t k = 0; k < per_sample; ++k) {
      shmbus::byte_message m = sub.try_next();
      while (!m) {
        if (m.status == shmbus::receive_status::corrupt) throw std::runtime_error("the channel reads as corrupt");
        if (backoff) {
          // next()'s spin, with the subscriber's spin_backoff (its spin of
          // 1 s ends, and is begun again, only if the publisher stalls).
          sub.spin_for_message(m);
        } else {
          cpu_relax();
          m = sub.try_next();
        }
      }
      if (s == 0 && k == 0) t_prev = bench::now_ns();
      const std::uint64_t c = ++expected;
      if (m.data.size() != size || !consume(m.data, kind, local, c)) ++errors;
    }
    const std::int64_t t = bench::now_ns();
    samples[s] = static_cast<double>(t - t_prev) / static_cast<double>(per_sample);
    t_prev = t;
  }
}

void sink_ring(ring_reader& r, std::int64_t backoff_ns, std::byte* local, std::uint64_t& expected, std::size_t n,
               std::size_t per_sample, double* samples, std::uint64_t& errors) {
  std::int64_t t_prev = 0;
  for (std::size_t s = 0; s < n; ++s) {
    for (std::size_t k = 0; k < per_sample; ++k) {
      r.pop(local, backoff_ns);
      bench::clobber_memory();
      if (s == 0 && k == 0) t_prev = bench::now_ns();
      const std::uint64_t c = ++expected;
      std::uint64_t v = 0;
      std::memcpy(&v, local, sizeof v);
      if (v != c) ++errors;
    }
    const std::int64_t t = bench::now_ns();
    samples[s] = static_cast<double>(t - t_prev) / static_cast<double>(per_sample);
    t_prev = t;
  }
}

/// What a streaming case measures.
struct stream_spec {
  std::string name;             ///< case name
  std::size_t size = 64;        ///< message bytes
  std::size_t subscribers = 1;  ///< worker processes
  read_kind kind = read_kind::copy;
  /// > 0: the subscriber spins as next() does, with this spin_backoff; third
  /// and fourth sides: the channel polled continuously, the ring with this backoff
  std::uint64_t backoff_ns = 0;
  bool pin = true;              ///< the publisher on CPU 0, the subscribers on CPU 1
  bool memcpy_side = false;     ///< third side: memcpy
  bool copy_side = false;       ///< third side: the copying channel (zero-copy case)
  std::size_t per_sample = 0;   ///< messages per sample
};

/// Worker sides per round, in order: what the worker mirrors.
std::string stream_sides(const stream_spec& spec) {
  // c: channel copy, z: zero copy, b: channel copy with backoff, r: ring,
  // R: ring with backoff
  std::string s = spec.backoff_ns > 0 ? "br" : spec.kind == read_kind::copy ? "cr" : "zr";
  if (spec.copy_side || spec.backoff_ns > 0) s += 'c';
  if (spec.backoff_ns > 0) s += 'R';
  return s;
}

bench::result stream_case(const stream_spec& spec, const bench::plan& p, std::uint64_t ring_bytes,
                          shmbus::prefetch_ahead_mode ahead) {
  affinity_guard affinity;
  shmbus::region arena_region = make_arena(p.block, ring_bytes, spec.size);
  const arena_view arena{arena_region.data()};
  shmbus::channel ch = shmbus::channel::create_memfd("bench-stream", channel_options_for(ring_bytes), {});
  prefault(arena_region);
  prefault(ch.backing());
  const bool pinned_parent = spec.pin && bench::pin_to_cpu(0);
  const double slowdown_before = spec.pin ? bench::cpu_slowdown(0, 1) : std::numeric_limits<double>::quiet_NaN();
  shmbus::byte_publisher pub(ch, publishing_with(ahead));
  ring_writer writer(arena, spec.subscribers);

  worker_group workers(arena);
  const std::string sides = stream_sides(spec);
  const int fds[] = {arena_region.fd(), ch.backing().fd()};
  for (std::size_t w = 0; w < spec.subscribers; ++w) {
    workers.spawn("sink",
                  {fmt::format("arena={}", fds[0]), fmt::format("channel={}", fds[1]), fmt::format("index={}", w),
                   fmt::format("size={}", spec.size), fmt::format("block={}", p.block),
                   fmt::format("per_sample={}", spec.per_sample),
                   fmt::format("warmup={}", p.warmup_blocks), fmt::format("rounds={}", p.warmup_blocks + p.pairs),
                   fmt::format("sides={}", sides), fmt::format("backoff_ns={}", spec.backoff_ns),
                   fmt::format("cpu={}", spec.pin ? 1 : -1)},
                  {std::begin(fds), std::end(fds)});
  }
  workers.wait_ready(spec.subscribers);

  std::vector<std::byte> msg(spec.size, std::byte{fill_byte});
  const std::uint64_t per_block = std::uint64_t{p.block} * spec.per_sample;
  std::uint64_t channel_counter = 0, ring_counter = 0, memcpy_position = 0;
  std::uint64_t blocks = 0;  // worker blocks expected done
  alloc_tally tally;
  std::size_t channel_blocks = 0;
  auto gather = [&](std::vector<double>& out) {
    workers.wait_done(spec.subscribers, ++blocks);
    for (std::size_t w = 0; w < spec.subscribers; ++w) {
      const double* s = arena.samples(w);
      out.insert(out.end(), s, s + p.block);
    }
  };
  auto channel_block = [&](read_kind kind, bool count, std::vector<double>& out) {
    const std::uint64_t a0 = heap_allocations_in_this_thread();
    publish_channel(pub, kind, msg, channel_counter, per_block);
    if (count) tally.add(heap_allocations_in_this_thread() - a0, per_block);
    gather(out);
  };
  bench::side channel_side{spec.backoff_ns > 0              ? "channel_backoff"
                           : spec.kind == read_kind::copy ? "channel"
                                                          : "channel_zero_copy",
                           [&](std::size_t, std::vector<double>& out) {
                             channel_block(spec.kind, channel_blocks++ >= p.warmup_blocks, out);
                           }};
  auto ring_block = [&](std::size_t, std::vector<double>& out) {
    publish_ring(writer, msg, ring_counter, per_block);
    gather(out);
  };
  bench::side ring_side{spec.name == "fanout" ? "broadcast_ring" : "spsc_ring", ring_block};
  std::vector<bench::side> more;
  std::vector<std::byte> memcpy_ring;
  if (spec.memcpy_side) {
    memcpy_ring.resize(ring_bytes);
    more.push_back({"memcpy", [&](std::size_t n, std::vector<double>& out) {
                      memcpy_block(memcpy_ring, msg, memcpy_position, n, spec.per_sample, out);
                    }});
  }
  if (spec.copy_side || spec.backoff_ns > 0) {
    more.push_back({spec.copy_side ? "channel_copy" : "channel_polling", [&](std::size_t, std::vector<double>& out) {
                      channel_block(read_kind::copy, false, out);
                    }});
  }
  if (spec.backoff_ns > 0) more.push_back({"spsc_ring_backoff", ring_block});  // the worker's reader backs off
  const std::int64_t wait0 = bench::cpu_wait_ns();
  const bench::comparison c = bench::run_interleaved(channel_side, ring_side, p, more);
  const std::int64_t parent_wait = bench::cpu_wait_since(wait0);
  workers.finish();
  const double slowdown_after = spec.pin ? bench::cpu_slowdown(0, 1) : std::numeric_limits<double>::quiet_NaN();
  std::uint64_t errors = 0;
  for (std::size_t w = 0; w < spec.subscribers; ++w) errors += arena.control().report[w].errors;
  if (errors != 0) throw std::runtime_error(fmt::format("{} messages arrived with unexpected contents", errors));

  bench::result r;
  r.name = spec.name;
  r.sample_name = fmt::format("{}_{}", spec.name, spec.name == "fanout" ? spec.subscribers : spec.size);
  r.op = fmt::format("a {} B message received, mean over a batch of {}{}", spec.size, spec.per_sample,
                     spec.subscribers > 1 ? ", per subscriber" : "");
  r.baseline = ring_side.name;
  r.compared = bench::result::compare::mean_rate;
  bench::fill(r, c);
  // Sustained rates: messages / time of the measured batches (1e9 / mean);
  // the median batch's rate (1e9 / p50) is given too.
  const double size = static_cast<double>(spec.size);
  const double rate = 1e9 / r.measured.mean;
  const double base_rate = 1e9 / r.base.mean;
  r.add_extra("size", static_cast<std::int64_t>(spec.size));
  if (spec.name == "fanout") {
    r.add_extra("subscribers", static_cast<std::int64_t>(spec.subscribers));
    r.add_extra("oversubscribed", static_cast<int>(spec.subscribers) + 1 > g_cpus);
  }
  add_number(r, "msgs_per_s", rate, 0);
  add_number(r, "gb_per_s", rate * size / 1e9, 3);
  add_number(r, "baseline_msgs_per_s", base_rate, 0);
  add_number(r, "baseline_gb_per_s", base_rate * size / 1e9, 3);
  add_number(r, "msgs_per_s_p50", 1e9 / r.measured.p50, 0);
  add_number(r, "baseline_msgs_per_s_p50", 1e9 / r.base.p50, 0);
  add_number(r, "ratio_p50", r.base.p50 / r.measured.p50, 3);
  if (spec.subscribers > 1) {
    add_number(r, "total_msgs_per_s", rate * static_cast<double>(spec.subscribers), 0);
    add_number(r, "baseline_total_msgs_per_s", base_rate * static_cast<double>(spec.subscribers), 0);
  }
  if (spec.memcpy_side) {
    const double m = 1e9 / bench::compute_stats(c.samples_more[0]).mean;
    add_number(r, "memcpy_gb_per_s", m * size / 1e9, 3);
    add_number(r, "ratio_vs_memcpy", rate / m, 3);
  }
  if (spec.copy_side) {
    const double m = 1e9 / bench::compute_stats(c.samples_more[0]).mean;
    add_number(r, "copying_msgs_per_s", m, 0);
    add_number(r, "copying_gb_per_s", m * size / 1e9, 3);
    add_number(r, "ratio_vs_copying", rate / m, 3);
  }
  if (spec.backoff_ns > 0) {
    const double m = 1e9 / bench::compute_stats(c.samples_more[0]).mean;
    add_number(r, "backoff_us", static_cast<double>(spec.backoff_ns) / 1e3, 3);
    add_number(r, "polling_msgs_per_s", m, 0);
    add_number(r, "ratio_vs_polling", rate / m, 3);
    const double rb = 1e9 / bench::compute_stats(c.samples_more[1]).mean;
    add_number(r, "ring_backoff_msgs_per_s", rb, 0);
    add_number(r, "ratio_vs_ring_backoff", rate / rb, 3);
  }
  r.add_extra("ring_bytes", static_cast<std::int64_t>(ring_bytes));
  r.add_extra("prefetch_ahead", ahead_name(ahead));
  add_alloc_fields(r, tally, arena, spec.subscribers);
  add_cpu_wait_fields(r, parent_wait, arena, spec.subscribers);
  bench::add_slowdown(r, slowdown_before, slowdown_after);
  r.add_extra("pinned", pinned_parent && workers_pinned(arena, spec.subscribers));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  r.add_extra("samples_per_block", static_cast<std::int64_t>(p.block));
  return r;
}

// ---- workers -------------------------------------------------------------------------------

struct worker_args {
  std::map<std::string, std::string> values;
  std::int64_t number(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw std::runtime_error("worker: missing argument " + key);
    return std::stoll(it->second);
  }
  std::size_t count(const std::string& key) const { return static_cast<std::size_t>(number(key)); }
  std::string text(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw std::runtime_error("worker: missing argument " + key);
    return it->second;
  }
};

shmbus::region adopt(int fd, std::string_view name) {
  return shmbus::region::adopt_fd(shmbus::unique_fd(fd), name);
}

void pingpong_worker_run(const worker_args& a, const arena_view& arena) {
  worker_report& report = arena.control().report[0];
  if (const std::int64_t cpu = a.number("cpu"); cpu >= 0) report.pinned = bench::pin_to_cpu(static_cast<int>(cpu)) ? 1 : 0;
  const pp_mode mode = a.text("mode") == "spin" ? pp_mode::spin : pp_mode::event;
  const std::size_t size = a.count("size");
  const std::size_t n = a.count("block");
  const std::size_t rounds = a.count("rounds");
  const std::size_t warmup = a.count("warmup");
  shmbus::channel ping = shmbus::channel::attach(adopt(static_cast<int>(a.number("ping")), "ping"), nullptr, "ping");
  shmbus::channel pong = shmbus::channel::attach(adopt(static_cast<int>(a.number("pong")), "pong"), nullptr, "pong");
  prefault(ping.backing());
  prefault(pong.backing());
  const shmbus::unique_fd efd_ping{static_cast<int>(a.number("efd_ping"))};
  const shmbus::unique_fd efd_pong{static_cast<int>(a.number("efd_pong"))};
  scheduler s;
  shmbus::byte_subscriber sub(ping, pp_subscriber_options(mode));
  shmbus::prefetch_ahead_mode ahead{};
  if (!parse_ahead(a.text("ahead"), ahead)) throw std::runtime_error("worker: bad ahead=");
  shmbus::byte_publisher pub(pong, publishing_with(ahead));
  shared(arena.control().ready.value).fetch_add(1, std::memory_order_acq_rel);
  const std::int64_t wait0 = bench::cpu_wait_ns();

  std::uint64_t raw_counter = 0;  // shared by the two raw sides, as in the parent
  alloc_tally tally;
  for (std::size_t round = 0; round < rounds; ++round) {
    s.run(echo_channel(sub, pub, n, round >= warmup ? &tally : nullptr));
    if (mode == pp_mode::spin) {
      echo_cacheline(arena, raw_counter, n);
      echo_copy(arena, size, raw_counter, n);
    } else {
      echo_eventfd(efd_ping.get(), efd_pong.get(), n);
    }
  }
  report.cpu_wait_ns = bench::cpu_wait_since(wait0);
  report.allocations = tally.allocs;
  report.messages = tally.messages;
  wait_for_exit(arena);
}

void sink_worker_run(const worker_args& a, const arena_view& arena) {
  const std::size_t index = a.count("index");
  if (index >= max_workers) throw std::runtime_error("worker index out of range");
  worker_report& report = arena.control().report[index];
  if (const std::int64_t cpu = a.number("cpu"); cpu >= 0) report.pinned = bench::pin_to_cpu(static_cast<int>(cpu)) ? 1 : 0;
  const std::size_t size = a.count("size");
  const std::size_t n = a.count("block");
  const std::size_t per_sample = a.count("per_sample");
  const std::size_t rounds = a.count("rounds");
  const std::size_t warmup = a.count("warmup");
  const std::string sides = a.text("sides");
  shmbus::channel ch =
      shmbus::channel::attach(adopt(static_cast<int>(a.number("channel")), "stream"), nullptr, "stream");
  prefault(ch.backing());
  // Spinning for 1 s (never parking) with the case's spin_backoff; used by
  // the 'b' side only, the others poll try_next.
  shmbus::subscriber_options options;
  options.spin = std::chrono::seconds(1);
  const std::int64_t backoff_ns = a.number("backoff_ns");
  options.spin_backoff = std::chrono::nanoseconds(backoff_ns);
  shmbus::byte_subscriber sub(ch, options);
  ring_reader reader(arena, index);
  std::vector<std::byte> local(size);
  shared(arena.control().ready.value).fetch_add(1, std::memory_order_acq_rel);
  const std::int64_t wait0 = bench::cpu_wait_ns();

  std::uint64_t channel_expected = 0, ring_expected = 0, errors = 0;
  alloc_tally tally;
  double* samples = arena.samples(index);
  auto& done = arena.control().done[index].value;
  for (std::size_t round = 0; round < rounds; ++round) {
    for (std::size_t i = 0; i < sides.size(); ++i) {
      const char side = sides[i];
      if (side == 'r' || side == 'R') {
        sink_ring(reader, side == 'R' ? backoff_ns : 0, local.data(), ring_expected, n, per_sample, samples, errors);
      } else {
        const std::uint64_t a0 = heap_allocations_in_this_thread();
        sink_channel(sub, side == 'z' ? read_kind::zero_copy : read_kind::copy, side == 'b', size, local.data(),
                     channel_expected, n, per_sample, samples, errors);
        if (i == 0 && round >= warmup) tally.add(heap_allocations_in_this_thread() - a0, std::uint64_t{n} * per_sample);
      }
      shared(done).fetch_add(1, std::memory_order_acq_rel);
    }
  }
  report.cpu_wait_ns = bench::cpu_wait_since(wait0);
  report.allocations = tally.allocs;
  report.messages = tally.messages;
  report.errors = errors;
  wait_for_exit(arena);
}

/// `--worker ROLE key=value...`: the other process of a case.
int worker_main(int argc, char** argv) {
  const std::string role = argc > 2 ? argv[2] : "";
  worker_args a;
  for (int i = 3; i < argc; ++i) {
    const std::string_view kv = argv[i];
    const auto eq = kv.find('=');
    if (eq == std::string_view::npos) {
      std::fprintf(stderr, "bench_channel worker: bad argument %s\n", argv[i]);
      return 2;
    }
    a.values[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  arena_view arena;
  shmbus::region arena_region;
  try {
    arena_region = adopt(static_cast<int>(a.number("arena")), "arena");
    arena = arena_view{arena_region.data()};
    prefault(arena_region);
    if (role == "pingpong") pingpong_worker_run(a, arena);
    else if (role == "sink") sink_worker_run(a, arena);
    else throw std::runtime_error("unknown worker role " + role);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_channel worker (%s): %s\n", role.c_str(), e.what());
    if (arena.base != nullptr) shared(arena.control().failed.value).store(1, std::memory_order_release);
    return 1;
  }
  return 0;
}

// ---- the cases -------------------------------------------------------------------------------

constexpr std::size_t pingpong_sizes[] = {8, 64, 1024, 4096};

void pingpong_spin(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 5000}, {1, 2, 50});
  for (std::size_t size : pingpong_sizes) {
    bench::result r = pingpong_one(pp_mode::spin, size, p, s.ahead);
    emit(r);
  }
}

void pingpong_event(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 1000}, {1, 2, 20});
  for (std::size_t size : pingpong_sizes) {
    bench::result r = pingpong_one(pp_mode::event, size, p, s.ahead);
    emit(r);
  }
}

/// Messages per throughput sample: about 0.5 MiB of payload (>= 0.25 ms).
std::size_t per_sample_for(const settings& s, std::size_t size) {
  if (s.quick) return 16;
  return std::max<std::size_t>(256, (std::size_t{1} << 19) / size);
}

/// A streaming case at 64 B and at 4 KiB; `spec` names it and sets its sides.
void stream_64_and_4096(const settings& s, const emit_fn& emit, stream_spec spec) {
  const bench::plan p = plan_for(s, {1, 10, 40}, {1, 2, 4});
  for (std::size_t size : {std::size_t{64}, std::size_t{4096}}) {
    spec.size = size;
    spec.per_sample = per_sample_for(s, size);
    bench::result r = stream_case(spec, p, s.ring_bytes, s.ahead);
    emit(r);
  }
}

void throughput(const settings& s, const emit_fn& emit) {
  stream_64_and_4096(s, emit, {.name = "throughput", .memcpy_side = true});
}

void throughput_zero_copy(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 40}, {1, 2, 4});
  stream_spec spec;
  spec.name = "throughput_zero_copy";
  spec.size = 4096;
  spec.kind = read_kind::zero_copy;
  spec.copy_side = true;
  spec.per_sample = per_sample_for(s, spec.size);
  bench::result r = stream_case(spec, p, s.ring_bytes, s.ahead);
  emit(r);
}

void throughput_backoff(const settings& s, const emit_fn& emit) {
  stream_64_and_4096(s, emit, {.name = "throughput_backoff", .backoff_ns = s.backoff_ns});
}

void fanout(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 20}, {1, 2, 4});
  for (std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
    stream_spec spec;
    spec.name = "fanout";
    spec.size = 64;
    spec.subscribers = n;
    spec.per_sample = per_sample_for(s, spec.size);
    bench::result r = stream_case(spec, p, s.ring_bytes, s.ahead);
    emit(r);
  }
}

// ---- 4. the library's own cost per message ------------------------------------------------

/// op_cost's awaiting side: `n` samples of `per_sample` messages, each
/// published by co_await publish() and read back by co_await next() and a
/// copy out; the heap allocations of the samples added to `allocations`.
task<void> await_samples(shmbus::byte_publisher& pub, shmbus::byte_subscriber& sub, std::span<std::byte> msg,
                         std::byte* local, std::uint64_t& counter, std::size_t n, std::size_t per_sample,
                         std::vector<double>& out, std::uint64_t& errors, std::uint64_t& allocations) {
  const std::uint64_t a0 = heap_allocations_in_this_thread();
  for (std::size_t k = 0; k < n; ++k) {
    const auto t0 = bench::now_ns();
    for (std::size_t i = 0; i < per_sample; ++i) {
      const std::uint64_t c = ++counter;
      std::memcpy(msg.data(), &c, sizeof c);
      co_await pub.publish(msg);
      const shmbus::byte_message m = co_await sub.next();
      if (!consume(m.data, read_kind::copy, local, c)) ++errors;
    }
    const auto t1 = bench::now_ns();
    out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
  }
  allocations += heap_allocations_in_this_thread() - a0;
}

/// One thread publishes a message and reads it back (try_publish, try_next,
/// copy out), against the same copies into and out of a plain buffer of the
/// ring's size: the difference is the protocol's cost per message, free of
/// the cross-core traffic that makes the two-process cases noisy here.
/// Two more sides take the same message through a loan and through the
/// awaitables.
bench::result op_cost_one(std::size_t size, const bench::plan& p, std::size_t per_sample, std::uint64_t ring_bytes,
                          shmbus::prefetch_ahead_mode ahead) {
  affinity_guard affinity;
  const bool pinned = bench::pin_to_cpu(0);
  shmbus::channel ch = shmbus::channel::create_memfd("bench-op-cost", channel_options_for(ring_bytes), {});
  prefault(ch.backing());
  shmbus::byte_publisher pub(ch, publishing_with(ahead));
  shmbus::byte_subscriber sub(ch);
  // Line-aligned buffers: how fast memcpy is here depends on where source
  // and destination sit within their cache lines, and a heap vector's
  // place would change between runs.
  struct alignas(cache_line) message_buffer {
    std::array<std::byte, max_payload> bytes;
  };
  const auto msg_buffer = std::make_unique<message_buffer>(), local_buffer = std::make_unique<message_buffer>();
  const std::span<std::byte> msg(msg_buffer->bytes.data(), size);
  std::fill(msg.begin(), msg.end(), std::byte{fill_byte});
  std::byte* const local = local_buffer->bytes.data();
  std::vector<std::byte> plain_storage(ring_bytes + cache_line);
  void* plain_start = plain_storage.data();
  std::size_t plain_space = plain_storage.size();
  std::byte* const plain = static_cast<std::byte*>(std::align(cache_line, ring_bytes, plain_start, plain_space));
  const std::size_t slots = ring_bytes / size;
  std::uint64_t counter = 0, plain_position = 0, errors = 0;
  alloc_tally tally;

  // A channel side: each message published by `publish`, then read back
  // and copied out; the heap allocations of the whole block counted.
  auto channel_samples = [&](auto publish) {
    return [&, publish](std::size_t n, std::vector<double>& out) {
      out.reserve(out.size() + n);  // the bench's own allocation, outside the count
      const std::uint64_t a0 = heap_allocations_in_this_thread();
      for (std::size_t k = 0; k < n; ++k) {
        const auto t0 = bench::now_ns();
        for (std::size_t i = 0; i < per_sample; ++i) {
          const std::uint64_t c = ++counter;
          std::memcpy(msg.data(), &c, sizeof c);
          publish();
          const shmbus::byte_message m = sub.try_next();
          if (!consume(m.data, read_kind::copy, local, c)) ++errors;
        }
        const auto t1 = bench::now_ns();
        out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
      }
      tally.add(heap_allocations_in_this_thread() - a0, n * per_sample);
    };
  };
  bench::side channel_side{"channel", channel_samples([&] {
    if (pub.try_publish(msg) != shmbus::publish_status::ok) throw std::runtime_error("try_publish refused");
  })};
  // Third side: the zero-copy publishing path (a loan filled by the same
  // copy, then committed).
  bench::side loan_side{"channel_loan", channel_samples([&] {
    shmbus::byte_loan loan = pub.try_loan(static_cast<std::uint32_t>(size));
    if (!loan) throw std::runtime_error("try_loan refused");
    std::memcpy(loan.data().data(), msg.data(), size);
    loan.commit();
  })};
  // Fourth side: the same through the awaitables, on a scheduler (the
  // message is always there: next() never waits).
  shmbus::scheduler sched;
  bench::side await_side{"channel_await", [&](std::size_t n, std::vector<double>& out) {
    out.reserve(out.size() + n);
    std::uint64_t allocations = 0;
    sched.run(await_samples(pub, sub, msg, local, counter, n, per_sample, out, errors, allocations));
    tally.add(allocations, n * per_sample);
  }};
  bench::side plain_side{"plain_ring_copies", [&](std::size_t n, std::vector<double>& out) {
    for (std::size_t k = 0; k < n; ++k) {
      const auto t0 = bench::now_ns();
      for (std::size_t i = 0; i < per_sample; ++i) {
        const std::uint64_t c = ++counter;
        std::memcpy(msg.data(), &c, sizeof c);
        std::byte* slot = plain + (plain_position++ % slots) * size;
        std::memcpy(slot, msg.data(), size);
        bench::clobber_memory();
        if (!consume({slot, size}, read_kind::copy, local, c)) ++errors;
      }
      const auto t1 = bench::now_ns();
      out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
    }
  }};
  const std::int64_t wait0 = bench::cpu_wait_ns();
  const bench::comparison c = bench::run_interleaved(channel_side, plain_side, p, {loan_side, await_side});
  const std::int64_t parent_wait = bench::cpu_wait_since(wait0);
  if (errors != 0) throw std::runtime_error(fmt::format("{} messages read back wrong", errors));

  bench::result r;
  r.name = "op_cost";
  r.sample_name = fmt::format("op_cost_{}", size);
  r.op = fmt::format("a {} B message published and read back in one thread, mean over {}", size, per_sample);
  r.baseline = "plain_ring_copies";
  bench::fill(r, c);
  add_number(r, "overhead_ns_p50", r.measured.p50 - r.base.p50, 1);
  const bench::stats loan = bench::compute_stats(c.samples_more[0]);
  add_number(r, "loan_p50_ns", loan.p50, 1);
  add_number(r, "loan_overhead_ns_p50", loan.p50 - r.base.p50, 1);
  const bench::stats awaited = bench::compute_stats(c.samples_more[1]);
  add_number(r, "await_p50_ns", awaited.p50, 1);
  add_number(r, "await_overhead_ns_p50", awaited.p50 - r.base.p50, 1);
  r.add_extra("size", static_cast<std::int64_t>(size));
  r.add_extra("ring_bytes", static_cast<std::int64_t>(ring_bytes));
  r.add_extra("prefetch_ahead", ahead_name(ahead));
  add_number(r, "allocs_per_msg", tally.per_message(), 6);
  bench::add_cpu_wait(r, "cpu_wait_ms", parent_wait);
  r.add_extra("pinned", pinned);
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  return r;
}

void op_cost(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 200}, {1, 2, 10});
  for (std::size_t size : pingpong_sizes) {
    bench::result r = op_cost_one(size, p, s.quick ? 16 : 256, s.ring_bytes, s.ahead);
    emit(r);
  }
}

struct case_spec {
  const char* name;
  void (*run)(const settings&, const emit_fn&);
};

const case_spec cases[] = {
    {"pingpong_spin", pingpong_spin},
    {"pingpong_event", pingpong_event},
    {"throughput", throughput},
    {"throughput_zero_copy", throughput_zero_copy},
    {"throughput_backoff", throughput_backoff},
    {"fanout", fanout},
    {"op_cost", op_cost},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == "--worker") return worker_main(argc, argv);

  std::vector<std::string> names;
  for (const auto& c : cases) names.emplace_back(c.name);
  const bench::options opts =
      bench::parse_options(argc, argv, names, "bench_channel",
                           {{"pairs", "N  measured pairs (rounds) of blocks per case (default 10)"},
                            {"ring", "BYTES  ring of the throughput and fan-out cases (default 1048576)"},
                            {"backoff", "NS  throughput_backoff's spin_backoff in ns (default 2000)"},
                            {"ahead", "MODE  publishers' prefetch_ahead: when_streaming (default), always, never"}});
  settings s;
  s.quick = opts.quick;
  s.pairs = bench::parse_count(opts, "pairs", 0);
  s.ring_bytes = bench::parse_count(opts, "ring", s.ring_bytes);
  s.backoff_ns = bench::parse_count(opts, "backoff", s.backoff_ns);
  if (auto it = opts.values.find("ahead"); it != opts.values.end() && !parse_ahead(it->second, s.ahead)) {
    std::fprintf(stderr, "--ahead: when_streaming, always or never\n");
    return 2;
  }
  if (s.backoff_ns == 0 || s.backoff_ns > 1'000'000) {
    std::fprintf(stderr, "--backoff: 1 to 1000000 ns\n");
    return 2;
  }
  if ((s.ring_bytes & (s.ring_bytes - 1)) != 0 || s.ring_bytes < (std::uint64_t{1} << 16)) {
    std::fprintf(stderr, "--ring: a power of two of at least 65536 bytes\n");
    return 2;
  }
  bench::skip_without_io_uring();
  g_cpus = cpu_count();

  struct sigaction sa {};
  sa.sa_handler = on_sigchld;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  ::sigaction(SIGCHLD, &sa, nullptr);
  std::signal(SIGALRM, on_sigalrm);

  if (!opts.json)
    fmt::print("shmbus channel benchmarks{} (p50/p99/p99.9 over all samples; A/B blocks interleaved; {} CPUs)\n",
               opts.quick ? " [quick]" : "", g_cpus);
  int failures = 0;
  double worst = 0;
  const emit_fn emit = [&](bench::result& r) {
    r.bench = "channel";
    bench::report(r, opts.json);
    for (const auto& [key, value] : r.extra) {
      if (key == "allocs_per_msg" || key == "worker_allocs_per_msg") worst = std::max(worst, std::stod(value));
    }
  };
  for (const auto& c : cases) {
    if (!opts.only.empty() && opts.only != c.name) continue;
    try {
      ::alarm(opts.quick ? 60 : 300);
      c.run(s, emit);
      ::alarm(0);
    } catch (const std::exception& e) {
      ::alarm(0);
      std::fprintf(stderr, "bench_channel: case %s failed: %s\n", c.name, e.what());
      ++failures;
    }
  }
  if (!opts.json)
    fmt::print("\nallocation check: at most {:.6f} heap allocations per message in the measured channel blocks{}\n",
               worst, worst == 0 ? " (none)" : "");
  std::fflush(stdout);
  if (worst != 0) std::fprintf(stderr, "bench_channel: warning: the channel allocated during measured blocks\n");
  return failures == 0 ? 0 : 1;
}
