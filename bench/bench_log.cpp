// Durable log benchmarks: what a durable append, its acknowledgement, a
// non-durable append and a replay cost, each against a minimal reference
// measured in the same run, interleaved with it (A B A B ..., see
// bench_util.hpp). Everything is written under a fresh directory made in
// --dir (default /var/tmp), whose filesystem type is printed: on tmpfs an
// fsync is a no-op and the durable figures mean nothing. Every file and
// directory the bench makes is removed before it exits (also on SIGINT or
// SIGTERM, and when a case fails).
//
//   durable_append   64 B and 1 KiB records: K concurrent coroutines (--writers,
//                    default 64) on one scheduler, each looping
//                    co_await log.append(rec, durability::sync); a sample is
//                    the mean time per record over a batch of acknowledged
//                    records (records/s, MB/s, fsyncs per record), in a fresh
//                    log per block
//                    vs ref_group_commit: the same K coroutines appending the
//                    same frame bytes (header + payload, memcpy) into an
//                    mmapped, fallocated file, one io_uring fdatasync
//                    (IORING_FSYNC_DATASYNC over the written range, through
//                    shmbus::async_fsync) always in flight: while it runs,
//                    appends accumulate; when it completes, the waiting
//                    writers are resumed, append again, and the next sync
//                    covers everything written since.
//                    Diagnostic sides in the same rounds: ref_stream (one
//                    producer appending as fast as memcpy goes with the same
//                    one-sync-in-flight loop: the ceiling without the K
//                    limit) and disk_seq_write (one 64 MiB pwrite + one
//                    fdatasync into a fresh fallocated file: the disk's MB/s).
//   ack_latency      64 B append(sync) latency from issue to resume at an
//                    offered 100,000 records/s: every 1 ms, 100 appends are
//                    spawned at once
//                    vs pwrite4k_fdatasync: one 4 KiB pwrite at the end of a
//                    fallocated file + fdatasync(2), one after another.
//   try_append       64 B and 1 KiB try_append (durability::none), one
//                    segment's worth of records per block in a fresh log
//                    vs memcpy of the same payloads at the same stride into
//                    a pre-faulted buffer of the same total size. Diagnostic:
//                    file_mmap_memcpy, the same memcpy into a fresh mmapped
//                    fallocated file (what the page faults of a file mapping
//                    cost on their own).
//   replay           a reader from the beginning, try_next over every record
//                    of a 64 MiB log in the page cache, summing one word of
//                    each payload (64 B and 1 KiB records)
//                    vs memcpy of the same number of bytes between two
//                    pre-faulted buffers (the memory bandwidth).
//
// Throughput samples are times per record; the rates and "ratio" are
// sustained (1e9 / mean of the samples), the pair ratios per pair of blocks.
//
// Usage: bench_log [--json] [--quick] [--case NAME] [--samples PREFIX]
//                  [--dir PATH] [--pairs N] [--writers K]
// Exits 77 (Meson's "skipped") where the kernel refuses io_uring.
#include <shmbus/io.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>
#include <shmbus/when_all.hpp>
#include <shmbus/detail/ring_layout.hpp>

#include "bench_util.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using shmbus::byte_log;
using shmbus::durability;
using shmbus::scheduler;
using shmbus::task;
namespace bench = shmbus::bench;
namespace fs = std::filesystem;

