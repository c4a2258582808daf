// Shared helpers of the shmbus benchmarks: command line, clock, percentile
// statistics over recorded samples, interleaved A/B measurement, and the two
// output formats (readable table, or one JSON object per line with --json).
//
// Percentiles: every sample is kept and sorted; p50/p99/p99.9 are read by the
// nearest-rank rule. A latency histogram library would save memory, but
// Debian 12 has no C/C++ HdrHistogram package (only Go and Java ones), and
// the benches keep at most a few hundred thousand samples (a few MiB), so
// exact order statistics are cheaper than a dependency.
//
// Interleaving: the machines are shared 2-vCPU VMs whose speed drifts over
// seconds. A case and its baseline therefore run in alternating blocks
// (A B A B ...) after a warm-up of each; percentiles are over all samples of
// each side, and the ratio p50_A/p50_B is also computed per pair of blocks,
// whose median is robust to a pair that the host disturbed.
#pragma once

#include <fmt/format.h>
#include <liburing.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmbus::bench {

// ---- clock and optimisation barriers ---------------------------------------

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call with the TSC
/// clocksource). The same clock as std::chrono::steady_clock.
inline std::int64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// Makes the compiler believe `value` is read, so that computing it cannot be
/// removed.
template <class T>
inline void do_not_optimize(const T& value) noexcept {
  asm volatile("" : : "r,m"(value) : "memory");
}

/// Makes the compiler forget what it knew about memory.
inline void clobber_memory() noexcept { asm volatile("" : : : "memory"); }

// ---- statistics --------------------------------------------------------------

struct stats {
  std::size_t count = 0;
  double min = 0;
  double p50 = 0;
  double p99 = 0;
  double p999 = 0;
  double max = 0;
  double mean = 0;
};

/// Nearest-rank percentile of sorted samples; `q` in [0, 1].
inline double percentile_sorted(const std::vector<double>& sorted, double q) noexcept {
  if (sorted.empty()) return std::nan("");
  const auto n = static_cast<double>(sorted.size());
  auto rank = static_cast<std::size_t>(std::ceil(q * n));
  if (rank < 1) rank = 1;
  if (rank > sorted.size()) rank = sorted.size();
  return sorted[rank - 1];
}

/// Order statistics of `samples` (copied and sorted; the input is kept).
inline stats compute_stats(std::vector<double> samples) {
  stats s;
  s.count = samples.size();
  if (samples.empty()) {
    s.min = s.p50 = s.p99 = s.p999 = s.max = s.mean = std::nan("");
    return s;
  }
  std::sort(samples.begin(), samples.end());
  double sum = 0;
  for (double v : samples) sum += v;
  s.min = samples.front();
  s.max = samples.back();
  s.mean = sum / static_cast<double>(samples.size());
  s.p50 = percentile_sorted(samples, 0.50);
  s.p99 = percentile_sorted(samples, 0.99);
  s.p999 = percentile_sorted(samples, 0.999);
  return s;
}

/// Median of a small set of values (NaN when empty).
inline double median(std::vector<double> values) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// ---- interleaved comparison -------------------------------------------------

/// One side of a comparison. `run_block(n, out)` records n samples into
/// `out`, each in nanoseconds per operation (a sample may time one operation
/// or be the mean over a batch of them; the side decides and says so).
struct side {
  std::string name;
  std::function<void(std::size_t n, std::vector<double>& out)> run_block;
};

struct plan {
  std::size_t warmup_blocks = 1;  ///< per side, before anything is recorded
  std::size_t pairs = 10;         ///< measured pairs of blocks (A then B)
  std::size_t block = 2000;       ///< samples per block
};

struct comparison {
  std::vector<double> samples_a, samples_b;
  std::vector<double> pair_ratios;       ///< p50_A / p50_B of each pair of blocks
  std::vector<double> pair_mean_ratios;  ///< mean_A / mean_B of each pair of blocks
  /// Samples of the further sides (diagnostics), in the order given.
  std::vector<std::vector<double>> samples_more;
};

