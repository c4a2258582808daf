// Channels in one process: the API's promises (ordering, policies, loans,
// views, drain, type checks, sizes, corruption) and the parking handshake
// between coroutines of one scheduler. Multi-process behaviour is in
// tests/integration/test_channel_processes.cpp.
#include <shmbus/channel.hpp>
#include <shmbus/detail/ring_layout.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/when_all.hpp>

#include "core/time_after.hpp"
#include "ring/ring.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <range/v3/algorithm/for_each.hpp>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using shmbus::task;

namespace {

struct tick {
  std::uint64_t id;
  double price;
  char symbol[8];
  static constexpr std::string_view shmbus_type_name = "test.tick";
};

struct other {
  std::uint64_t id;
  double price;
  char symbol[8];
};

std::string unique(std::string_view what) { return fmt::format("test-channel-{}-{}", ::getpid(), what); }

shmbus::channel typed_channel(std::string_view what, shmbus::channel_options o = {}) {
  return shmbus::channel::create_memfd(unique(what), o, shmbus::payload_type_of<tick>());
}

shmbus::channel byte_channel(std::string_view what, shmbus::channel_options o = {}) {
  return shmbus::channel::create_memfd(unique(what), o, shmbus::payload_type{});
}

std::vector<std::byte> pattern(std::size_t n, std::size_t seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7) & 0xff);
  return v;
}

/// A second mapping of the same channel, as another process would have it.
shmbus::channel reopen(const shmbus::channel& ch, const shmbus::payload_type* expected) {
  return shmbus::channel::attach(shmbus::region::adopt_fd(ch.backing().dup_fd()), expected, "reopened");
}

/// One scheduler, `rounds` ticks: the publisher yields before each one, so
/// the subscriber runs first, finds nothing, spins if its options say so
/// and parks: every tick comes through the doorbell. Returns how many
/// arrived in order.
std::uint64_t publish_to_parked(shmbus::publisher<tick>& pub, shmbus::subscriber<tick>& sub, std::uint64_t rounds) {
  shmbus::scheduler s;
  std::uint64_t received = 0;
  auto consume = [&]() -> task<void> {
    for (std::uint64_t i = 0; i < rounds; ++i) {
      auto t = co_await sub.next();
      if (t->id == i) ++received;
    }
  };
  auto produce = [&]() -> task<void> {
    for (std::uint64_t i = 0; i < rounds; ++i) {
      co_await s.schedule();
      co_await s.schedule();
      co_await pub.publish(tick{i, 0, ""});
    }
  };
  s.run(shmbus::when_all(consume(), produce()));
  return received;
}

}  // namespace

TEST_CASE("typed messages arrive in order with their sequence numbers", "[channel]") {
  auto ch = typed_channel("order");
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> sub(ch);
  CHECK_FALSE(sub.try_next());
  CHECK(sub.try_next().status() == shmbus::receive_status::empty);
  for (std::uint64_t i = 0; i < 1000; ++i) REQUIRE(pub.try_publish(tick{i, 1.5 * double(i), "ACME"}) == shmbus::publish_status::ok);
  for (std::uint64_t i = 0; i < 1000; ++i) {
    auto t = sub.try_next();
    REQUIRE(t);
    CHECK(t->id == i);
    CHECK(t->price == 1.5 * double(i));
    CHECK(std::string_view(t->symbol) == "ACME");
    CHECK(t.sequence() == i);
    CHECK(t.missed() == 0);
  }
  CHECK_FALSE(sub.try_next());
  CHECK(sub.received() == 1000);
}

TEST_CASE("a late subscriber starts at the newest message, or at the oldest if asked", "[channel]") {
  auto ch = typed_channel("late");
  shmbus::publisher<tick> pub(ch);
  for (std::uint64_t i = 0; i < 10; ++i) REQUIRE(pub.try_publish(tick{i, 0, ""}) == shmbus::publish_status::ok);
  shmbus::subscriber<tick> newest(ch);
  shmbus::subscriber<tick> oldest(ch, {.start = shmbus::start_at::oldest});
  REQUIRE(pub.try_publish(tick{10, 0, ""}) == shmbus::publish_status::ok);
  auto n = newest.try_next();
  REQUIRE(n);
  CHECK(n->id == 10);
  for (std::uint64_t i = 0; i <= 10; ++i) {
    auto o = oldest.try_next();
    REQUIRE(o);
    CHECK(o->id == i);
  }
}