namespace {

// ---- interruption and scratch space -------------------------------------------------

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_interrupt(int) { g_interrupted = 1; }

/// Thrown by the measurement loops after SIGINT/SIGTERM, so that every
/// scratch directory is removed on the way out.
struct interrupted : std::runtime_error {
  interrupted() : std::runtime_error("interrupted") {}
};

void check_interrupted() {
  if (g_interrupted != 0) throw interrupted();
}

[[noreturn]] void fail_errno(const std::string& what) {
  throw std::runtime_error(fmt::format("{}: {}", what, std::strerror(errno)));
}

/// A directory removed (with everything in it) when this goes away.
class scratch_dir {
 public:
  explicit scratch_dir(fs::path p) : m_path(std::move(p)) {
    std::error_code ec;
    fs::remove_all(m_path, ec);
    if (!fs::create_directory(m_path, ec) || ec)
      throw std::runtime_error(fmt::format("cannot create {}: {}", m_path.string(), ec.message()));
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  ~scratch_dir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const noexcept { return m_path; }

 private:
  fs::path m_path;
};

/// The bench's own directory: mkdtemp in --dir; removed at exit.
class root_dir {
 public:
  explicit root_dir(const fs::path& parent) {
    std::string templ = (parent / "shmbus-bench-log.XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) fail_errno(fmt::format("mkdtemp in {}", parent.string()));
    m_path = templ;
  }
  root_dir(const root_dir&) = delete;
  root_dir& operator=(const root_dir&) = delete;
  ~root_dir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const noexcept { return m_path; }
  /// A fresh name inside the root for one log or file.
  fs::path fresh(std::string_view what) { return m_path / fmt::format("{}-{}", what, m_counter++); }

 private:
  fs::path m_path;
  std::uint64_t m_counter = 0;
};

/// The filesystem type of `p`, by its statfs magic.
struct fs_info {
  std::string name;
  unsigned long magic = 0;
  bool memory_backed = false;  ///< tmpfs or ramfs: fsync makes nothing durable
};

fs_info filesystem_of(const fs::path& p) {
  struct statfs st {};
  if (::statfs(p.c_str(), &st) != 0) fail_errno(fmt::format("statfs {}", p.string()));
  fs_info f;
  f.magic = static_cast<unsigned long>(st.f_type);
  switch (f.magic) {
    case EXT4_SUPER_MAGIC: f.name = "ext4"; break;  // also ext2/ext3: one magic
    case XFS_SUPER_MAGIC: f.name = "xfs"; break;
    case BTRFS_SUPER_MAGIC: f.name = "btrfs"; break;
    case F2FS_SUPER_MAGIC: f.name = "f2fs"; break;
    case NFS_SUPER_MAGIC: f.name = "nfs"; break;
    case OVERLAYFS_SUPER_MAGIC: f.name = "overlayfs"; break;
    case TMPFS_MAGIC: f.name = "tmpfs"; f.memory_backed = true; break;
    case RAMFS_MAGIC: f.name = "ramfs"; f.memory_backed = true; break;
    default: f.name = fmt::format("unknown (0x{:x})", f.magic); break;
  }
  return f;
}

// ---- records ------------------------------------------------------------------------

/// A payload of `size` bytes with a pattern (no zero pages, nothing a
/// compressing device could elide).
std::vector<std::byte> make_payload(std::size_t size) {
  std::vector<std::byte> p(size);
  for (std::size_t i = 0; i < size; ++i) p[i] = static_cast<std::byte>((i * 131 + 17) & 0xff);
  return p;
}

/// Bytes the log writes for a record of `size` bytes (header, payload, padding).
std::size_t frame_bytes(std::size_t size) {
  return static_cast<std::size_t>(shmbus::detail::layout::frame_size(size));
}

/// What the references write per record: a 32-byte header and the payload,
/// padded like the log's frames, so both write the same number of bytes.
std::vector<std::byte> make_frame(std::size_t size) {
  std::vector<std::byte> f(frame_bytes(size));
  const auto length = static_cast<std::uint32_t>(size);
  std::memcpy(f.data(), &length, sizeof length);
  const auto payload = make_payload(size);
  std::memcpy(f.data() + shmbus::detail::layout::frame_header_size, payload.data(), size);
  return f;
}

/// A file of `size` bytes, fallocated and mapped MAP_SHARED; unlinked when
/// this goes away.
class mapped_file {
 public:
  mapped_file(fs::path path, std::size_t size) : m_path(std::move(path)), m_size(size) {
    m_fd.reset(::open(m_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!m_fd) fail_errno(fmt::format("open {}", m_path.string()));
    if (::fallocate(m_fd.get(), 0, 0, static_cast<off_t>(size)) != 0) {
      const int e = errno;
      ::unlink(m_path.c_str());
      errno = e;
      fail_errno(fmt::format("fallocate {} bytes for {}", size, m_path.string()));
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m_fd.get(), 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::unlink(m_path.c_str());
      errno = e;
      fail_errno(fmt::format("mmap {}", m_path.string()));
    }
    m_data = static_cast<std::byte*>(p);
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    ::munmap(m_data, m_size);
    m_fd.reset();
    ::unlink(m_path.c_str());
  }
  std::byte* data() const noexcept { return m_data; }
  int fd() const noexcept { return m_fd.get(); }
  std::size_t size() const noexcept { return m_size; }

 private:
  fs::path m_path;
  std::size_t m_size;
  shmbus::unique_fd m_fd;
  std::byte* m_data = nullptr;
};

/// Anonymous memory, every page touched once (no faults while measuring).
class buffer {
 public:
  explicit buffer(std::size_t size) : m_size(size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail_errno(fmt::format("mmap {} anonymous bytes", size));
    m_data = static_cast<std::byte*>(p);
    for (std::size_t i = 0; i < size; ++i) m_data[i] = static_cast<std::byte>(i * 7 + 3);
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer() { ::munmap(m_data, m_size); }
  std::byte* data() const noexcept { return m_data; }
  std::size_t size() const noexcept { return m_size; }

 private:
  std::size_t m_size;
  std::byte* m_data = nullptr;
};

// ---- settings and helpers -----------------------------------------------------------

struct settings {
  bool quick = false;
  std::size_t pairs = 0;  ///< 0: each case's default
  std::size_t writers = 64;
  root_dir* root = nullptr;
  fs_info fsys;
};

using bench::add_number;
using bench::emit_fn;
using bench::plan_for;

/// Counts a side's calls, to tell the warm-up blocks from the measured ones.
struct block_counter {
  std::size_t warmup;
  std::size_t calls = 0;
  bool next_is_measured() { return calls++ >= warmup; }
};

double mb_per_s(double ns_per_record, std::size_t bytes_per_record) {
  return static_cast<double>(bytes_per_record) * 1e3 / ns_per_record;  // bytes/ns * 1e3 = MB/s
}

/// Sustained records/s of a set of per-record samples (1e9 / mean).
double rate_of(const std::vector<double>& samples) { return 1e9 / bench::compute_stats(samples).mean; }

// ---- 1. durable appends: K writers --------------------------------------------------

/// The measured load: K writers share a quota of records; a sample is taken
/// every `per_sample` acknowledged records (mean time per record since the
/// previous sample).
struct load {
  std::size_t total = 0;
  std::size_t per_sample = 0;
  std::size_t issued = 0;
  std::size_t completed = 0;
  std::int64_t last = 0;
  std::vector<double>* out = nullptr;

