// Channels between real processes, through the public API: subscribers
// asleep on their doorbells in other processes, held-back publishers,
// SIGKILLed subscribers and publishers, a SIGSTOPped publisher that must
// not be taken for dead, a SIGSTOPped subscriber that must not hold up a
// publisher's first wake-up of it. The other processes are tests/support/channel_helper
// (fork + exec), on a channel in /dev/shm created here.
#include <shmbus/channel.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/timeout.hpp>

#include "channel_records.hpp"
#include "child_process.hpp"
#include "core/sanitizers.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using shmbus::task;
using shmbus::test::helper_process;

namespace {

std::string helper_path() { return shmbus::test::program_from_env("SHMBUS_CHANNEL_HELPER"); }

/// A channel in /dev/shm for the duration of a test.
struct shared_channel {
  std::string name;
  shmbus::channel ch;
  shared_channel(std::string_view what, const shmbus::channel_options& o)
      : name(fmt::format("shmbus-test-{}-{}", ::getpid(), what)) {
    shmbus::region::unlink_shm(name);
    auto r = shmbus::region::create_shm(name, shmbus::channel::region_size(o, {}));
    ch = shmbus::channel::create(std::move(r), o, {}, name);
  }
  ~shared_channel() { shmbus::region::unlink_shm(name); }
};

#if defined(SHMBUS_TSAN)
constexpr std::uint64_t per_publisher = 20'000;
#elif defined(SHMBUS_ASAN)
constexpr std::uint64_t per_publisher = 200'000;
#else
constexpr std::uint64_t per_publisher = 1'000'000;
#endif

}  // namespace

TEST_CASE("4 publisher processes, 3 subscriber processes: every message, in order, checked", "[channel][processes]") {
  // Pure event mode; spin then park; spin with 2 us between looks, then park.
  const auto [spin, backoff] =
      GENERATE(std::pair<std::string, std::string>{"0", "0"}, std::pair<std::string, std::string>{"20000", "0"},
               std::pair<std::string, std::string>{"20000", "2000"});
  shmbus::channel_options o;
  o.capacity = 1 << 16;  // small: publishers are held back often
  o.max_message = shmbus::test::max_record_length;
  shared_channel sc("many", o);
  const std::string count = std::to_string(per_publisher);
  std::vector<std::unique_ptr<helper_process>> subs, pubs;
  for (int i = 0; i < 3; ++i) {
    subs.push_back(std::make_unique<helper_process>(
        std::vector<std::string>{helper_path(), "subscribe", sc.name, "4", count, spin, backoff}));
    REQUIRE(subs.back()->read_line() == "ready");
  }
  for (int i = 0; i < 4; ++i)
    pubs.push_back(std::make_unique<helper_process>(
        std::vector<std::string>{helper_path(), "publish", sc.name, std::to_string(i), count}));
  for (auto& p : pubs) CHECK(p->wait() == 0);
  for (auto& s : subs) CHECK(s->wait() == 0);
  CHECK(sc.ch.stats().published == 4 * per_publisher);
}

TEST_CASE("publishers that join and leave beside one alone: every message, in order, checked", "[channel][processes]") {
  // A publisher alone claims without the CAS; each one that joins must
  // wait out such a claim (docs/LAYOUT.md section 9). Two helpers make a
  // new publisher every 100 records, while a third publishes throughout.
  shmbus::channel_options o;
  o.capacity = 1 << 16;
  o.max_message = shmbus::test::max_record_length;
  shared_channel sc("churn", o);
  const std::uint64_t per = per_publisher / 4;
  const std::string count = std::to_string(per);
  helper_process sub({helper_path(), "subscribe", sc.name, "3", count, "0"});
  REQUIRE(sub.read_line() == "ready");
  helper_process steady({helper_path(), "publish", sc.name, "0", count});
  helper_process churn1({helper_path(), "churn", sc.name, "1", count, "100"});
  helper_process churn2({helper_path(), "churn", sc.name, "2", count, "100"});
  CHECK(steady.wait() == 0);
  CHECK(churn1.wait() == 0);
  CHECK(churn2.wait() == 0);
  CHECK(sub.wait() == 0);
  CHECK(sc.ch.stats().published == 3 * per);
}