TEST_CASE("byte messages of every length up to the maximum, and one byte over is refused", "[channel]") {
  shmbus::channel_options o;
  o.capacity = 1 << 16;
  o.max_message = 1000;
  auto ch = byte_channel("lengths", o);
  shmbus::byte_publisher pub(ch);
  shmbus::byte_subscriber sub(ch);
  for (std::size_t n = 0; n <= 1000; ++n) {
    const auto bytes = pattern(n, n);
    REQUIRE(pub.try_publish(bytes) == shmbus::publish_status::ok);
    auto m = sub.try_next();
    REQUIRE(m);
    REQUIRE(m.data.size() == n);
    if (n > 0) CHECK(std::memcmp(m.data.data(), bytes.data(), n) == 0);
  }
  const auto too_long = pattern(1001, 0);
  CHECK(pub.try_publish(too_long) == shmbus::publish_status::too_large);
  CHECK_FALSE(pub.try_loan(1001));
  shmbus::scheduler s;
  auto publish_too_long = [&]() -> task<void> { co_await pub.publish(too_long); };
  try {
    s.run(publish_too_long());
    FAIL("publishing 1001 bytes on a 1000-byte channel succeeded");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::bad_size);
  }
  CHECK_FALSE(sub.try_next());
}

TEST_CASE("a received message is a view into the ring, valid until the next read", "[channel]") {
  auto ch = byte_channel("view");
  shmbus::byte_publisher pub(ch);
  shmbus::byte_subscriber sub(ch);
  const auto bytes = pattern(100, 1);
  REQUIRE(pub.try_publish(bytes) == shmbus::publish_status::ok);
  auto m = sub.try_next();
  REQUIRE(m);
  const auto* base = ch.backing().bytes().data();
  CHECK(m.data.data() > base);
  CHECK(m.data.data() + m.data.size() <= base + ch.backing().size());
  CHECK(reinterpret_cast<std::uintptr_t>(m.data.data()) % 32 == 0);
}

TEST_CASE("loans: construct in place and commit; a dropped loan is skipped, not missed", "[channel]") {
  auto ch = typed_channel("loan");
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> sub(ch);
  {
    auto l = pub.try_loan();
    REQUIRE(l);
    l.emplace(tick{1, 2.0, "LOAN"});
    CHECK(l.get()->id == 1);
    l.commit();
  }
  { auto dropped = pub.try_loan(); REQUIRE(dropped); }  // never committed
  REQUIRE(pub.try_publish(tick{3, 0, ""}) == shmbus::publish_status::ok);
  auto a = sub.try_next();
  REQUIRE(a);
  CHECK(a->id == 1);
  CHECK(std::string_view(a->symbol) == "LOAN");
  auto b = sub.try_next();
  REQUIRE(b);
  CHECK(b->id == 3);
  CHECK(b.missed() == 0);
  CHECK(sub.missed() == 0);
}

TEST_CASE("a loan moved before its commit keeps its room, across the ring's wrap", "[channel]") {
  // Every field of a claim matters at commit: a padding frame at the wrap
  // sits between where the claim starts and where its frame does. Each
  // loan here is handed on twice (moved, then moved over a live loan,
  // which gives that one up) before it is filled and committed.
  shmbus::channel_options o;
  o.capacity = 8192;
  o.max_message = 1000;
  auto ch = byte_channel("loan-moves", o);
  shmbus::byte_publisher pub(ch);
  shmbus::byte_subscriber sub(ch);
  shmbus::scheduler s;
  auto lend_moved = [&](std::uint32_t n) -> task<shmbus::byte_loan> {
    shmbus::byte_loan first = co_await pub.loan(n);
    shmbus::byte_loan second(std::move(first));
    shmbus::byte_loan third = pub.try_loan(1);  // given up when overwritten
    third = std::move(second);
    co_return third;
  };
  std::uint64_t wraps = 0, last_position = 0;
  for (std::size_t i = 0; i < 300; ++i) {
    const auto n = static_cast<std::uint32_t>((i * 97) % 1001);
    shmbus::byte_loan l = s.run(lend_moved(n));
    REQUIRE(l);
    REQUIRE(l.data().size() == n);
    const auto bytes = pattern(n, i);
    if (n > 0) std::memcpy(l.data().data(), bytes.data(), n);
    l.commit();
    CHECK_FALSE(l);
    auto m = sub.try_next();
    REQUIRE(m);
    REQUIRE(m.data.size() == n);
    if (n > 0) CHECK(std::memcmp(m.data.data(), bytes.data(), n) == 0);
    CHECK(m.sequence == 2 * i);  // the loan given up took the next number
    CHECK(m.missed == 0);
    const auto position = static_cast<std::uint64_t>(m.data.data() - ch.backing().bytes().data());
    if (position < last_position) ++wraps;
    last_position = position;
    CHECK_FALSE(sub.try_next());
  }
  CHECK(wraps > 10);
  CHECK(sub.missed() == 0);
}

