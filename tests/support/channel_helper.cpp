// channel_helper: the "other process" of tests/integration/test_channel_processes.cpp.
// It opens the channel /dev/shm/NAME created by the test, through the
// public channel API, and reports on stdout, one line per event.
//
//   channel_helper publish NAME ID COUNT
//       publishes COUNT records (co_await publish: waits for room), exits 0.
//   channel_helper subscribe NAME PUBLISHERS COUNT SPIN_NS [BACKOFF_NS]
//       subscribes (prints "ready"), reads PUBLISHERS * COUNT records with
//       co_await next() and checks each: per-publisher order, no loss, no
//       duplicate, length, checksum and filler bytes. Exits 0 if all good.
//       Its options: spin = SPIN_NS, spin_backoff = BACKOFF_NS (default 0).
//   channel_helper hold NAME
//       subscribes, prints "ready", then reads nothing until stdin closes.
//   channel_helper churn NAME ID COUNT EVERY
//       publishes COUNT records like publish, through a new publisher every
//       EVERY records (so the others keep seeing publishers join and leave).
//   channel_helper bursts NAME ACK_NAME ID BURSTS SEED
//       subscribes to ACK_NAME (pure event mode, no liveness wake-ups),
//       prints "ready", then publishes BURSTS bursts of 1..300 records (the
//       sizes drawn from SEED, as the test draws them), with a short busy
//       pause of random length after about one record in 32, and after
//       each burst waits for one message on ACK_NAME. A wake-up lost by
//       either side hangs both: nothing else would wake them.
//   channel_helper await_one NAME
//       subscribes in pure event mode with no liveness wake-ups, prints
//       "ready", waits for one message (co_await next()), prints
//       "got LENGTH", exits 0. Only a publisher's ring can wake it.
//   channel_helper claim NAME
//       claims room for one record (a loan), prints "claimed", waits for a
//       line on stdin, commits it as record {ID 9, sequence 0}, prints
//       "committed", waits for stdin to close.
#include <shmbus/channel.hpp>
#include <shmbus/scheduler.hpp>

#include "channel_records.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
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

shmbus::task<int> churn(shmbus::channel ch, std::uint32_t id, std::uint64_t count, std::uint64_t every) {
  std::vector<std::byte> buffer(max_record_length);
  for (std::uint64_t s = 0; s < count;) {
    shmbus::byte_publisher pub(ch);
    for (std::uint64_t k = 0; k < every && s < count; ++k, ++s) co_await pub.publish(make_record(buffer, id, s));
  }
  co_return 0;
}

shmbus::task<int> bursts(shmbus::byte_publisher& pub, shmbus::byte_subscriber& acks, std::uint32_t id,
                         std::uint64_t count, std::uint64_t seed) {
  std::vector<std::byte> buffer(max_record_length);
  burst_sizes sizes(seed);
  std::minstd_rand pauses(static_cast<std::uint32_t>(seed % 2147483646) + 1);
  std::uint64_t s = 0;
  for (std::uint64_t b = 0; b < count; ++b) {
    for (std::uint32_t n = sizes(); n > 0; --n) {
      co_await pub.publish(make_record(buffer, id, s++));
      // Now and then, lets the subscriber catch up and park (mostly after
      // more than 64 records without a park: the publisher then commits
      // without fences), at varying moments.
      std::uint32_t spin = pauses() % 32 == 0 ? pauses() % 20000 : 0;
      while (spin > 0) {
        --spin;
        asm volatile("" : "+r"(spin));  // keeps the loop
      }
    }
    (void)co_await acks.next();
  }
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
    if (mode == "subscribe" && (argc == 6 || argc == 7)) {
      shmbus::scheduler s;
      shmbus::subscriber_options o;
      o.spin = std::chrono::nanoseconds(std::strtoll(argv[5], nullptr, 10));
      if (argc == 7) o.spin_backoff = std::chrono::nanoseconds(std::strtoll(argv[6], nullptr, 10));
      shmbus::byte_subscriber sub(open_channel(argv[2]), o);
      say("ready");
      return s.run(subscribe(sub, static_cast<std::uint32_t>(std::atoi(argv[3])), std::strtoull(argv[4], nullptr, 10)));
    }
    if (mode == "churn" && argc == 6) {
      shmbus::scheduler s;
      return s.run(churn(open_channel(argv[2]), static_cast<std::uint32_t>(std::atoi(argv[3])),
                         std::strtoull(argv[4], nullptr, 10), std::strtoull(argv[5], nullptr, 10)));
    }
    if (mode == "bursts" && argc == 7) {
      shmbus::scheduler s;
      shmbus::byte_publisher pub(open_channel(argv[2]));
      shmbus::byte_subscriber acks(open_channel(argv[3]), {.spin = std::chrono::nanoseconds(0),
                                                           .liveness_check = std::chrono::hours(24)});
      say("ready");
      return s.run(bursts(pub, acks, static_cast<std::uint32_t>(std::atoi(argv[4])), std::strtoull(argv[5], nullptr, 10),
                          std::strtoull(argv[6], nullptr, 10)));
    }
    if (mode == "hold" && argc == 3) {
      shmbus::byte_subscriber sub(open_channel(argv[2]));
      say("ready");
      wait_eof();
      return 0;
    }
    if (mode == "await_one" && argc == 3) {
      shmbus::scheduler s;
      shmbus::byte_subscriber sub(open_channel(argv[2]),
                                  {.spin = std::chrono::nanoseconds(0), .liveness_check = std::chrono::hours(24)});
      say("ready");
      auto one = [&]() -> shmbus::task<std::size_t> { co_return (co_await sub.next()).data.size(); };
      const std::size_t length = s.run(one());
      std::printf("got %zu\n", length);
      std::fflush(stdout);
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
    std::fprintf(stderr, "usage: channel_helper publish|churn|bursts|subscribe|hold|await_one|claim NAME ...\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "channel_helper: %s\n", e.what());
    return 3;
  }
}