TEST_CASE("no wake-up is lost while a streaming publisher commits without fences", "[channel][processes]") {
  // The helper publishes bursts and waits for an acknowledgement after
  // each; both sides sleep in pure event mode with no periodic wake-ups,
  // so a lost wake-up hangs the test. Within a burst the helper pauses
  // briefly between records, so this subscriber often catches up and
  // parks just as the publisher, past 64 quiet commits, stops fencing
  // (docs/LAYOUT.md section 13).
  shmbus::channel_options o;
  o.max_message = shmbus::test::max_record_length;
  shared_channel data("bursts", o);
  shared_channel acks("acks", o);
  const std::uint64_t bursts = per_publisher / 250;
  const std::uint64_t seed = static_cast<std::uint64_t>(::getpid());
  shmbus::byte_subscriber sub(data.ch, {.spin = 0ns, .liveness_check = std::chrono::hours(24)});
  helper_process helper({helper_path(), "bursts", data.name, acks.name, "0", std::to_string(bursts), std::to_string(seed)});
  REQUIRE(helper.read_line() == "ready");
  shmbus::byte_publisher ack(acks.ch);
  shmbus::scheduler s;
  auto receive = [&]() -> task<std::string> {
    shmbus::test::record_checker check(1);
    shmbus::test::burst_sizes sizes(seed);
    std::uint64_t total = 0;
    for (std::uint64_t b = 0; b < bursts; ++b) {
      for (std::uint32_t n = sizes(); n > 0; --n, ++total) {
        auto m = co_await sub.next();
        if (const char* why = check(m.data)) co_return fmt::format("message {}: {}", total, why);
      }
      const std::uint64_t burst = b;
      co_await ack.publish(std::as_bytes(std::span(&burst, 1)));
    }
    co_return fmt::format("{} messages", total);
  };
  const std::string outcome = s.run(receive());
  CHECK(outcome.find("messages") != std::string::npos);
  INFO(outcome);
  CHECK(helper.wait() == 0);
  CHECK(sub.missed() == 0);
}

TEST_CASE("a SIGKILLed subscriber stops holding a blocked publisher back", "[channel][processes][liveness]") {
  shmbus::channel_options o;
  o.capacity = 4096;
  o.max_message = 64;
  shared_channel sc("dead-subscriber", o);
  helper_process holder({helper_path(), "hold", sc.name});
  REQUIRE(holder.read_line() == "ready");
  shmbus::byte_publisher pub(sc.ch, {.liveness_check = 20ms});
  const std::array<std::byte, 64> message{};
  int published = 0;
  while (pub.try_publish(message) == shmbus::publish_status::ok) ++published;
  REQUIRE(published > 0);
  CHECK(pub.try_publish(message) == shmbus::publish_status::would_block);
  holder.kill(SIGKILL);
  shmbus::scheduler s;
  auto publish_more = [&]() -> task<int> {
    for (int i = 0; i < 3 * published; ++i) co_await pub.publish(message);  // would wait forever on the dead
    co_return 3 * published;
  };
  CHECK(s.run(publish_more()) == 3 * published);
  CHECK(sc.ch.stats().subscribers == 0);
}

TEST_CASE("a publisher SIGKILLed between claim and commit does not stall the channel", "[channel][processes][liveness]") {
  shmbus::channel_options o;
  o.max_message = shmbus::test::max_record_length;
  shared_channel sc("dead-publisher", o);
  shmbus::byte_subscriber sub(sc.ch, {.spin = 0ns, .liveness_check = 20ms});
  helper_process claimer({helper_path(), "claim", sc.name});
  REQUIRE(claimer.read_line() == "claimed");
  shmbus::byte_publisher pub(sc.ch);
  std::vector<std::byte> buffer(shmbus::test::max_record_length);
  REQUIRE(pub.try_publish(shmbus::test::make_record(buffer, 1, 0)) == shmbus::publish_status::ok);
  CHECK_FALSE(sub.try_next());  // stuck behind the claim
  claimer.kill(SIGKILL);
  shmbus::scheduler s;
  auto read_one = [&]() -> task<shmbus::test::record_head> {
    auto m = co_await sub.next();
    shmbus::test::record_head h{};
    std::memcpy(&h, m.data.data(), sizeof h);
    co_return h;
  };
  const auto head = s.run(read_one());
  CHECK(head.publisher == 1);
  CHECK(head.sequence == 0);
  CHECK(sub.missed() == 0);
}