/// Runs warm-up blocks of every side, then `p.pairs` rounds of blocks A, B
/// and then each of `more` (A B C A B C ...: diagnostic sides measured in
/// the same rounds; the pair ratios compare A and B only).
inline comparison run_interleaved(const side& a, const side& b, const plan& p, const std::vector<side>& more) {
  comparison c;
  c.samples_more.resize(more.size());
  std::vector<double> scratch;
  for (std::size_t i = 0; i < p.warmup_blocks; ++i) {
    scratch.clear();
    a.run_block(p.block, scratch);
    scratch.clear();
    b.run_block(p.block, scratch);
    for (const side& m : more) {
      scratch.clear();
      m.run_block(p.block, scratch);
    }
  }
  std::vector<double> block_a, block_b;
  for (std::size_t i = 0; i < p.pairs; ++i) {
    block_a.clear();
    block_b.clear();
    a.run_block(p.block, block_a);
    b.run_block(p.block, block_b);
    const stats sa = compute_stats(block_a), sb = compute_stats(block_b);
    c.pair_ratios.push_back(sa.p50 / sb.p50);
    c.pair_mean_ratios.push_back(sa.mean / sb.mean);
    c.samples_a.insert(c.samples_a.end(), block_a.begin(), block_a.end());
    c.samples_b.insert(c.samples_b.end(), block_b.begin(), block_b.end());
    for (std::size_t k = 0; k < more.size(); ++k) {
      scratch.clear();
      more[k].run_block(p.block, scratch);
      c.samples_more[k].insert(c.samples_more[k].end(), scratch.begin(), scratch.end());
    }
  }
  return c;
}

/// Runs warm-up blocks of both sides, then `p.pairs` pairs of blocks A, B.
inline comparison run_interleaved(const side& a, const side& b, const plan& p) { return run_interleaved(a, b, p, {}); }

// ---- results and output -------------------------------------------------------

/// One measured case against its same-run baseline.
struct result {
  std::string bench;     ///< "scheduler", "channel", ...
  std::string name;      ///< the case
  std::string op;        ///< what one operation is (for the reader)
  stats measured;
  double ops_per_s = 0;
  std::string baseline;  ///< empty: no baseline
  stats base;
  double base_ops_per_s = 0;
  std::vector<double> pair_ratios;
  /// Extra fields: key and already-encoded JSON value.
  std::vector<std::pair<std::string, std::string>> extra;
  /// What ratio() and the pair ratios compare (set before fill()). Samples
  /// are times per operation; the rate forms divide the baseline's time by
  /// the case's, so that above 1 means faster than the baseline.
  enum class compare : std::uint8_t {
    p50_time,   ///< p50 of the case / p50 of the baseline (latency cases)
    mean_rate,  ///< sustained throughput: baseline mean / case mean
    p50_rate,   ///< median-sample throughput: baseline p50 / case p50
  };
  compare compared = compare::p50_time;
  /// Names the --samples files; empty: `name` (set it when one case
  /// reports several results, e.g. one per message size).
  std::string sample_name;

  double ratio() const noexcept {
    switch (compared) {
      case compare::mean_rate: return base.mean / measured.mean;
      case compare::p50_rate: return base.p50 / measured.p50;
      case compare::p50_time: break;
    }
    return measured.p50 / base.p50;
  }
  const char* ratio_label() const noexcept {
    switch (compared) {
      case compare::mean_rate: return "rate ratio (sustained: baseline mean / case mean)";
      case compare::p50_rate: return "rate ratio (baseline p50 / case p50)";
      case compare::p50_time: break;
    }
    return "ratio p50";
  }
  double pair_ratio_median() const { return median(pair_ratios); }

  void add_extra(std::string key, bool v) { extra.emplace_back(std::move(key), v ? "true" : "false"); }
  void add_extra(std::string key, std::int64_t v) { extra.emplace_back(std::move(key), fmt::format("{}", v)); }
  void add_extra(std::string key, std::string_view v);
};

inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(u));
    } else {
      out += ch;
    }
  }
  out += '"';
  return out;
}

/// A number with `decimals` digits after the point; null when not finite.
inline std::string json_number(double v, int decimals) {
  if (!std::isfinite(v)) return "null";
  return fmt::format("{:.{}f}", v, decimals);
}

inline void result::add_extra(std::string key, std::string_view v) {
  extra.emplace_back(std::move(key), json_string(v));
}

/// An extra numeric field with `decimals` digits after the point.
inline void add_number(result& r, std::string key, double v, int decimals) {
  r.extra.emplace_back(std::move(key), json_number(v, decimals));
}

/// Where a bench's cases hand their results.
using emit_fn = std::function<void(result&)>;

/// --samples PREFIX: where fill() writes every recorded sample (one number
/// a line, in recording order) for offline analysis; empty: nowhere.
inline std::string& samples_prefix() {
  static std::string prefix;
  return prefix;
}