  bool take() {
    check_interrupted();
    if (issued == total) return false;
    ++issued;
    return true;
  }
  void complete() {
    if (++completed % per_sample != 0) return;
    const std::int64_t now = bench::now_ns();
    out->push_back(static_cast<double>(now - last) / static_cast<double>(per_sample));
    last = now;
  }
};

task<void> log_writer(byte_log& log, std::span<const std::byte> rec, load& ld) {
  while (ld.take()) {
    co_await log.append(rec, durability::sync);
    ld.complete();
  }
}

task<void> run_log_writers(byte_log& log, std::span<const std::byte> rec, std::size_t writers, load& ld) {
  std::vector<task<void>> tasks;
  tasks.reserve(writers);
  for (std::size_t i = 0; i < writers; ++i) tasks.push_back(log_writer(log, rec, ld));
  ld.last = bench::now_ns();
  co_await shmbus::when_all(std::move(tasks));
}

/// The hand-written reference: appends are a bump of `written` and a
/// memcpy into the mapping; one syncer keeps one fdatasync of the range
/// [durable, written) in flight.
struct ref_log {
  ref_log(scheduler& s, mapped_file& f) noexcept : sched(s), file(f) {}
  scheduler& sched;
  mapped_file& file;
  std::uint64_t written = 0;
  std::uint64_t durable = 0;
  std::uint64_t syncs = 0;
  std::vector<std::coroutine_handle<>> waiters;
  std::coroutine_handle<> parked_syncer;
  std::size_t active = 0;  ///< writers still running
  bool done = false;