TEST_CASE("drain() is a range-v3 view over everything available", "[channel]") {
  auto ch = typed_channel("drain");
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> sub(ch);
  for (std::uint64_t i = 0; i < 100; ++i) REQUIRE(pub.try_publish(tick{i, 0, ""}) == shmbus::publish_status::ok);
  std::vector<std::uint64_t> ids;
  ranges::for_each(sub.drain(), [&](const tick& t) { ids.push_back(t.id); });
  std::vector<std::uint64_t> want(100);
  std::iota(want.begin(), want.end(), 0);
  CHECK(ids == want);
  int more = 0;
  for (const tick& t : sub.drain()) more += static_cast<int>(t.id);
  CHECK(more == 0);
  shmbus::byte_subscriber bytes(reopen(ch, nullptr), {.start = shmbus::start_at::oldest});
  std::size_t n = 0;
  for (const auto& m : bytes.drain()) n += m.data.size() == sizeof(tick) ? 1 : 0;
  CHECK(n == 100);
}

TEST_CASE("block policy: a publisher waits for the slowest subscriber, nothing is lost", "[channel]") {
  shmbus::channel_options o;
  o.capacity = 4096;  // about 60 ticks
  auto ch = typed_channel("block", o);
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> fast(ch, {.spin = 0ns});
  shmbus::subscriber<tick> slow(ch, {.spin = 0ns});
  std::uint64_t refused = 0;
  while (pub.try_publish(tick{refused, 0, ""}) == shmbus::publish_status::ok) ++refused;
  CHECK(refused > 30);
  CHECK(refused < 100);
  for (std::uint64_t i = 0; i < refused; ++i) REQUIRE(fast.try_next());
  CHECK(pub.try_publish(tick{0, 0, ""}) == shmbus::publish_status::would_block);  // slow still holds it

  constexpr std::uint64_t total = 20000;
  shmbus::scheduler s;
  auto produce = [&]() -> task<void> {
    for (std::uint64_t i = refused; i < total; ++i) co_await pub.publish(tick{i, 0, ""});
  };
  auto consume = [&](shmbus::subscriber<tick>& sub, std::uint64_t first) -> task<std::uint64_t> {
    std::uint64_t expect = first;
    while (expect < total) {
      auto t = co_await sub.next();
      if (t->id != expect) co_return expect;
      ++expect;
    }
    co_return expect;
  };
  auto [done, a, b] = s.run(shmbus::when_all(produce(), consume(fast, refused), consume(slow, 0)));
  (void)done;
  CHECK(a == total);
  CHECK(b == total);
  CHECK(fast.missed() == 0);
  CHECK(slow.missed() == 0);
}

