// service: two small services in separate processes, in the intended style.
//
//   service sensor BUS [--interval-ms N]          publishes a reading every N ms
//   service aggregator BUS LOGDIR [--window N]    summarises every N readings into a durable log
//
// The sensor publishes `reading`s on the typed channel "readings" (block
// policy: it waits rather than lose one). The aggregator subscribes,
// computes a summary per window of readings and appends it to a durable log
// (each append resumes once on disk), and publishes it on "summaries".
// Both stop cleanly on SIGINT/SIGTERM, read from a signalfd through the
// scheduler: the sensor stops publishing and reports what it sent; the
// aggregator drains every reading still in the channel, writes a last
// partial window, and reports. Nothing is lost between them.
#include <shmbus/shmbus.hpp>

#include <fmt/format.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>
#include <string>

using namespace std::chrono_literals;

namespace {

struct reading {
  std::uint64_t sequence;
  std::int64_t value;
  static constexpr std::string_view shmbus_type_name = "samples.service.reading";
};

struct summary {
  std::uint64_t first;  // sequence of the window's first reading
  std::uint64_t count;
  std::int64_t sum;
  std::int64_t min;
  std::int64_t max;
  static constexpr std::string_view shmbus_type_name = "samples.service.summary";
};

/// A signalfd for SIGINT and SIGTERM (blocked for normal delivery).
shmbus::unique_fd termination_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) shmbus::throw_errno(errno, "sigprocmask", "SIGINT/SIGTERM");
  shmbus::unique_fd fd(::signalfd(-1, &set, SFD_CLOEXEC));
  if (!fd) shmbus::throw_errno(errno, "signalfd", "SIGINT/SIGTERM");
  return fd;
}

/// Resumes when SIGINT or SIGTERM arrives, then stops `stop`.
shmbus::task<void> stop_on_signal(shmbus::scheduler& s, int fd, std::stop_source& stop) {
  std::array<std::byte, sizeof(signalfd_siginfo)> info{};
  co_await shmbus::async_read(s, fd, info);
  stop.request_stop();
}

std::int64_t measure(std::uint64_t i) { return static_cast<std::int64_t>((i * 7919) % 1000) - 500; }

int sensor(const std::string& bus_name, std::chrono::milliseconds interval) {
  shmbus::scheduler s;
  auto bus = shmbus::bus::open(bus_name);
  auto pub = bus.publisher<reading>("readings");
  auto signals = termination_signals();
  std::stop_source stop;
  std::uint64_t sent = 0;
  std::int64_t sum = 0;
  auto run = [&]() -> shmbus::task<void> {
    try {
      for (;; ++sent) {
        co_await s.sleep_for(interval);  // cancelled by the stop token
        co_await pub.publish(reading{sent, measure(sent)});
        sum += measure(sent);
      }
    } catch (const shmbus::error& e) {
      if (e.code() != shmbus::errc::cancelled) throw;
    }
  };
  auto watcher = stop_on_signal(s, signals.get(), stop);
  s.run(shmbus::when_all(std::move(watcher), run().with_stop_token(stop.get_token())));
  fmt::print("sensor: sent {} readings, sum {}\n", sent, sum);
  return 0;
}

int aggregator(const std::string& bus_name, const std::string& log_dir, std::uint64_t window) {
  shmbus::scheduler s;
  auto bus = shmbus::bus::open(bus_name);
  auto readings = bus.subscriber<reading>("readings", {.spin = 0ns});
  auto summaries = bus.publisher<summary>("summaries");
  auto log = shmbus::log<summary>::open(s, log_dir);
  auto signals = termination_signals();
  std::stop_source stop;
  fmt::print("aggregator: ready\n");
  std::fflush(stdout);

  summary current{0, 0, 0, std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()};
  std::uint64_t total = 0;
  std::int64_t total_sum = 0;
  auto add = [&](const reading& r) {
    if (current.count == 0) current.first = r.sequence;
    ++current.count;
    current.sum += r.value;
    current.min = std::min(current.min, r.value);
    current.max = std::max(current.max, r.value);
    ++total;
    total_sum += r.value;
  };
  auto flush = [&]() -> shmbus::task<void> {
    if (current.count == 0) co_return;
    const summary done = current;
    co_await log.append(done);  // durable before it is announced
    co_await summaries.publish(done);
    fmt::print("summary first={} count={} sum={} min={} max={}\n", done.first, done.count, done.sum, done.min, done.max);
    std::fflush(stdout);
    current = {0, 0, 0, std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()};
  };
  auto run = [&]() -> shmbus::task<void> {
    try {
      for (;;) {
        add(*co_await readings.next());
        // A window being written is finished even if a stop arrives meanwhile
        // (an empty, unstoppable token): a summary is logged exactly once.
        if (current.count == window) co_await flush().with_stop_token(std::stop_token{});
      }
    } catch (const shmbus::error& e) {
      if (e.code() != shmbus::errc::cancelled) throw;
    }
  };
  auto watcher = stop_on_signal(s, signals.get(), stop);
  s.run(shmbus::when_all(std::move(watcher), run().with_stop_token(stop.get_token())));
  // Stopped: whatever the sensor published is still in the channel (block
  // policy); take it all, then write the last, partial window.
  auto finish = [&]() -> shmbus::task<void> {
    for (const reading& r : readings.drain()) {
      add(r);
      if (current.count == window) co_await flush();
    }
    co_await flush();
  };
  s.run(finish());
  fmt::print("aggregator: {} readings, sum {}\n", total, total_sum);
  return 0;
}

int usage() {
  fmt::print(stderr, "usage: service sensor BUS [--interval-ms N] | service aggregator BUS LOGDIR [--window N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 2 ? argv[1] : "";
    if (mode == "sensor") {
      std::chrono::milliseconds interval{10};
      if (argc == 5 && std::string(argv[3]) == "--interval-ms") interval = std::chrono::milliseconds(std::atoi(argv[4]));
      else if (argc != 3) return usage();
      return sensor(argv[2], interval);
    }
    if (mode == "aggregator" && argc >= 4) {
      std::uint64_t window = 10;
      if (argc == 6 && std::string(argv[4]) == "--window") window = std::strtoull(argv[5], nullptr, 10);
      else if (argc != 4) return usage();
      return aggregator(argv[2], argv[3], std::max<std::uint64_t>(window, 1));
    }
    return usage();
  } catch (const shmbus::error& e) {
    fmt::print(stderr, "service: {}\n", e.what());
    return 1;
  }
}