  std::uint64_t append(std::span<const std::byte> frame) {
    if (written + frame.size() > file.size()) throw std::logic_error("reference file too small");
    std::memcpy(file.data() + written, frame.data(), frame.size());
    written += frame.size();
    if (parked_syncer) sched.enqueue(std::exchange(parked_syncer, {}));
    return written;
  }
  void writer_done() {
    if (--active == 0) {
      done = true;
      if (parked_syncer) sched.enqueue(std::exchange(parked_syncer, {}));
    }
  }
};

struct until_durable {
  ref_log& r;
  std::uint64_t target;
  bool await_ready() const noexcept { return r.durable >= target; }
  void await_suspend(std::coroutine_handle<> h) { r.waiters.push_back(h); }
  void await_resume() const noexcept {}
};

struct syncer_idle {
  ref_log& r;
  bool await_ready() const noexcept { return r.done || r.written != r.durable; }
  void await_suspend(std::coroutine_handle<> h) noexcept { r.parked_syncer = h; }
  void await_resume() const noexcept {}
};

task<void> ref_syncer(ref_log& r) {
  for (;;) {
    if (r.written == r.durable) {
      if (r.done) co_return;
      co_await syncer_idle{r};
      continue;
    }
    const std::uint64_t from = r.durable, to = r.written;
    co_await shmbus::async_fsync(r.sched, r.file.fd(), shmbus::sync_kind::data, from, to - from);
    ++r.syncs;
    r.durable = to;
    for (auto h : r.waiters) r.sched.enqueue(h);
    r.waiters.clear();
    // One turn for the writers just resumed: they append before the next
    // sync is issued, so it covers them too.
    co_await r.sched.schedule();
  }
}

struct writer_guard {
  ref_log& r;
  ~writer_guard() { r.writer_done(); }
};

task<void> ref_writer(ref_log& r, std::span<const std::byte> frame, load& ld) {
  writer_guard g{r};
  while (ld.take()) {
    const std::uint64_t end = r.append(frame);
    while (r.durable < end) co_await until_durable{r, end};
    ld.complete();
  }
}

task<void> run_ref_writers(ref_log& r, std::span<const std::byte> frame, std::size_t writers, load& ld) {
  std::vector<task<void>> tasks;
  tasks.reserve(writers + 1);
  r.active = writers;
  for (std::size_t i = 0; i < writers; ++i) tasks.push_back(ref_writer(r, frame, ld));
  tasks.push_back(ref_syncer(r));
  ld.last = bench::now_ns();
  co_await shmbus::when_all(std::move(tasks));
}

/// The unbounded reference: one producer appends `records` frames as fast as
/// memcpy goes (a turn of the loop every 64, for the syncer), then waits for
/// the last sync.
task<void> ref_stream_producer(ref_log& r, std::span<const std::byte> frame, std::size_t records) {
  writer_guard g{r};
  for (std::size_t i = 0; i < records; ++i) {
    r.append(frame);
    if ((i & 63) == 63) {
      check_interrupted();
      co_await r.sched.schedule();
    }
  }
  while (r.durable < r.written) co_await until_durable{r, r.written};
}

task<void> run_ref_stream(ref_log& r, std::span<const std::byte> frame, std::size_t records) {
  std::vector<task<void>> tasks;
  r.active = 1;
  tasks.push_back(ref_stream_producer(r, frame, records));
  tasks.push_back(ref_syncer(r));
  co_await shmbus::when_all(std::move(tasks));
}

/// One large sequential write of `bytes` + one fdatasync into a fresh
/// fallocated file; the sample is per record-equivalent (bytes / frame).
void disk_sample(const fs::path& path, const buffer& data, std::size_t frame, std::vector<double>& out) {
  shmbus::unique_fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) fail_errno(fmt::format("open {}", path.string()));
  struct unlinker {
    const fs::path& p;
    ~unlinker() { ::unlink(p.c_str()); }
  } cleanup{path};
  if (::fallocate(fd.get(), 0, 0, static_cast<off_t>(data.size())) != 0) fail_errno("fallocate");
  const std::int64_t t0 = bench::now_ns();
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("pwrite");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fdatasync(fd.get()) != 0) fail_errno("fdatasync");
  const std::int64_t t1 = bench::now_ns();
  out.push_back(static_cast<double>(t1 - t0) / (static_cast<double>(data.size()) / static_cast<double>(frame)));
}

bench::result durable_append_case(const settings& s, std::size_t size) {
  const std::size_t writers = s.writers;
  const std::size_t per_sample = s.quick ? writers : writers * 16;
  const bench::plan p = plan_for(s, {1, 10, 60}, {1, 1, 3});
  const auto payload = make_payload(size);
  const auto frame = make_frame(size);
  const std::size_t fb = frame.size();
  const std::size_t stream_records = (s.quick ? (std::size_t{1} << 20) : (std::size_t{32} << 20)) / fb;
  const buffer disk_data(s.quick ? (std::size_t{4} << 20) : (std::size_t{64} << 20));
  scheduler sched;
  root_dir& root = *s.root;

  std::uint64_t log_syncs = 0, log_records = 0, ref_syncs = 0, ref_records = 0;
  block_counter log_blocks{p.warmup_blocks}, ref_blocks{p.warmup_blocks};

  bench::side log_side{"durable_append", [&](std::size_t n, std::vector<double>& out) {
                         const bool measured = log_blocks.next_is_measured();
                         scratch_dir dir(root.fresh("durable"));
                         auto log = byte_log::open(sched, dir.path());
                         sched.run(log.append(payload, durability::sync));  // segment 0 exists: not timed
                         const std::uint64_t syncs0 = log.syncs_issued();
                         load ld{n * per_sample, per_sample, 0, 0, 0, &out};
                         sched.run(run_log_writers(log, payload, writers, ld));
                         if (measured) {
                           log_syncs += log.syncs_issued() - syncs0;
                           log_records += ld.completed;
                         }
                       }};
  bench::side ref_side{"ref_group_commit", [&](std::size_t n, std::vector<double>& out) {
                         const bool measured = ref_blocks.next_is_measured();
                         mapped_file file(root.fresh("ref"), n * per_sample * fb + 4096);
                         ref_log r{sched, file};
                         load ld{n * per_sample, per_sample, 0, 0, 0, &out};
                         sched.run(run_ref_writers(r, frame, writers, ld));
                         if (measured) {
                           ref_syncs += r.syncs;
                           ref_records += ld.completed;
                         }
                       }};
  bench::side stream_side{"ref_stream", [&](std::size_t, std::vector<double>& out) {
                            for (int k = 0; k < 2; ++k) {
                              mapped_file file(root.fresh("stream"), stream_records * fb + 4096);
                              ref_log r{sched, file};
                              const std::int64_t t0 = bench::now_ns();
                              sched.run(run_ref_stream(r, frame, stream_records));
                              const std::int64_t t1 = bench::now_ns();
                              out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(stream_records));
                            }
                          }};
  bench::side disk_side{"disk_seq_write", [&](std::size_t, std::vector<double>& out) {
                          check_interrupted();
                          disk_sample(root.fresh("disk"), disk_data, fb, out);
                        }};