TEST_CASE("a subscriber publishes its position a quarter ring at a time, and all of it when idle", "[channel]") {
  shmbus::channel_options o;
  o.capacity = 4096;  // 8-byte messages take 64-byte frames: a quarter ring is 16 of them
  o.max_message = 64;
  auto ch = byte_channel("steps", o);
  const auto frames = shmbus::detail::ring::attach(ch.backing().bytes(), "steps", nullptr);
  shmbus::byte_publisher pub(ch);
  auto sub = std::make_unique<shmbus::byte_subscriber>(ch, shmbus::subscriber_options{.spin = 0ns});
  auto& slot = frames.subscriber(sub->slot());
  const std::array<std::byte, 8> msg{};
  for (int i = 0; i < 40; ++i) REQUIRE(pub.try_publish(msg) == shmbus::publish_status::ok);

  for (int i = 0; i < 10; ++i) REQUIRE(sub->try_next());
  CHECK(slot.position == 0);  // 10 frames read: under a quarter, nothing published yet
  for (int i = 10; i < 20; ++i) REQUIRE(sub->try_next());
  CHECK(slot.position == 16 * 64);  // released up to the frame that crossed the quarter
  CHECK(slot.received == 16);
  for (int i = 20; i < 40; ++i) REQUIRE(sub->try_next());
  CHECK(slot.position == 32 * 64);
  CHECK_FALSE(sub->try_next());  // nothing new: everything read is released
  CHECK(slot.position == 40 * 64);
  CHECK(slot.received == 40);
  CHECK(frames.publisher(pub.slot()).published == 40);

  // A full ring read to its end: three quarters published on the way, the
  // last one by the read that finds nothing.
  std::uint64_t more = 0;
  while (pub.try_publish(msg) == shmbus::publish_status::ok) ++more;
  CHECK(more == 4096 / 64);  // exactly a ring: the published position is all that counts
  for (std::uint64_t i = 0; i < more; ++i) REQUIRE(sub->try_next());
  CHECK(slot.position == (40 + 48) * 64);
  CHECK_FALSE(sub->try_next());
  CHECK(slot.position == (40 + 64) * 64);
  CHECK(slot.received == 104);

  // A slot taken again starts with its own counters.
  const std::uint32_t index = sub->slot();
  sub.reset();
  shmbus::byte_subscriber again(ch);
  REQUIRE(again.slot() == index);
  CHECK(slot.received == 0);
  CHECK(slot.missed == 0);
}

TEST_CASE("overwrite policy: a slow subscriber learns exactly how many it missed", "[channel]") {
  shmbus::channel_options o;
  o.capacity = 4096;
  o.policy = shmbus::overflow_policy::overwrite;
  auto ch = typed_channel("overwrite", o);
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> sub(ch);
  constexpr std::uint64_t total = 10000;
  std::uint64_t seen = 0;
  std::uint64_t missed = 0;
  std::uint64_t last = 0;
  for (std::uint64_t i = 0; i < total; ++i) {
    REQUIRE(pub.try_publish(tick{i, 0, ""}) == shmbus::publish_status::ok);  // never waits
    if (i % 997 == 0) {
      while (auto t = sub.try_next()) {
        ++seen;
        missed += t.missed();
        CHECK(t->id == t.sequence());
        if (seen > 1) CHECK(t->id == last + 1 + t.missed());
        last = t->id;
      }
    }
  }
  while (auto t = sub.try_next()) {
    ++seen;
    missed += t.missed();
    last = t->id;
  }
  CHECK(last == total - 1);
  CHECK(missed > 0);
  CHECK(seen + missed == total);
  CHECK(sub.missed() == missed);
  CHECK(sub.received() == seen);
}

TEST_CASE("event mode: a parked subscriber is woken by a publisher's doorbell", "[channel]") {
  auto ch = typed_channel("event");
  shmbus::publisher<tick> pub(ch);
  shmbus::subscriber<tick> sub(ch, {.spin = 0ns, .liveness_check = 10s});
  CHECK(publish_to_parked(pub, sub, 200) == 200);
}

TEST_CASE("opening a channel with another type or layout fails with a specific error", "[channel]") {
  auto ch = typed_channel("types");
  const auto tick_type = shmbus::payload_type_of<tick>();
  const auto other_type = shmbus::payload_type_of<other>();
  CHECK(other_type.size == tick_type.size);
  CHECK(reopen(ch, &tick_type).type().name == "test.tick");
  try {
    reopen(ch, &other_type);
    FAIL("attached with another type name");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::type_mismatch);
  }
  const shmbus::payload_type bytes{};
  CHECK_THROWS_AS(shmbus::publisher<other>(ch), shmbus::error);
  try {
    shmbus::subscriber<other> s(ch);
    FAIL("subscribed with another type");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::type_mismatch);
  }
  try {
    reopen(ch, &bytes);
    FAIL("attached a typed channel as bytes");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::type_mismatch);
  }

  auto version = reopen(ch, nullptr);
  auto* header = reinterpret_cast<shmbus::detail::layout::channel_header*>(version.backing().data());
  std::atomic_ref<std::uint32_t>(header->version).store(shmbus::detail::layout::channel_version + 1);
  try {
    reopen(ch, &tick_type);
    FAIL("attached a channel of the next layout version");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::version_mismatch);
  }
}