inline void write_samples(const std::string& path, const std::vector<double>& samples) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    fmt::print(stderr, "cannot write {}\n", path);
    return;
  }
  for (double v : samples) fmt::print(f, "{:.1f}\n", v);
  std::fclose(f);
}

/// Fills a result's statistics from an interleaved comparison (r.name must
/// be set: it names the sample files).
inline void fill(result& r, const comparison& c) {
  if (!samples_prefix().empty()) {
    const std::string& file = r.sample_name.empty() ? r.name : r.sample_name;
    write_samples(fmt::format("{}{}.txt", samples_prefix(), file), c.samples_a);
    write_samples(fmt::format("{}{}.baseline.txt", samples_prefix(), file), c.samples_b);
  }
  r.measured = compute_stats(c.samples_a);
  r.base = compute_stats(c.samples_b);
  // Throughput of back-to-back operations: the inverse of the mean time per
  // operation (the clock reads between samples are not counted).
  r.ops_per_s = 1e9 / r.measured.mean;
  r.base_ops_per_s = 1e9 / r.base.mean;
  r.pair_ratios = r.compared == result::compare::mean_rate ? c.pair_mean_ratios : c.pair_ratios;
  if (r.compared != result::compare::p50_time)
    for (double& v : r.pair_ratios) v = 1 / v;
}

/// The result as one line of JSON (no trailing newline).
inline std::string to_json(const result& r) {
  std::string s = "{";
  auto field = [&](std::string_view key, const std::string& encoded) {
    if (s.size() > 1) s += ',';
    s += json_string(key);
    s += ':';
    s += encoded;
  };
  field("bench", json_string(r.bench));
  field("case", json_string(r.name));
  field("op", json_string(r.op));
  field("samples", fmt::format("{}", r.measured.count));
  field("p50_ns", json_number(r.measured.p50, 1));
  field("p99_ns", json_number(r.measured.p99, 1));
  field("p999_ns", json_number(r.measured.p999, 1));
  field("max_ns", json_number(r.measured.max, 1));
  field("mean_ns", json_number(r.measured.mean, 1));
  field("ops_per_s", json_number(r.ops_per_s, 0));
  if (!r.baseline.empty()) {
    field("baseline", json_string(r.baseline));
    field("baseline_p50_ns", json_number(r.base.p50, 1));
    field("baseline_p99_ns", json_number(r.base.p99, 1));
    field("baseline_p999_ns", json_number(r.base.p999, 1));
    field("baseline_ops_per_s", json_number(r.base_ops_per_s, 0));
    field("ratio", json_number(r.ratio(), 3));
    field("pair_ratio_median", json_number(r.pair_ratio_median(), 3));
    std::string arr = "[";
    for (std::size_t i = 0; i < r.pair_ratios.size(); ++i) {
      if (i > 0) arr += ',';
      arr += json_number(r.pair_ratios[i], 3);
    }
    arr += ']';
    field("pair_ratios", arr);
  }
  for (const auto& [key, value] : r.extra) field(key, value);
  s += '}';
  return s;
}

/// Nanoseconds in a short readable form: "3.2 ns", "18.4 us", "1.20 ms".
inline std::string human_ns(double ns) {
  if (!std::isfinite(ns)) return "-";
  if (ns < 1e3) return fmt::format("{:.1f} ns", ns);
  if (ns < 1e6) return fmt::format("{:.2f} us", ns / 1e3);
  return fmt::format("{:.2f} ms", ns / 1e6);
}

inline std::string human_rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.2f} M/s", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f} k/s", per_s / 1e3);
  return fmt::format("{:.0f} /s", per_s);
}

/// Prints one result as a block of the readable report.
inline void print_table(const result& r, std::FILE* out = stdout) {
  fmt::print(out, "\n{} / {}  (one op = {}, {} samples)\n", r.bench, r.name, r.op, r.measured.count);
  fmt::print(out, "  {:<28} {:>11} {:>11} {:>11} {:>12}\n", "", "p50", "p99", "p99.9", "throughput");
  fmt::print(out, "  {:<28} {:>11} {:>11} {:>11} {:>12}\n", r.name, human_ns(r.measured.p50), human_ns(r.measured.p99),
             human_ns(r.measured.p999), human_rate(r.ops_per_s));
  if (!r.baseline.empty()) {
    fmt::print(out, "  {:<28} {:>11} {:>11} {:>11} {:>12}\n", r.baseline, human_ns(r.base.p50), human_ns(r.base.p99),
               human_ns(r.base.p999), human_rate(r.base_ops_per_s));
    std::string pairs;
    for (double v : r.pair_ratios) pairs += fmt::format(" {:.2f}", v);
    fmt::print(out, "  {} {:.3f}   per-pair ratios:{}   median {:.3f}\n", r.ratio_label(), r.ratio(), pairs,
               r.pair_ratio_median());
  }
  for (const auto& [key, value] : r.extra) fmt::print(out, "  {}: {}\n", key, value);
}