  const bench::comparison c = bench::run_interleaved(log_side, ref_side, p, {stream_side, disk_side});
  bench::result r;
  r.name = "durable_append";
  r.sample_name = fmt::format("durable_append_{}", size);
  r.op = fmt::format("append(sync) of {} B, {} writers, one acknowledged record", size, writers);
  r.baseline = "ref_group_commit";
  r.compared = bench::result::compare::mean_rate;
  bench::fill(r, c);
  const double stream_rate = rate_of(c.samples_more[0]);
  const double disk_rate = rate_of(c.samples_more[1]);  // record-equivalents of `fb` bytes per second
  r.add_extra("size", static_cast<std::int64_t>(size));
  r.add_extra("frame_bytes", static_cast<std::int64_t>(fb));
  r.add_extra("writers", static_cast<std::int64_t>(writers));
  r.add_extra("records_per_sample", static_cast<std::int64_t>(per_sample));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  add_number(r, "mb_per_s", mb_per_s(r.measured.mean, size), 1);
  add_number(r, "log_mb_per_s", mb_per_s(r.measured.mean, fb), 1);
  add_number(r, "baseline_mb_per_s", mb_per_s(r.base.mean, size), 1);
  add_number(r, "syncs_per_record",
             log_records == 0 ? 0.0 : static_cast<double>(log_syncs) / static_cast<double>(log_records), 5);
  add_number(r, "baseline_syncs_per_record",
             ref_records == 0 ? 0.0 : static_cast<double>(ref_syncs) / static_cast<double>(ref_records), 5);
  add_number(r, "stream_records_per_s", stream_rate, 0);
  add_number(r, "stream_mb_per_s", stream_rate * static_cast<double>(size) / 1e6, 1);
  add_number(r, "ratio_vs_stream", r.ops_per_s / stream_rate, 4);
  add_number(r, "disk_mb_per_s", disk_rate * static_cast<double>(fb) / 1e6, 1);
  add_number(r, "log_bytes_vs_disk", r.ops_per_s / disk_rate, 4);
  if (size == 64) {
    r.add_extra("target", std::string_view("ratio >= 0.8"));
    r.add_extra("target_met", r.ratio() >= 0.8);
  }
  return r;
}

void durable_append(const settings& s, const emit_fn& emit) {
  for (std::size_t size : {std::size_t{64}, std::size_t{1024}}) {
    bench::result r = durable_append_case(s, size);
    emit(r);
  }
}

// ---- 2. acknowledgement latency at a moderate load --------------------------------------

constexpr std::size_t appends_per_tick = 100;
constexpr auto tick = 1ms;

struct latch {
  std::size_t pending = 0;
  std::coroutine_handle<> waiter;
};

struct latch_wait {
  latch& l;
  bool await_ready() const noexcept { return l.pending == 0; }
  void await_suspend(std::coroutine_handle<> h) noexcept { l.waiter = h; }
  void await_resume() const noexcept {}
};

task<void> timed_append(scheduler& s, byte_log& log, std::span<const std::byte> rec, std::int64_t issued,
                        std::vector<double>& out, latch& l) {
  struct done_guard {
    scheduler& sched;
    latch& l;
    ~done_guard() {
      if (--l.pending == 0 && l.waiter) sched.enqueue(std::exchange(l.waiter, {}));
    }
  } guard{s, l};
  co_await log.append(rec, durability::sync);
  out.push_back(static_cast<double>(bench::now_ns() - issued));
}

/// Every `tick`, spawns `appends_per_tick` appends at once; each records its
/// latency from the tick's issue time to its resumption.
task<void> ack_block(scheduler& s, byte_log& log, std::span<const std::byte> rec, std::size_t n,
                     std::vector<double>& out, std::vector<double>& lag) {
  latch l;
  const std::size_t ticks = (n + appends_per_tick - 1) / appends_per_tick;
  const auto start = scheduler::clock::now();
  for (std::size_t k = 0; k < ticks; ++k) {
    const auto deadline = start + k * tick;
    co_await s.sleep_until(deadline);
    check_interrupted();
    const std::int64_t issued = bench::now_ns();
    lag.push_back(static_cast<double>((scheduler::clock::now() - deadline).count()));
    l.pending += appends_per_tick;
    for (std::size_t i = 0; i < appends_per_tick; ++i) s.spawn(timed_append(s, log, rec, issued, out, l));
  }
  co_await latch_wait{l};
}

/// Per-block p99s of a side, for per-pair p99 ratios.
struct block_p99s {
  block_counter counter;
  std::vector<double> p99;
  void record(const std::vector<double>& out, std::size_t from) {
    if (!counter.next_is_measured()) return;
    p99.push_back(bench::compute_stats(std::vector<double>(out.begin() + static_cast<std::ptrdiff_t>(from), out.end())).p99);
  }
};

void ack_latency(const settings& s, const emit_fn& emit) {
  const bench::plan p = plan_for(s, {1, 10, 10000}, {1, 1, 300});
  constexpr std::size_t size = 64;
  const std::size_t fsyncs_per_block = p.block / 10;
  const auto payload = make_payload(size);
  scheduler sched;
  root_dir& root = *s.root;
  scratch_dir dir(root.fresh("ack"));
  auto log = byte_log::open(sched, dir.path() / "log");
  sched.run(log.append(payload, durability::sync));

  const std::size_t file_bytes = (p.warmup_blocks + p.pairs) * fsyncs_per_block * 4096 + 4096;
  shmbus::unique_fd fd(::open((dir.path() / "pwrite").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) fail_errno("open pwrite file");
  if (::fallocate(fd.get(), 0, 0, static_cast<off_t>(file_bytes)) != 0) fail_errno("fallocate");
  const buffer page(4096);
  std::size_t offset = 0;

  block_p99s log_p99{{p.warmup_blocks}, {}}, sync_p99{{p.warmup_blocks}, {}};
  std::vector<double> lag;
  std::uint64_t syncs = 0, appends = 0;
  block_counter log_blocks{p.warmup_blocks};
  bench::side log_side{"ack_latency", [&](std::size_t n, std::vector<double>& out) {
                         const bool measured = log_blocks.next_is_measured();
                         const std::size_t from = out.size();
                         const std::uint64_t syncs0 = log.syncs_issued();
                         sched.run(ack_block(sched, log, payload, n, out, lag));
                         if (measured) {
                           syncs += log.syncs_issued() - syncs0;
                           appends += out.size() - from;
                         }
                         log_p99.record(out, from);
                       }};
  bench::side sync_side{"pwrite4k_fdatasync", [&](std::size_t, std::vector<double>& out) {
                          const std::size_t from = out.size();
                          for (std::size_t i = 0; i < fsyncs_per_block; ++i) {
                            check_interrupted();
                            if (offset + 4096 > file_bytes) offset = 0;
                            const std::int64_t t0 = bench::now_ns();
                            if (::pwrite(fd.get(), page.data(), 4096, static_cast<off_t>(offset)) != 4096)
                              fail_errno("pwrite");
                            if (::fdatasync(fd.get()) != 0) fail_errno("fdatasync");
                            const std::int64_t t1 = bench::now_ns();
                            offset += 4096;
                            out.push_back(static_cast<double>(t1 - t0));
                          }
                          sync_p99.record(out, from);
                        }};
  const bench::comparison c = bench::run_interleaved(log_side, sync_side, p);
  bench::result r;
  r.name = "ack_latency";
  r.op = fmt::format("append(sync) of {} B, issue to resume, {} every {} ms", size, appends_per_tick, tick.count());
  r.baseline = "pwrite4k_fdatasync";
  bench::fill(r, c);
  std::vector<double> pair_p99;
  for (std::size_t i = 0; i < log_p99.p99.size() && i < sync_p99.p99.size(); ++i)
    pair_p99.push_back(log_p99.p99[i] / sync_p99.p99[i]);
  const double p99_ratio = r.measured.p99 / r.base.p99;
  // ops_per_s is meaningless for an open-loop load: give the offered rate.
  r.ops_per_s = static_cast<double>(appends_per_tick) * 1e9 / static_cast<double>(std::chrono::nanoseconds(tick).count());
  r.add_extra("size", static_cast<std::int64_t>(size));
  r.add_extra("offered_per_s", static_cast<std::int64_t>(r.ops_per_s));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  add_number(r, "p99_ratio", p99_ratio, 3);
  add_number(r, "pair_p99_ratio_median", bench::median(pair_p99), 3);
  add_number(r, "syncs_per_record", appends == 0 ? 0.0 : static_cast<double>(syncs) / static_cast<double>(appends), 5);
  const bench::stats lag_stats = bench::compute_stats(lag);
  add_number(r, "tick_lag_p50_ns", lag_stats.p50, 0);
  add_number(r, "tick_lag_p99_ns", lag_stats.p99, 0);
  r.add_extra("target", std::string_view("p99 <= 3x fdatasync p99"));
  r.add_extra("target_met", p99_ratio <= 3.0);
  emit(r);
}

// ---- 3. non-durable appends ------------------------------------------------------------------

constexpr std::size_t segment_bytes = std::size_t{64} << 20;  // log_options' default

[[gnu::noinline]] void copy_records(std::byte* dst, std::size_t stride, const std::byte* src, std::size_t len,
                                    std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) std::memcpy(dst + i * stride, src, len);
}

void try_append_case(const settings& s, std::size_t size, const emit_fn& emit) {
  const auto payload = make_payload(size);
  const std::size_t fb = frame_bytes(size);
  const std::size_t per_sample = size <= 64 ? 4096 : 512;
  // A block: one segment's worth of records (the full run), so each block
  // pays for creating and populating one next segment, as steady state does.
  const std::size_t per_block = std::max<std::size_t>(1, segment_bytes / (fb * per_sample));
  const bench::plan p = plan_for(s, {1, 10, per_block}, {1, 1, 4});
  const std::size_t block_bytes = p.block * per_sample * fb;
  scheduler sched;
  root_dir& root = *s.root;
  const buffer dst(block_bytes);

  bench::side log_side{"try_append", [&](std::size_t n, std::vector<double>& out) {
                         scratch_dir dir(root.fresh("append"));
                         auto log = byte_log::open(sched, dir.path());
                         log.try_append(payload);  // segment 0 exists: not timed
                         for (std::size_t k = 0; k < n; ++k) {
                           check_interrupted();
                           const std::int64_t t0 = bench::now_ns();
                           for (std::size_t i = 0; i < per_sample; ++i) log.try_append(payload);
                           const std::int64_t t1 = bench::now_ns();
                           out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
                         }
                       }};
  bench::side copy_side{"memcpy", [&](std::size_t n, std::vector<double>& out) {
                          for (std::size_t k = 0; k < n; ++k) {
                            check_interrupted();
                            std::byte* at = dst.data() + k * per_sample * fb;
                            const std::int64_t t0 = bench::now_ns();
                            copy_records(at, fb, payload.data(), size, per_sample);
                            const std::int64_t t1 = bench::now_ns();
                            bench::clobber_memory();
                            out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
                          }
                        }};
  bench::side file_side{"file_mmap_memcpy", [&](std::size_t n, std::vector<double>& out) {
                          mapped_file file(root.fresh("mmap"), block_bytes);
                          for (std::size_t k = 0; k < n; ++k) {
                            check_interrupted();
                            std::byte* at = file.data() + k * per_sample * fb;
                            const std::int64_t t0 = bench::now_ns();
                            copy_records(at, fb, payload.data(), size, per_sample);
                            const std::int64_t t1 = bench::now_ns();
                            bench::clobber_memory();
                            out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(per_sample));
                          }
                        }};
  const bench::comparison c = bench::run_interleaved(log_side, copy_side, p, {file_side});
  bench::result r;
  r.name = "try_append";
  r.sample_name = fmt::format("try_append_{}", size);
  r.op = fmt::format("try_append of {} B (durability::none)", size);
  r.baseline = "memcpy";
  r.compared = bench::result::compare::mean_rate;
  bench::fill(r, c);
  const double file_rate = rate_of(c.samples_more[0]);
  r.add_extra("size", static_cast<std::int64_t>(size));
  r.add_extra("records_per_sample", static_cast<std::int64_t>(per_sample));
  r.add_extra("records_per_block", static_cast<std::int64_t>(p.block * per_sample));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  add_number(r, "mb_per_s", mb_per_s(r.measured.mean, size), 1);
  add_number(r, "baseline_mb_per_s", mb_per_s(r.base.mean, size), 1);
  add_number(r, "file_mmap_memcpy_records_per_s", file_rate, 0);
  add_number(r, "ratio_vs_file_mmap_memcpy", r.ops_per_s / file_rate, 4);
  emit(r);
}

void try_append(const settings& s, const emit_fn& emit) {
  for (std::size_t size : {std::size_t{64}, std::size_t{1024}}) try_append_case(s, size, emit);
}

// ---- 4. replay from the page cache ----------------------------------------------------------------

void replay_case(const settings& s, std::size_t size, const emit_fn& emit) {
  const auto payload = make_payload(size);
  const std::size_t fb = frame_bytes(size);
  const std::size_t log_bytes = s.quick ? (std::size_t{4} << 20) : segment_bytes;
  const std::size_t records = log_bytes / fb - 1;  // all in segment 0
  const bench::plan p = plan_for(s, {1, 10, 6}, {1, 1, 2});
  scheduler sched;
  root_dir& root = *s.root;
  scratch_dir dir(root.fresh("replay"));
  auto log = byte_log::open(sched, dir.path());
  for (std::size_t i = 0; i < records; ++i) log.try_append(payload);
  sched.run(log.sync());  // nothing left for writeback to do while measuring
  const buffer src(records * fb), dst(records * fb);

  std::uint64_t checksum = 0;
  bench::side replay_side{"replay", [&](std::size_t n, std::vector<double>& out) {
                            for (std::size_t k = 0; k < n; ++k) {
                              check_interrupted();
                              auto reader = log.reader(shmbus::from::beginning());
                              std::uint64_t sum = 0;
                              std::size_t count = 0;
                              const std::int64_t t0 = bench::now_ns();
                              while (const auto rec = reader.try_next()) {
                                std::uint64_t word;
                                std::memcpy(&word, rec.data.data(), sizeof word);
                                sum += word;
                                ++count;
                              }
                              const std::int64_t t1 = bench::now_ns();
                              if (count != records)
                                throw std::logic_error(fmt::format("replayed {} records of {}", count, records));
                              checksum += sum;
                              out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(records));
                            }
                          }};
  bench::side copy_side{"memcpy_bandwidth", [&](std::size_t n, std::vector<double>& out) {
                          for (std::size_t k = 0; k < n; ++k) {
                            check_interrupted();
                            const std::int64_t t0 = bench::now_ns();
                            std::memcpy(dst.data(), src.data(), dst.size());
                            bench::clobber_memory();
                            const std::int64_t t1 = bench::now_ns();
                            out.push_back(static_cast<double>(t1 - t0) / static_cast<double>(records));
                          }
                        }};
  const bench::comparison c = bench::run_interleaved(replay_side, copy_side, p);
  bench::do_not_optimize(checksum);
  bench::result r;
  r.name = "replay";
  r.sample_name = fmt::format("replay_{}", size);
  r.op = fmt::format("one {} B record read (try_next + one word of the payload), from the page cache", size);
  r.baseline = "memcpy_bandwidth";
  r.compared = bench::result::compare::mean_rate;
  bench::fill(r, c);
  const double payload_gb = r.ops_per_s * static_cast<double>(size) / 1e9;
  r.add_extra("size", static_cast<std::int64_t>(size));
  r.add_extra("records", static_cast<std::int64_t>(records));
  r.add_extra("pairs", static_cast<std::int64_t>(p.pairs));
  add_number(r, "payload_gb_per_s", payload_gb, 3);
  add_number(r, "log_gb_per_s", r.ops_per_s * static_cast<double>(fb) / 1e9, 3);
  add_number(r, "memcpy_gb_per_s", r.base_ops_per_s * static_cast<double>(fb) / 1e9, 3);
  r.add_extra("target", std::string_view("payload >= 1 GB/s"));
  r.add_extra("target_met", payload_gb >= 1.0);
  emit(r);
}