TEST_CASE("a frame with an out-of-range length is reported, never read", "[channel]") {
  auto ch = byte_channel("corrupt");
  shmbus::byte_publisher pub(ch);
  shmbus::byte_subscriber sub(ch);
  REQUIRE(pub.try_publish(pattern(64, 0)) == shmbus::publish_status::ok);
  auto* base = ch.backing().bytes().data();
  const auto* header = reinterpret_cast<const shmbus::detail::layout::channel_header*>(base);
  auto* frame = reinterpret_cast<shmbus::detail::layout::frame_header*>(base + header->ring_offset);
  std::atomic_ref<std::uint32_t>(frame->length).store(0x7fffffff);
  CHECK(sub.try_next().status == shmbus::receive_status::corrupt);
  shmbus::scheduler s;
  auto read_one = [&]() -> task<void> { (void)co_await sub.next(); };
  try {
    s.run(read_one());
    FAIL("next() delivered a corrupt frame");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
  }
}

TEST_CASE("a claim word off a frame boundary is reported, never claimed from", "[channel]") {
  auto ch = byte_channel("misaligned-claim");
  shmbus::byte_publisher alone(ch);
  REQUIRE(alone.try_publish(pattern(64, 0)) == shmbus::publish_status::ok);
  auto* header = reinterpret_cast<shmbus::detail::layout::channel_header*>(ch.backing().bytes().data());
  std::atomic_ref<std::uint64_t> tail(header->tail_position);
  const std::uint64_t scribbled = tail.fetch_add(8) + 8;
  // The lone publisher's straight path and the general claim (two
  // publishers) both refuse, and leave the claim word as it was.
  CHECK(alone.try_publish(pattern(64, 1)) == shmbus::publish_status::corrupt);
  CHECK_FALSE(alone.try_loan(64));
  shmbus::byte_publisher second(ch);
  CHECK(second.try_publish(pattern(64, 2)) == shmbus::publish_status::corrupt);
  CHECK(alone.try_publish(pattern(64, 3)) == shmbus::publish_status::corrupt);
  CHECK(tail.load() == scribbled);
  shmbus::scheduler s;
  auto publish_one = [&]() -> task<void> { co_await second.publish(pattern(64, 4)); };
  try {
    s.run(publish_one());
    FAIL("publish() claimed from a claim word off a frame boundary");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
  }
  // A subscriber that starts there reads nothing from it.
  shmbus::byte_subscriber late(ch);
  CHECK(late.try_next().status == shmbus::receive_status::corrupt);
}

TEST_CASE("a truncated or foreign region is refused", "[channel]") {
  auto small = shmbus::region::create_memfd(unique("small"), 4096);
  CHECK_THROWS_AS(shmbus::channel::attach(std::move(small), nullptr, "small", 10ms), shmbus::error);
  auto junk = shmbus::region::create_memfd(unique("junk"), 1 << 16);
  std::memset(junk.data(), 0x5a, junk.size());
  try {
    shmbus::channel::attach(std::move(junk), nullptr, "junk");
    FAIL("attached junk");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
  }
  auto ch = byte_channel("truncated");
  const std::size_t half = ch.backing().size() / 2;
  auto fd = ch.backing().dup_fd();
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(half)) == 0);
  try {
    shmbus::channel::attach(shmbus::region::adopt_fd(std::move(fd)), nullptr, "truncated");
    FAIL("attached a truncated channel");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
  }
}

TEST_CASE("slots run out with a clear error, and are given back", "[channel]") {
  shmbus::channel_options o;
  o.max_publishers = 2;
  o.max_subscribers = 1;
  auto ch = byte_channel("slots", o);
  {
    shmbus::byte_publisher a(ch), b(ch);
    CHECK_THROWS_AS(shmbus::byte_publisher(ch), shmbus::error);
    shmbus::byte_subscriber s(ch);
    try {
      shmbus::byte_subscriber t(ch);
      FAIL("took a second subscriber slot of one");
    } catch (const shmbus::error& e) {
      CHECK(e.code() == shmbus::errc::would_block);
    }
  }
  shmbus::byte_publisher c(ch);
  shmbus::byte_subscriber t(ch);
  CHECK(ch.stats().publishers == 1);
  CHECK(ch.stats().subscribers == 1);
}