/// Prints in the format chosen on the command line, and flushes (the
/// benches fork: nothing may sit in a buffer a child would inherit).
inline void report(const result& r, bool json) {
  if (json) fmt::print("{}\n", to_json(r));
  else print_table(r);
  std::fflush(stdout);
}

// ---- command line -------------------------------------------------------------

struct options {
  bool json = false;
  bool quick = false;
  std::string only;  ///< --case NAME; empty: every case
  /// Values of the bench's own flags (see value_flag), by name without "--".
  std::map<std::string, std::string> values;
};

/// A flag that takes a value, which a bench accepts besides the common ones:
/// `--NAME VALUE` or `--NAME=VALUE`.
struct value_flag {
  std::string name;  ///< without the leading "--"
  std::string help;  ///< e.g. "N  measured pairs of blocks"
};

/// Parses --json, --quick, --case NAME (or --case=NAME), --samples PREFIX,
/// --help, and the bench's own `flags`. Exits on --help (0) and on an
/// unknown argument (2).
inline options parse_options(int argc, char** argv, const std::vector<std::string>& cases, std::string_view usage_name,
                             const std::vector<value_flag>& flags = {}) {
  options o;
  auto usage = [&](std::FILE* to) {
    fmt::print(to, "usage: {} [--json] [--quick] [--case NAME] [--samples PREFIX]", usage_name);
    for (const auto& f : flags) fmt::print(to, " [--{} VALUE]", f.name);
    fmt::print(to, "\n  --samples PREFIX  also write every sample to PREFIX<case>[.baseline].txt\n");
    for (const auto& f : flags) fmt::print(to, "  --{} {}\n", f.name, f.help);
    fmt::print(to, "cases:");
    for (const auto& c : cases) fmt::print(to, " {}", c);
    fmt::print(to, "\n");
  };
  // --NAME VALUE or --NAME=VALUE for one of `flags`; advances i.
  auto take_value = [&](std::string_view a, int& i) {
    for (const auto& f : flags) {
      const std::string dashed = "--" + f.name;
      if (a == dashed && i + 1 < argc) {
        o.values[f.name] = argv[++i];
        return true;
      }
      if (a.size() > dashed.size() && a.substr(0, dashed.size()) == dashed && a[dashed.size()] == '=') {
        o.values[f.name] = std::string(a.substr(dashed.size() + 1));
        return true;
      }
    }
    return false;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--json") {
      o.json = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--case" && i + 1 < argc) {
      o.only = argv[++i];
    } else if (a.rfind("--case=", 0) == 0) {
      o.only = std::string(a.substr(7));
    } else if (a == "--samples" && i + 1 < argc) {
      samples_prefix() = argv[++i];
    } else if (take_value(a, i)) {
      // one of the bench's own flags
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      fmt::print(stderr, "unknown argument: {}\n", a);
      usage(stderr);
      std::exit(2);
    }
  }
  if (!o.only.empty() && std::find(cases.begin(), cases.end(), o.only) == cases.end()) {
    fmt::print(stderr, "unknown case: {}\n", o.only);
    usage(stderr);
    std::exit(2);
  }
  return o;
}

// ---- shared by the bench programs --------------------------------------------

/// Exits 77 where the kernel refuses io_uring (seccomp, old kernels).
inline void skip_without_io_uring() {
  io_uring ring;
  if (int r = io_uring_queue_init(4, &ring, 0); r < 0) {
    if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
      std::fprintf(stderr, "io_uring unavailable (%s): skipping\n", std::strerror(-r));
      std::exit(77);
    }
  } else {
    io_uring_queue_exit(&ring);
  }
}

/// The value of `--KEY N` (a positive integer), or `fallback`; exits 2 on a bad value.
inline std::uint64_t parse_count(const options& o, const std::string& key, std::uint64_t fallback) {
  auto it = o.values.find(key);
  if (it == o.values.end()) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(it->second.c_str(), &end, 0);
  if (end == it->second.c_str() || *end != '\0' || v == 0) {
    std::fprintf(stderr, "--%s: not a positive number: %s\n", key.c_str(), it->second.c_str());
    std::exit(2);
  }
  return v;
}

