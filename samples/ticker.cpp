// ticker: typed publish/subscribe between unrelated processes on a bus.
//
//   ticker watch BUS [COUNT]      print ticks as they arrive (asleep in between)
//   ticker publish BUS [COUNT]    publish COUNT ticks, one every 20 ms
//   ticker demo [COUNT]           a publisher and two watchers in three processes
//
// Run `ticker watch market` in one terminal and `ticker publish market` in
// another: no daemon, the bus is created by whoever comes first.
#include <shmbus/shmbus.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct tick {
  std::uint64_t id;
  double price;
  char symbol[8];
  static constexpr std::string_view shmbus_type_name = "samples.ticker.tick";
};

shmbus::task<void> publish(shmbus::scheduler& s, shmbus::bus& bus, std::uint64_t count) {
  auto pub = bus.publisher<tick>("ticks");
  for (std::uint64_t i = 0; i < count; ++i) {
    co_await pub.publish(tick{i, 100.0 + 0.25 * static_cast<double>(i % 16), "ACME"});
    co_await s.sleep_for(20ms);
  }
}

shmbus::task<void> watch(shmbus::bus& bus, std::uint64_t count, int ready_fd) {
  // Event mode: between ticks this process sleeps on its eventfd.
  auto sub = bus.subscriber<tick>("ticks", {.spin = 0ns});
  if (ready_fd >= 0) {
    (void)::write(ready_fd, "r", 1);
    ::close(ready_fd);
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    auto t = co_await sub.next();
    fmt::print("[pid {}] tick {} {} {:.2f}{}\n", ::getpid(), t->id, t->symbol, t->price,
               t.missed() ? fmt::format(" ({} missed)", t.missed()) : "");
    std::fflush(stdout);
  }
}

int demo(const char* self, std::uint64_t count) {
  const std::string bus_name = fmt::format("ticker-demo-{}", ::getpid());
  auto bus = shmbus::bus::open(bus_name);
  (void)bus.publisher<tick>("ticks");  // create the channel before anyone watches
  std::vector<pid_t> watchers;
  for (int w = 0; w < 2; ++w) {
    int ready[2];
    if (::pipe(ready) != 0) return 1;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(ready[0]);
      const std::string fd = std::to_string(ready[1]);
      const std::string n = std::to_string(count);
      ::execl(self, self, "watch", bus_name.c_str(), n.c_str(), fd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(ready[1]);
    char c = 0;
    if (::read(ready[0], &c, 1) != 1) return 1;  // subscribed: it will see every tick
    ::close(ready[0]);
    watchers.push_back(pid);
  }
  fmt::print("[pid {}] publishing {} ticks on bus '{}' to 2 watcher processes\n", ::getpid(), count, bus_name);
  std::fflush(stdout);
  shmbus::scheduler s;
  s.run(publish(s, bus, count));
  int failures = 0;
  for (pid_t pid : watchers) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
  }
  for (const auto& c : bus.channels())
    fmt::print("channel '{}': {} messages published, type {}\n", c.name, c.stats.published, c.type_name);
  shmbus::bus::remove(bus_name);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "demo") return demo(argv[0], argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 5);
    if ((mode == "watch" || mode == "publish") && argc > 2) {
      const std::uint64_t count = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 100;
      auto bus = shmbus::bus::open(argv[2]);
      shmbus::scheduler s;
      if (mode == "watch") s.run(watch(bus, count, argc > 4 ? std::atoi(argv[4]) : -1));
      else s.run(publish(s, bus, count));
      return 0;
    }
    fmt::print(stderr, "usage: ticker watch BUS [COUNT] | ticker publish BUS [COUNT] | ticker demo [COUNT]\n");
    return 2;
  } catch (const shmbus::error& e) {
    fmt::print(stderr, "ticker: {}\n", e.what());
    return 1;
  }
}