TEST_CASE("spin with a backoff: messages found between looks, and a park when the spin ends", "[channel]") {
  SECTION("a publisher thread keeps a small ring full; the subscriber spins 10 s with 1 us between looks") {
    // It catches up, waits a gap, reads what came meanwhile (the ring
    // holds about 100 ticks, so the publisher is held back too). With the
    // publisher asking for lines ahead always, only while it finds the
    // subscriber behind (every kilobyte in this ring), and never; under
    // the block policy it must keep inside the room it knows free: the
    // ring is only four times the kilobyte it looks ahead.
    using shmbus::prefetch_ahead_mode;
    const auto ahead =
        GENERATE(prefetch_ahead_mode::never, prefetch_ahead_mode::always, prefetch_ahead_mode::when_streaming);
    CAPTURE(ahead);
    constexpr std::uint64_t count = 20'000;
    shmbus::channel_options o;
    o.capacity = 4096;
    auto ch = typed_channel("backoff", o);
    shmbus::subscriber<tick> sub(ch, {.spin = 10s, .spin_backoff = 1us});
    std::thread producer([&] {
      shmbus::scheduler s;
      shmbus::publisher<tick> pub(ch, {.prefetch_ahead = ahead});
      auto produce = [&]() -> task<void> {
        for (std::uint64_t n = 0; n < count; ++n) co_await pub.publish(tick{n, 0, "B"});
      };
      s.run(produce());
    });
    shmbus::scheduler s;
    auto consume = [&]() -> task<std::uint64_t> {
      std::uint64_t in_order = 0;
      for (std::uint64_t n = 0; n < count; ++n) {
        auto t = co_await sub.next();
        if (t->id == n) ++in_order;
      }
      co_return in_order;
    };
    const std::uint64_t in_order = s.run(consume());
    producer.join();
    CHECK(in_order == count);
  }
  SECTION("a backoff longer than the spin ends with the spin: the subscriber parks and is woken") {
    // One thread: the message can only come once the subscriber parks. A
    // gap not cut at the spin's end would hold the thread for good.
    auto ch = typed_channel("backoff_park");
    shmbus::publisher<tick> pub(ch);
    shmbus::subscriber<tick> sub(ch, {.spin = 1ms, .spin_backoff = std::chrono::nanoseconds::max(), .liveness_check = 10s});
    CHECK(publish_to_parked(pub, sub, 20) == 20);
  }
}

TEST_CASE("a spin or backoff of nanoseconds::max() means no deadline, not an overflow", "[channel]") {
  // Channel subscribers and log readers take their spin deadlines from it.
  const auto now = std::chrono::steady_clock::now();
  const auto end = std::chrono::steady_clock::time_point::max();
  CHECK(shmbus::detail::time_after(now, std::chrono::nanoseconds::max()) == end);
  CHECK(shmbus::detail::time_after(now, end - now) == end);
  CHECK(shmbus::detail::time_after(now, 5ms) == now + 5ms);
  CHECK(shmbus::detail::time_after(now, 0ns) == now);
}

TEST_CASE("threads: 2 publishers and 2 parked subscribers, each on its own scheduler", "[channel][threads]") {
  // The parking handshake under ThreadSanitizer: every thread has its own
  // loop; subscribers sleep on doorbells, publishers on a small ring.
  constexpr std::uint64_t per_publisher = 20'000;
  shmbus::channel_options o;
  o.capacity = 4096;
  auto ch = typed_channel("threads", o);
  std::vector<std::unique_ptr<shmbus::subscriber<tick>>> subs;
  for (int i = 0; i < 2; ++i)
    subs.push_back(std::make_unique<shmbus::subscriber<tick>>(ch, shmbus::subscriber_options{.spin = 0ns}));
  std::array<std::uint64_t, 2> bad{};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      shmbus::scheduler s;
      auto consume = [&]() -> task<std::uint64_t> {
        std::array<std::uint64_t, 2> next{};
        std::uint64_t errors = 0;
        for (std::uint64_t n = 0; n < 2 * per_publisher; ++n) {
          auto t = co_await subs[static_cast<std::size_t>(i)]->next();
          const auto from = static_cast<std::size_t>(t->price);
          if (from > 1 || t->id != next[from]++) ++errors;
        }
        co_return errors;
      };
      bad[static_cast<std::size_t>(i)] = s.run(consume());
    });
  }
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      shmbus::scheduler s;
      shmbus::publisher<tick> pub(ch);
      auto produce = [&]() -> task<void> {
        for (std::uint64_t n = 0; n < per_publisher; ++n) co_await pub.publish(tick{n, double(i), "T"});
      };
      s.run(produce());
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad == std::array<std::uint64_t, 2>{0, 0});
}
