// channel_helper: the "other process" of tests/integration/test_channel_processes.cpp.
// It opens the channel /dev/shm/NAME created by the test, through the
// public channel API, and reports on stdout, one line per event.
//
//   channel_helper publish NAME ID COUNT
//       publishes COUNT records (co_await publish: waits for room), exits 0.
//   channel_helper subscribe NAME PUBLISHERS COUNT SPIN_NS
//       subscribes (prints "ready"), reads PUBLISHERS * COUNT records with
//       co_await next() and checks each: per-publisher order, no loss, no
//       duplicate, length, checksum and filler bytes. Exits 0 if all good.
//   channel_helper hold NAME
//       subscribes, prints "ready", then reads nothing until stdin closes.
//   channel_helper claim NAME
//       claims room for one record (a loan), prints "claimed", waits for a
//       line on stdin, commits it as record {ID 9, sequence 0}, prints
//       "committed", waits for stdin to close.
#include <shmbus/channel.hpp>
#include <shmbus/scheduler.hpp>

#include "channel_records.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

using namespace shmbus::test;

shmbus::channel open_channel(const char* name) {
  return shmbus::channel::attach(shmbus::region::open_shm(name), nullptr, name);
}

void say(const char* line) {
  std::printf("%s\n", line);
  std::fflush(stdout);
}

void wait_line() {
  char line[32];
  (void)std::fgets(line, sizeof line, stdin);
}

void wait_eof() {
  char c;
  while (::read(0, &c, 1) > 0) {
  }
}

shmbus::task<int> publish(shmbus::byte_publisher& pub, std::uint32_t id, std::uint64_t count) {
  std::vector<std::byte> buffer(max_record_length);
  for (std::uint64_t s = 0; s < count; ++s) co_await pub.publish(make_record(buffer, id, s));
  co_return 0;
}

shmbus::task<int> subscribe(shmbus::byte_subscriber& sub, std::uint32_t publishers, std::uint64_t count) {
  record_checker check(publishers);
  for (std::uint64_t total = 0; total < publishers * count; ++total) {
    auto m = co_await sub.next();
    if (const char* why = check(m.data)) {
      std::fprintf(stderr, "channel_helper: message %llu: %s\n", static_cast<unsigned long long>(total), why);
      co_return 20;
    }
  }
  if (sub.missed() != 0) co_return 21;
  co_return check.complete(count) ? 0 : 22;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 2 ? argv[1] : "";
    if (mode == "publish" && argc == 5) {
      shmbus::scheduler s;
      shmbus::byte_publisher pub(open_channel(argv[2]));
      return s.run(publish(pub, static_cast<std::uint32_t>(std::atoi(argv[3])), std::strtoull(argv[4], nullptr, 10)));
    }
    if (mode == "subscribe" && argc == 6) {
      shmbus::scheduler s;
      shmbus::subscriber_options o;
      o.spin = std::chrono::nanoseconds(std::strtoll(argv[5], nullptr, 10));
      shmbus::byte_subscriber sub(open_channel(argv[2]), o);
      say("ready");
      return s.run(subscribe(sub, static_cast<std::uint32_t>(std::atoi(argv[3])), std::strtoull(argv[4], nullptr, 10)));
    }
    if (mode == "hold" && argc == 3) {
      shmbus::byte_subscriber sub(open_channel(argv[2]));
      say("ready");
      wait_eof();
      return 0;
    }
    if (mode == "claim" && argc == 3) {
      shmbus::byte_publisher pub(open_channel(argv[2]));
      std::vector<std::byte> buffer(max_record_length);
      const auto rec = make_record(buffer, 9, 0);
      auto loan = pub.try_loan(static_cast<std::uint32_t>(rec.size()));
      if (!loan) return 30;
      say("claimed");
      wait_line();
      std::memcpy(loan.data().data(), rec.data(), rec.size());
      loan.commit();
      say("committed");
      wait_eof();
      return 0;
    }
    std::fprintf(stderr, "usage: channel_helper publish|subscribe|hold|claim NAME ...\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "channel_helper: %s\n", e.what());
    return 3;
  }
}