TEST_CASE("a stopped publisher is never taken for dead; its late commit is delivered", "[channel][processes][liveness]") {
  shmbus::channel_options o;
  o.max_message = shmbus::test::max_record_length;
  shared_channel sc("stopped-publisher", o);
  shmbus::byte_subscriber sub(sc.ch, {.spin = 0ns, .liveness_check = 10ms});
  helper_process claimer({helper_path(), "claim", sc.name});
  REQUIRE(claimer.read_line() == "claimed");
  shmbus::test::stop_and_wait(claimer.pid());
  shmbus::byte_publisher pub(sc.ch);
  std::vector<std::byte> buffer(shmbus::test::max_record_length);
  REQUIRE(pub.try_publish(shmbus::test::make_record(buffer, 1, 0)) == shmbus::publish_status::ok);
  shmbus::scheduler s;
  // Many liveness checks pass while the claimer is stopped: it must not be
  // repaired (nothing is delivered, the wait ends by its timeout).
  auto next_message = [&]() -> task<shmbus::byte_message> { co_return co_await sub.next(); };
  auto wait_a_while = [&]() -> task<bool> {
    try {
      (void)co_await shmbus::with_timeout(s, 200ms, next_message());
      co_return true;
    } catch (const shmbus::error& e) {
      if (e.code() != shmbus::errc::timed_out) throw;
      co_return false;
    }
  };
  CHECK_FALSE(s.run(wait_a_while()));
  REQUIRE(::kill(claimer.pid(), SIGCONT) == 0);
  claimer.write_line("commit");
  REQUIRE(claimer.read_line() == "committed");
  auto read_two = [&]() -> task<std::vector<std::uint32_t>> {
    std::vector<std::uint32_t> from;
    for (int i = 0; i < 2; ++i) {
      auto m = co_await sub.next();
      shmbus::test::record_head h{};
      std::memcpy(&h, m.data.data(), sizeof h);
      from.push_back(h.publisher);
    }
    co_return from;
  };
  CHECK(s.run(read_two()) == std::vector<std::uint32_t>{9, 1});
  claimer.close_stdin();
  CHECK(claimer.wait() == 0);
}

TEST_CASE("waking a stopped subscriber for the first time does not wait for it", "[channel][processes][liveness]") {
  // The first wake-up of a subscriber in another process fetches its
  // doorbell from that process. Stopped, it cannot answer; a publisher
  // that fetched on its own thread would wait for the fetch's deadline
  // inside try_publish, then give the wake-up up, and this subscriber,
  // which has no liveness wake-ups, would sleep for good. The fetch runs in
  // the background instead and rings the subscriber once it can.
  shmbus::channel_options o;
  o.max_message = shmbus::test::max_record_length;
  shared_channel sc("stopped-subscriber", o);
  helper_process sleeper({helper_path(), "await_one", sc.name});
  REQUIRE(sleeper.read_line() == "ready");
  while (sc.ch.stats().parked == 0) std::this_thread::yield();  // asleep on its doorbell
  shmbus::test::stop_and_wait(sleeper.pid());
  shmbus::byte_publisher pub(sc.ch);
  std::vector<std::byte> buffer(shmbus::test::max_record_length);
  const auto rec = shmbus::test::make_record(buffer, 1, 0);
  REQUIRE(pub.try_publish(rec) == shmbus::publish_status::ok);
  CHECK(sc.ch.stats().parked == 0);  // taken: the ring is on its way
  REQUIRE(::kill(sleeper.pid(), SIGCONT) == 0);
  CHECK(sleeper.read_line() == fmt::format("got {}", rec.size()));
  CHECK(sleeper.wait() == 0);
}