void replay(const settings& s, const emit_fn& emit) {
  for (std::size_t size : {std::size_t{64}, std::size_t{1024}}) replay_case(s, size, emit);
}

// ---- main ----------------------------------------------------------------------------------------

struct case_spec {
  const char* name;
  void (*run)(const settings&, const emit_fn&);
};

const case_spec cases[] = {
    {"durable_append", durable_append},
    {"ack_latency", ack_latency},
    {"try_append", try_append},
    {"replay", replay},
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> names;
  for (const auto& c : cases) names.emplace_back(c.name);
  const bench::options opts = bench::parse_options(
      argc, argv, names, "bench_log",
      {{"dir", "PATH  existing directory to work in (a fresh subdirectory is made and removed; default /var/tmp)"},
       {"pairs", "N  measured pairs (rounds) of blocks per case (default 10)"},
       {"writers", "K  concurrent writers of durable_append (default 64)"}});
  settings s;
  s.quick = opts.quick;
  s.pairs = bench::parse_count(opts, "pairs", 0);
  s.writers = bench::parse_count(opts, "writers", 64);
  const auto dir_it = opts.values.find("dir");
  const fs::path parent = dir_it == opts.values.end() ? fs::path("/var/tmp") : fs::path(dir_it->second);
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    std::fprintf(stderr, "--dir: %s is not an existing directory\n", parent.c_str());
    return 2;
  }
  bench::skip_without_io_uring();

  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second signal kills at once
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a closed pipe makes output fail (and clean up), not kill us

  int failures = 0;
  try {
    root_dir root(parent);
    s.root = &root;
    s.fsys = filesystem_of(root.path());
    if (!opts.json)
      fmt::print("shmbus log benchmarks{} (A/B blocks interleaved; {} in {})\n", opts.quick ? " [quick]" : "",
                 s.fsys.name, root.path().string());
    if (s.fsys.memory_backed)
      std::fprintf(stderr,
                   "bench_log: warning: %s is on %s: fsync makes nothing durable there, the durable figures "
                   "mean nothing (use --dir on a disk filesystem)\n",
                   root.path().c_str(), s.fsys.name.c_str());
    std::vector<std::string> verdicts;
    // This thread's wait for a CPU since the case started (read as each
    // case starts) or last emitted.
    std::int64_t wait_from = -1;
    const emit_fn emit = [&](bench::result& r) {
      bench::add_cpu_wait(r, "cpu_wait_ms", bench::cpu_wait_since(wait_from));
      wait_from = bench::cpu_wait_ns();
      r.bench = "log";
      r.add_extra("fs", std::string_view(s.fsys.name));
      bench::report(r, opts.json);
      for (const auto& [key, value] : r.extra)
        if (key == "target_met")
          verdicts.push_back(fmt::format("{}: {}", r.sample_name.empty() ? r.name : r.sample_name,
                                         value == "true" ? "met" : "NOT met"));
    };
    for (const auto& c : cases) {
      if (!opts.only.empty() && opts.only != c.name) continue;
      try {
        wait_from = bench::cpu_wait_ns();
        c.run(s, emit);
      } catch (const interrupted&) {
        throw;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_log: case %s failed: %s\n", c.name, e.what());
        ++failures;
      }
    }
    if (!opts.json && !verdicts.empty()) {
      fmt::print("\ntargets{}:\n", opts.quick ? " (quick run: not meaningful)" : "");
      for (const auto& v : verdicts) fmt::print("  {}\n", v);
    }
  } catch (const interrupted&) {
    std::fflush(stdout);
    std::fprintf(stderr, "bench_log: interrupted; scratch files removed\n");
    return 130;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_log: %s\n", e.what());
    return 1;
  }
  std::fflush(stdout);
  return failures == 0 ? 0 : 1;
}