/// The plan of a case: `quick` for --quick (the smoke run), else `full`;
/// --pairs N (settings.pairs != 0) overrides the number of pairs.
template <class Settings>
plan plan_for(const Settings& s, plan full, plan quick) {
  plan p = s.quick ? quick : full;
  if (s.pairs != 0) p.pairs = s.pairs;
  return p;
}

/// Adds 1 to an eventfd with write(2) (the raw wake-up the benches hold
/// channels and the scheduler against); throws on failure.
inline void eventfd_add_one(int fd) {
  const std::uint64_t one = 1;
  ssize_t r;
  do r = ::write(fd, &one, sizeof one);
  while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(sizeof one)) throw std::runtime_error(fmt::format("write: {}", std::strerror(errno)));
}

// ---- disturbance -------------------------------------------------------------

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU
/// (the second field of /proc/thread-self/schedstat); -1 where the kernel
/// does not say. On these 2-vCPU machines any other busy task takes a
/// pinned, spinning process's CPU in time slices of up to 4 ms, each landing
/// in one sample: a few of them move a mean rate by more than the protocol
/// differences measured (a program started beside the bench, such as the
/// next stage of a shell pipeline, halved the 4 KiB rates). The benches
/// report this wait with each result, so that a disturbed run shows.
inline std::int64_t cpu_wait_ns() noexcept {
  std::FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
  if (f == nullptr) return -1;
  unsigned long long on_cpu = 0, waiting = 0;
  const int n = std::fscanf(f, "%llu %llu", &on_cpu, &waiting);
  std::fclose(f);
  return n == 2 ? static_cast<std::int64_t>(waiting) : -1;
}

/// cpu_wait_ns() since `start`, a value it returned (-1 where unknown).
inline std::int64_t cpu_wait_since(std::int64_t start) noexcept {
  const std::int64_t now = cpu_wait_ns();
  return start < 0 || now < 0 ? -1 : now - start;
}

/// Adds a wait from cpu_wait_since() to `r` in milliseconds (null where
/// unknown).
inline void add_cpu_wait(result& r, std::string key, std::int64_t ns) {
  add_number(r, std::move(key), ns < 0 ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(ns) / 1e6, 3);
}

/// Pins the calling process to one CPU; false where that is refused.
inline bool pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

/// Nanoseconds per turn of a fixed single-thread loop on the calling
/// thread's CPU (integer arithmetic, L1 loads and stores, a 64-byte copy, a
/// data-dependent branch): the best of five runs of about 0.3 ms.
inline double cpu_probe_ns() noexcept {
  constexpr int turns = 200'000;
  alignas(64) std::uint64_t words[512] = {};
  double best = 1e300;
  for (int run = 0; run < 5; ++run) {
    const std::int64_t t0 = now_ns();
    std::uint64_t x = 1, acc = 0;
    for (int i = 0; i < turns; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      std::uint64_t& w = words[(x >> 40) & 511];
      acc += w;
      w = acc ^ x;
      if ((acc & 1) != 0) acc += 3;
      else acc ^= x;
      std::uint64_t line[8];
      std::memcpy(line, &words[(static_cast<unsigned>(i) * 8) & 511], sizeof line);
      do_not_optimize(line);
    }
    do_not_optimize(acc);
    best = std::min(best, static_cast<double>(now_ns() - t0) / turns);
  }
  return best;
}

/// How many times slower CPU `a` runs cpu_probe_ns() than CPU `b` right now
/// (1: equally fast). The host may slow one vCPU for seconds to minutes,
/// for reasons the guest cannot see, and a stream between processes pinned
/// to the two then runs in another regime (docs/BENCHMARKS.md, the twelfth
/// round). Leaves the calling thread pinned to `a`; NaN where pinning is
/// refused.
inline double cpu_slowdown(int a, int b) {
  if (!pin_to_cpu(b)) return std::numeric_limits<double>::quiet_NaN();
  const double on_b = cpu_probe_ns();
  if (!pin_to_cpu(a)) return std::numeric_limits<double>::quiet_NaN();
  return cpu_probe_ns() / on_b;
}

/// cpu_slowdown(0, 1) taken before and after a case between processes
/// pinned to CPUs 0 and 1, as `cpu0_slowdown_before` / `_after`.
inline void add_slowdown(result& r, double before, double after) {
  add_number(r, "cpu0_slowdown_before", before, 3);
  add_number(r, "cpu0_slowdown_after", after, 3);
}

}  // namespace shmbus::bench
