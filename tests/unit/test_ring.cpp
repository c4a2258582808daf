// The frame protocol inside a channel region, driven directly: one process,
// real shared memory (an anonymous shared mapping), and threads for the
// concurrent cases (run under ThreadSanitizer in CI).
#include <shmbus/region.hpp>

#include "core/sanitizers.hpp"
#include "ring/ring.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

using shmbus::detail::claim_status;
using shmbus::detail::read_status;
using shmbus::detail::ring;
using shmbus::detail::ring_cursor;
using shmbus::detail::ring_options;
namespace layout = shmbus::detail::layout;

namespace {

struct test_channel {
  shmbus::region region;
  ring view;

  explicit test_channel(ring_options options) {
    region = shmbus::region::create_anonymous(shmbus::detail::ring_region_size(options, "test"));
    shmbus::detail::ring_initialize(region.bytes(), options, "test");
    view = ring::attach(region.bytes(), "test", nullptr);
  }
};

ring_options small_ring(std::uint32_t policy = layout::policy_block) {
  ring_options o;
  o.capacity = 4096;
  o.max_message = 256;
  o.policy = policy;
  o.publisher_slots = 4;
  o.subscriber_slots = 4;
  return o;
}

/// How a test publishes: a claim, a copy into it and a commit (as a loan
/// does), or publish_copy (as try_publish does).
enum class publish_path : std::uint8_t { claim_and_commit, copy };

/// Publishes `text` through publisher slot `pub`; returns the claim status.
claim_status publish(ring& r, std::uint32_t pub, std::string_view text,
                     publish_path path = publish_path::claim_and_commit) {
  if (path == publish_path::copy) return r.publish_copy(std::as_bytes(std::span(text)), pub);
  ring::claim c;
  const auto status = r.try_claim(static_cast<std::uint32_t>(text.size()), pub, c);
  if (status != claim_status::ok) return status;
  std::memcpy(c.payload, text.data(), text.size());
  r.commit(c, pub);
  return status;
}

/// Reads the next message into `text`.
read_status receive(ring& r, ring_cursor& cursor, std::string& text, std::uint64_t* missed = nullptr) {
  ring::frame f;
  std::uint64_t m = 0;
  const auto status = r.try_read(cursor, f, m);
  if (status != read_status::ok) return status;
  text.assign(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
  if (missed) *missed = m;
  ring::advance(cursor, f);
  return status;
}

/// What the threaded tests publish: who, which, and a checksum of both.
struct record {
  std::uint32_t publisher;
  std::uint32_t reserved;
  std::uint64_t sequence;
  std::uint64_t checksum;
};

std::uint64_t checksum(std::uint32_t p, std::uint64_t s) { return (s * 0x9e3779b97f4a7c15ull) ^ p; }

/// Publishes record `s` of publisher `id` through slot `slot`, if there is
/// room. A record always fits: any other refusal means a broken ring.
claim_status publish_record(ring& r, std::uint32_t slot, std::uint32_t id, std::uint64_t s, publish_path path) {
  const record rec{id, 0, s, checksum(id, s)};
  if (path == publish_path::copy) {
    const auto status = r.publish_copy(std::as_bytes(std::span(&rec, 1)), slot);
    if (status != claim_status::ok && status != claim_status::would_block) std::abort();
    return status;
  }
  ring::claim c;
  const auto status = r.try_claim(sizeof(record), slot, c);
  if (status == claim_status::would_block) return status;
  if (status != claim_status::ok) std::abort();
  std::memcpy(c.payload, &rec, sizeof rec);
  r.commit(c, slot);
  return status;
}

std::string message(int i, std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t k = 0; k < size; ++k) s[k] = static_cast<char>('a' + (i + static_cast<int>(k)) % 26);
  return s;
}

}  // namespace

TEST_CASE("messages of every length from 0 to the maximum go round the ring in order", "[ring]") {
  test_channel ch(small_ring());
  ring& r = ch.view;
  const int pub = r.register_publisher(::getpid(), 1);
  REQUIRE(pub >= 0);
  ring_cursor cursor;
  const int sub = r.register_subscriber(::getpid(), 1, false, cursor);
  REQUIRE(sub >= 0);

  // Both ways of publishing: publish_copy goes straight through where it
  // can and falls back to a claim at every wrap.
  const publish_path path = GENERATE(publish_path::claim_and_commit, publish_path::copy);

  // 257 lengths, 4 KiB ring: wraps many times, with padding frames.
  for (int lap = 0; lap < 3; ++lap) {
    for (std::uint32_t len = 0; len <= r.max_message(); ++len) {
      const std::string sent = message(static_cast<int>(len), len);
      REQUIRE(publish(r, static_cast<std::uint32_t>(pub), sent, path) == claim_status::ok);
      std::string got;
      REQUIRE(receive(r, cursor, got) == read_status::ok);
      REQUIRE(got == sent);
      r.publish_position(static_cast<std::uint32_t>(sub), cursor);
    }
  }
  std::string none;
  CHECK(receive(r, cursor, none) == read_status::empty);
  CHECK(cursor.sequence == 3 * 257);
}

TEST_CASE("a message one byte over the maximum is refused", "[ring]") {
  test_channel ch(small_ring());
  const int pub = ch.view.register_publisher(::getpid(), 1);
  ring::claim c;
  CHECK(ch.view.try_claim(ch.view.max_message() + 1, static_cast<std::uint32_t>(pub), c) == claim_status::too_large);
  CHECK(ch.view.try_claim(ch.view.max_message(), static_cast<std::uint32_t>(pub), c) == claim_status::ok);
  ch.view.commit(c, static_cast<std::uint32_t>(pub));
  const std::string over(ch.view.max_message() + 1, 'x');
  CHECK(publish(ch.view, static_cast<std::uint32_t>(pub), over, publish_path::copy) == claim_status::too_large);
  CHECK(publish(ch.view, static_cast<std::uint32_t>(pub), std::string_view(over).substr(1), publish_path::copy) ==
        claim_status::ok);
}

TEST_CASE("block policy: a full ring refuses until the slowest subscriber reads", "[ring]") {
  test_channel ch(small_ring(layout::policy_block));
  ring& r = ch.view;
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  // publish_copy answers from its cached room while it can, and leaves the
  // rescan that finds the ring full to try_claim.
  const publish_path path = GENERATE(publish_path::claim_and_commit, publish_path::copy);
  auto publish = [&](ring& to, std::uint32_t slot, const std::string& text) { return ::publish(to, slot, text, path); };
  ring_cursor fast;
  ring_cursor slow;
  const auto fast_slot = static_cast<std::uint32_t>(r.register_subscriber(::getpid(), 1, false, fast));
  const auto slow_slot = static_cast<std::uint32_t>(r.register_subscriber(::getpid(), 1, false, slow));

  int sent = 0;
  while (publish(r, pub, message(sent, 100)) == claim_status::ok) ++sent;
  CHECK(sent == 4096 / 160);  // 100 B payload -> 160 B frames
  std::string got;
  for (int i = 0; i < sent; ++i) {
    REQUIRE(receive(r, fast, got) == read_status::ok);
    r.publish_position(fast_slot, fast);
  }
  CHECK(publish(r, pub, message(0, 100)) == claim_status::would_block);  // the slow one holds it
  REQUIRE(receive(r, slow, got) == read_status::ok);
  CHECK(got == message(0, 100));
  r.publish_position(slow_slot, slow);
  CHECK(publish(r, pub, message(sent, 100)) == claim_status::ok);
  // Nothing was lost for the slow subscriber.
  for (int i = 1; i <= sent; ++i) {
    REQUIRE(receive(r, slow, got) == read_status::ok);
    CHECK(got == message(i, 100));
  }
}

TEST_CASE("overwrite policy: a slow subscriber learns exactly how many it missed", "[ring]") {
  test_channel ch(small_ring(layout::policy_overwrite));
  ring& r = ch.view;
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  ring_cursor slow;
  r.register_subscriber(::getpid(), 1, false, slow);

  // Frames of 64 B (32 B payload): 64 fit in the ring. Publish 1000.
  for (int i = 0; i < 1000; ++i) REQUIRE(publish(r, pub, message(i, 32)) == claim_status::ok);
  std::uint64_t received = 0;
  std::uint64_t missed_total = 0;
  std::string got;
  std::uint64_t missed = 0;
  while (receive(r, slow, got, &missed) == read_status::ok) {
    missed_total += missed;
    const std::uint64_t index = slow.sequence - 1;  // the frame just read
    CHECK(got == message(static_cast<int>(index), 32));
    ++received;
  }
  CHECK(missed_total > 0);
  CHECK(received + missed_total == 1000);
  // The tail is at 64,000: the 64 newest frames, from 59,904 on, are still
  // in the ring. The resync hints (one per 64-byte segment here) let the
  // lagging reader resume at the first of them rather than at the lap
  // boundary 61,440, so it receives all 64 and misses 936.
  CHECK(received == 64);
}

namespace {

/// Where each of `count` frames of the given payload sizes starts when
/// they are published one after another from position 0 into a ring of
/// `capacity` bytes (a frame that does not fit before the end of the ring
/// starts on the next lap), and where the tail ends up.
struct frame_starts {
  std::vector<std::uint64_t> start;
  std::uint64_t tail = 0;
};
frame_starts lay_out(const std::vector<std::size_t>& sizes, std::uint64_t capacity) {
  frame_starts f;
  for (const std::size_t size : sizes) {
    const std::uint64_t bytes = layout::frame_size(size);
    const std::uint64_t room = capacity - (f.tail % capacity);
    if (bytes > room) f.tail += room;
    f.start.push_back(f.tail);
    f.tail += bytes;
  }
  return f;
}

}  // namespace

TEST_CASE("overwrite policy: a lagging reader of mixed sizes resumes at the first frame of the oldest segment",
          "[ring]") {
  test_channel ch(small_ring(layout::policy_overwrite));
  ring& r = ch.view;
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  ring_cursor slow;
  r.register_subscriber(::getpid(), 1, false, slow);

  // Sizes that leave padding at the laps' ends and frames across segment
  // boundaries; 64-byte segments in a 4 KiB ring. At least 700 of them,
  // and as many as leave the oldest byte in the middle of a lap, far from
  // the claims that wrap (their hints would do for the others'). Either way
  // of publishing leaves the hints.
  const publish_path path = GENERATE(publish_path::claim_and_commit, publish_path::copy);
  std::vector<std::size_t> sizes;
  for (int i = 0; sizes.size() < 700 || lay_out(sizes, 4096).tail % 4096 < 1024 ||
                  lay_out(sizes, 4096).tail % 4096 > 3072;
       ++i)
    sizes.push_back(std::size_t{5} + static_cast<std::size_t>(i * 37 % 251));
  for (std::size_t i = 0; i < sizes.size(); ++i)
    REQUIRE(publish(r, pub, message(static_cast<int>(i), sizes[i]), path) == claim_status::ok);

  const frame_starts layout = lay_out(sizes, 4096);
  REQUIRE(r.tail_position() == layout.tail);
  // The first segment boundary at or after the oldest byte still in the
  // ring, and the first frame that starts there or later.
  const std::uint64_t boundary = (layout.tail - 4096 + 63) / 64 * 64;
  const auto first = static_cast<std::size_t>(
      std::lower_bound(layout.start.begin(), layout.start.end(), boundary) - layout.start.begin());
  REQUIRE(first < sizes.size());
  REQUIRE(layout.start[first] % 4096 != 0);  // not a lap boundary: only a hint finds it
  REQUIRE(first > 0);
  REQUIRE(layout.start[first - 1] % 4096 != 0);  // the hint's claim, before the boundary, did not wrap

  std::string got;
  std::uint64_t missed = 0;
  REQUIRE(receive(r, slow, got, &missed) == read_status::ok);
  CHECK(missed == first);
  CHECK(got == message(static_cast<int>(first), sizes[first]));
  for (std::size_t i = first + 1; i < sizes.size(); ++i) {
    REQUIRE(receive(r, slow, got, &missed) == read_status::ok);
    CHECK(missed == 0);
    CHECK(got == message(static_cast<int>(i), sizes[i]));
  }
  CHECK(receive(r, slow, got) == read_status::empty);

  // A subscriber that starts at the oldest message starts there too.
  ring_cursor late;
  REQUIRE(r.register_subscriber(::getpid(), 1, true, late) >= 0);
  CHECK(late.position == layout.start[first]);
}

TEST_CASE("a subscriber may start at the oldest message still in the ring", "[ring]") {
  test_channel ch(small_ring(layout::policy_overwrite));
  ring& r = ch.view;
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  for (int i = 0; i < 10; ++i) REQUIRE(publish(r, pub, message(i, 32)) == claim_status::ok);
  ring_cursor late;
  r.register_subscriber(::getpid(), 1, true, late);
  std::string got;
  REQUIRE(receive(r, late, got) == read_status::ok);
  CHECK(got == message(0, 32));
  ring_cursor newest;
  r.register_subscriber(::getpid(), 1, false, newest);
  CHECK(receive(r, newest, got) == read_status::empty);
}

TEST_CASE("opening checks the header and reports what is wrong", "[ring]") {
  test_channel ch(small_ring());
  auto& h = ch.view.header();
  auto expect = [&](shmbus::errc code, std::string_view fragment) {
    try {
      (void)ring::attach(ch.region.bytes(), "ticks", nullptr);
      FAIL("attach succeeded");
    } catch (const shmbus::error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find("ticks") != std::string::npos);
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
  };
  SECTION("magic") {
    h.magic = 42;
    expect(shmbus::errc::region_corrupt, "magic");
  }
  SECTION("version") {
    h.version = 99;
    expect(shmbus::errc::version_mismatch, "99");
  }
  SECTION("capacity not a power of two") {
    h.ring_capacity = 5000;
    expect(shmbus::errc::region_corrupt, "capacity");
  }
  SECTION("slot counts") {
    h.subscriber_slots = 1000;
    expect(shmbus::errc::region_corrupt, "slot");
  }
  SECTION("offsets") {
    h.ring_offset += 4096;
    expect(shmbus::errc::region_corrupt, "offsets");
  }
  SECTION("max message larger than the ring allows") {
    h.max_message = 1u << 30;
    expect(shmbus::errc::region_corrupt, "max message");
  }
  SECTION("truncated region") {
    try {
      (void)ring::attach(ch.region.bytes().first(ch.region.size() - 4096), "ticks", nullptr);
      FAIL("attach succeeded");
    } catch (const shmbus::error& e) {
      CHECK(e.code() == shmbus::errc::region_corrupt);
      CHECK(std::string(e.what()).find("truncated") != std::string::npos);
    }
  }
}

TEST_CASE("opening with another payload type is a type mismatch", "[ring]") {
  ring_options o = small_ring();
  o.type = {8, 8, shmbus::detail::fnv1a_64("tick"), "tick"};
  test_channel ch(o);
  const shmbus::detail::type_fingerprint same{8, 8, shmbus::detail::fnv1a_64("tick"), "tick"};
  const shmbus::detail::type_fingerprint other{16, 8, shmbus::detail::fnv1a_64("order"), "order"};
  CHECK_NOTHROW(ring::attach(ch.region.bytes(), "ticks", &same));
  try {
    (void)ring::attach(ch.region.bytes(), "ticks", &other);
    FAIL("attach succeeded");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::type_mismatch);
    CHECK(std::string(e.what()).find("'tick'") != std::string::npos);
  }
}

TEST_CASE("a slot index past the slots, as a stray bit in shared memory gives one, names no owner", "[ring]") {
  test_channel ch(small_ring());
  ring& r = ch.view;
  ring_cursor cursor;
  REQUIRE(r.register_subscriber(::getpid(), 7, false, cursor) == 0);
  REQUIRE(r.register_publisher(::getpid(), 7) == 0);
  CHECK(r.subscriber_owner(0).pid == ::getpid());
  CHECK(r.publisher_owner(0).pid == ::getpid());
  // Slot 4 of 4 would lie past the slot tables (the next ones, or the ring).
  for (const std::uint32_t stray : {4u, 63u}) {
    CHECK(r.subscriber_owner(stray).pid == 0);
    CHECK(r.subscriber_owner(stray).doorbell_id == 0);
    CHECK(r.publisher_owner(stray).pid == 0);
    CHECK(r.publisher_owner(stray).incarnation == 0);
  }
}

TEST_CASE("a committed frame with an out-of-range length is reported, not read", "[ring]") {
  test_channel ch(small_ring());
  ring& r = ch.view;
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  ring_cursor cursor;
  r.register_subscriber(::getpid(), 1, false, cursor);
  REQUIRE(publish(r, pub, "hello") == claim_status::ok);
  auto* frame = reinterpret_cast<layout::frame_header*>(ch.region.data() + r.header().ring_offset);
  ring::frame f;
  std::uint64_t missed = 0;
  SECTION("longer than the maximum") {
    frame->length = 0x7fffffff;
    CHECK(r.try_read(cursor, f, missed) == read_status::corrupt);
  }
  SECTION("unknown type") {
    frame->type = 77;
    CHECK(r.try_read(cursor, f, missed) == read_status::corrupt);
  }
  SECTION("padding that does not end at the ring's end") {
    frame->type = layout::frame_padding;
    CHECK(r.try_read(cursor, f, missed) == read_status::corrupt);
  }
}

TEST_CASE("threads: 4 publishers, 2 subscribers, block policy, nothing lost or reordered", "[ring][threads]") {
  ring_options o = small_ring(layout::policy_block);
  o.capacity = 1 << 16;
  test_channel ch(o);
  ring& shared_view = ch.view;
  constexpr int publishers = 4;
  constexpr std::uint64_t per_publisher = 20'000;


  // Subscribers register first so that block policy protects them.
  std::array<ring_cursor, 2> cursors;
  std::array<std::uint32_t, 2> slots{};
  for (std::size_t i = 0; i < 2; ++i)
    slots[i] = static_cast<std::uint32_t>(shared_view.register_subscriber(::getpid(), 1, false, cursors[i]));

  std::array<std::uint64_t, 2> bad{};
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      ring r = ring::attach(ch.region.bytes(), "test", nullptr);  // each thread its own view
      std::array<std::uint64_t, publishers> next{};
      std::uint64_t total = 0;
      while (total < publishers * per_publisher) {
        ring::frame f;
        std::uint64_t missed = 0;
        const auto status = r.try_read(cursors[i], f, missed);
        if (status == read_status::empty) {
          std::this_thread::yield();
          continue;
        }
        if (status != read_status::ok || f.payload.size() != sizeof(record) || missed != 0) {
          ++bad[i];
          break;
        }
        record rec;
        std::memcpy(&rec, f.payload.data(), sizeof rec);
        if (rec.publisher >= publishers || rec.sequence != next[rec.publisher] ||
            rec.checksum != checksum(rec.publisher, rec.sequence))
          ++bad[i];
        else
          ++next[rec.publisher];
        ring::advance(cursors[i], f);
        r.publish_position(slots[i], cursors[i]);
        ++total;
      }
    });
  }
  for (std::uint32_t p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      ring r = ring::attach(ch.region.bytes(), "test", nullptr);
      const auto slot = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
      // Half of them as try_publish does, half as loans do.
      const publish_path path = p % 2 == 0 ? publish_path::copy : publish_path::claim_and_commit;
      for (std::uint64_t s = 0; s < per_publisher;) {
        if (publish_record(r, slot, p, s, path) == claim_status::would_block) {
          std::this_thread::yield();
          continue;
        }
        ++s;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad == std::array<std::uint64_t, 2>{0, 0});
  CHECK(cursors[0].sequence == publishers * per_publisher);
  CHECK(cursors[1].sequence == publishers * per_publisher);
}

TEST_CASE("threads: under overwrite, a reader never accepts a payload a newer lap is writing", "[ring][threads]") {
#ifdef SHMBUS_TSAN
  // This test races on purpose: the reader copies payload bytes that a
  // lapping writer may be rewriting, and validates the copy afterwards (the
  // seqlock pattern). ThreadSanitizer reports such a race whatever follows
  // it; the plain and ASan builds run this test.
  WARN("skipped under ThreadSanitizer: the overwrite policy's payload race is deliberate");
  return;
#endif
  // A tiny ring (8 frames of 512 B) and a publisher that laps the reader
  // constantly: every payload that still_valid() accepts must be intact.
  ring_options o = small_ring(layout::policy_overwrite);
  test_channel ch(o);
  constexpr std::uint64_t messages = 100'000;
  constexpr std::uint32_t size = 200;
  std::atomic<bool> done{false};
  std::uint64_t accepted = 0;
  std::uint64_t torn = 0;
  ring_cursor cursor;
  ch.view.register_subscriber(::getpid(), 1, false, cursor);

  std::thread reader([&] {
    ring r = ring::attach(ch.region.bytes(), "test", nullptr);
    std::array<std::byte, size> copy{};
    // Until the publisher is done, and then through the last lap, which
    // nobody overwrites any more: so some frames are always accepted.
    for (;;) {
      const bool finished = done.load(std::memory_order_acquire);
      ring::frame f;
      std::uint64_t missed = 0;
      if (r.try_read(cursor, f, missed) != read_status::ok) {
        if (finished) break;
        continue;
      }
      if (f.payload.size() != size) {
        ++torn;  // a length from another lap passed the checks
        break;
      }
      std::memcpy(copy.data(), f.payload.data(), size);
      if (r.still_valid(f)) {
        ++accepted;
        for (std::byte b : copy)
          if (b != copy[0]) {
            ++torn;
            break;
          }
      }
      ring::advance(cursor, f);
    }
  });
  ring r = ring::attach(ch.region.bytes(), "test", nullptr);
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
  std::uint64_t refused = 0;
  for (std::uint64_t i = 0; i < messages; ++i) {
    ring::claim c;
    if (r.try_claim(size, pub, c) != claim_status::ok) {
      ++refused;  // overwrite policy never refuses
      continue;
    }
    std::memset(c.payload, static_cast<int>(i & 0xff), size);
    r.commit(c, pub);
  }
  done.store(true, std::memory_order_release);
  reader.join();
  CHECK(refused == 0);
  CHECK(torn == 0);
  CHECK(accepted > 0);
}

// ---- claims without a CAS, commits without a fence ---------------------------------------

namespace {

std::uint64_t header_word(const ring& r, std::uint64_t layout::channel_header::*field) {
  return std::atomic_ref<std::uint64_t>(r.header().*field).load();
}

}  // namespace

TEST_CASE("a publisher alone claims without the CAS; one that joins while a loan is out does not wait for it",
          "[ring]") {
  test_channel ch(small_ring());
  ring alone = ch.view;  // each publisher its own view: the mode is per publisher
  ring joiner = ch.view;
  ring_cursor cursor;
  const auto sub = static_cast<std::uint32_t>(ch.view.register_subscriber(::getpid(), 1, false, cursor));
  const auto a = static_cast<std::uint32_t>(alone.register_publisher(::getpid(), 1));
  CHECK(header_word(ch.view, &layout::channel_header::active_publishers) == std::uint64_t{1} << a);
  const bool lone = shmbus::detail::enable_light_barriers() && shmbus::detail::store128_is_atomic();
  CHECK(std::atomic_ref<std::uint32_t>(ch.view.publisher(a).flags).load() == (lone ? layout::publisher_lone_claims : 0u));

  REQUIRE(publish(alone, a, "first") == claim_status::ok);
  // A claim held open (a loan): the joiner registers on the same thread,
  // so it must see that the claim word is already past the claim.
  ring::claim held;
  REQUIRE(alone.try_claim(6, a, held) == claim_status::ok);
  const auto b = static_cast<std::uint32_t>(joiner.register_publisher(::getpid(), 1));
  CHECK(header_word(ch.view, &layout::channel_header::active_publishers) == ((std::uint64_t{1} << a) | (std::uint64_t{1} << b)));
  REQUIRE(publish(joiner, b, "third") == claim_status::ok);
  std::memcpy(held.payload, "second", 6);
  alone.commit(held, a);
  joiner.unregister_publisher(b);
  CHECK(header_word(ch.view, &layout::channel_header::active_publishers) == std::uint64_t{1} << a);
  REQUIRE(publish(alone, a, "fourth") == claim_status::ok);

  for (const char* expected : {"first", "second", "third", "fourth"}) {
    std::string got;
    REQUIRE(receive(ch.view, cursor, got) == read_status::ok);
    CHECK(got == expected);
  }
  std::string none;
  CHECK(receive(ch.view, cursor, none) == read_status::empty);
  CHECK(ch.view.newest().position == cursor.position);
  CHECK(ch.view.newest().sequence == 4);
  ch.view.publish_position(sub, cursor);
}

TEST_CASE("spinning on a commit word ends when the frame is committed, or after its turns", "[ring][threads]") {
  test_channel ch(small_ring());
  ring sub_view = ch.view;
  ring_cursor cursor;
  const int sub = sub_view.register_subscriber(::getpid(), 1, false, cursor);
  REQUIRE(sub >= 0);
  const auto pub = static_cast<std::uint32_t>(ch.view.register_publisher(::getpid(), 1));
  // Nothing there: it gives up after its turns (or at once for none).
  sub_view.spin_on_commit(cursor.position, 0);
  sub_view.spin_on_commit(cursor.position, 64);
  CHECK_FALSE(sub_view.committed_at(cursor.position));
  // Several laps of frames, each committed by another thread while (or
  // before) this one spins with no practical bound on its turns: a loop
  // that missed the commit word would spin for hours and time the test out.
  std::thread publisher([&] {
    for (int i = 0; i < 200; ++i) {
      const std::string text = message(i, static_cast<std::size_t>(i % 97));
      while (publish(ch.view, pub, text, i % 2 == 0 ? publish_path::copy : publish_path::claim_and_commit) ==
             claim_status::would_block) {
      }
    }
  });
  for (int i = 0; i < 200; ++i) {
    std::string got;
    for (;;) {
      sub_view.spin_on_commit(cursor.position, ~0u);
      REQUIRE(sub_view.committed_at(cursor.position));
      // A padding frame at the wrap is committed just before the frame
      // after it: the read may find that one not committed yet.
      const read_status st = receive(sub_view, cursor, got);
      if (st == read_status::ok) break;
      REQUIRE(st == read_status::empty);
    }
    REQUIRE(got == message(i, static_cast<std::size_t>(i % 97)));
    sub_view.publish_position(static_cast<std::uint32_t>(sub), cursor);
  }
  publisher.join();
}

TEST_CASE("a publisher stops fencing its commits after 64 with nobody parked, and fences again for a parked subscriber",
          "[ring]") {
  test_channel ch(small_ring());
  ring pub_view = ch.view;
  ring_cursor cursor;
  const auto sub = static_cast<std::uint32_t>(ch.view.register_subscriber(::getpid(), 1, false, cursor));
  const auto pub = static_cast<std::uint32_t>(pub_view.register_publisher(::getpid(), 1));
  const bool light = shmbus::detail::enable_light_barriers();
  auto send = [&](int i) {
    REQUIRE(publish(pub_view, pub, message(i, 8)) == claim_status::ok);
    const std::uint64_t parked = pub_view.take_parked_subscribers(pub);
    std::string got;
    REQUIRE(receive(ch.view, cursor, got) == read_status::ok);
    ch.view.publish_position(sub, cursor);
    return parked;
  };
  for (int i = 0; i < 63; ++i) CHECK(send(i) == 0);
  CHECK_FALSE(pub_view.commits_unfenced());
  CHECK(send(63) == 0);
  CHECK(pub_view.commits_unfenced() == light);
  CHECK(header_word(ch.view, &layout::channel_header::unfenced_publishers) == (light ? std::uint64_t{1} << pub : 0));

  // The subscriber parks: it runs the heavy barrier, and the next commit
  // finds it, rings it and fences again.
  CHECK(ch.view.park_subscriber(sub));
  CHECK(send(64) == std::uint64_t{1} << sub);
  CHECK_FALSE(pub_view.commits_unfenced());
  CHECK(header_word(ch.view, &layout::channel_header::unfenced_publishers) == 0);
  CHECK(header_word(ch.view, &layout::channel_header::parked_subscribers) == 0);

  // Unregistering while unfenced clears the bit too.
  for (int i = 0; i < 64; ++i) send(100 + i);
  CHECK(pub_view.commits_unfenced() == light);
  pub_view.unregister_publisher(pub);
  CHECK(header_word(ch.view, &layout::channel_header::unfenced_publishers) == 0);
  CHECK(header_word(ch.view, &layout::channel_header::active_publishers) == 0);
}

TEST_CASE("a publisher asks for lines ahead while a subscriber has two or more messages unreleased", "[ring]") {
  // 4 KiB ring: the publisher looks every kilobyte, at 16 frames of 64 B.
  test_channel ch(small_ring());
  ring pub_view = ch.view;
  ring_cursor cursor;
  const auto sub = static_cast<std::uint32_t>(ch.view.register_subscriber(::getpid(), 1, false, cursor));
  const auto pub = static_cast<std::uint32_t>(pub_view.register_publisher(::getpid(), 1));
  // Both commit paths decide: commit_as (a claim, as a loan) and
  // publish_copy's own (try_publish).
  const publish_path path = GENERATE(publish_path::claim_and_commit, publish_path::copy);
  CAPTURE(path == publish_path::copy);
  int sent = 0;
  auto send = [&] { REQUIRE(publish(pub_view, pub, message(sent++, 8), path) == claim_status::ok); };
  std::string got;
  // A ping-pong as the channel's subscriber releases: the message it
  // answered stays unreleased until its next look finds nothing. So at
  // every claim one message is unreleased, never two.
  auto ping_pong = [&](int messages) {
    for (int i = 0; i < messages; ++i) {
      const ring_cursor before = cursor;
      send();
      REQUIRE(receive(ch.view, cursor, got) == read_status::ok);
      CHECK(got == message(sent - 1, 8));
      ch.view.publish_position(sub, before);
    }
  };

  SECTION("when_streaming: on behind a stream, off again after four checks in a ping-pong") {
    pub_view.set_prefetch_ahead(shmbus::detail::ahead_mode::when_streaming);
    CHECK_FALSE(pub_view.prefetching_ahead());
    ping_pong(40);  // 2.5 KiB: past two checks
    CHECK_FALSE(pub_view.prefetching_ahead());
    // Now 20 messages (1.25 KiB, past a check) that nobody reads yet.
    for (int i = 0; i < 20; ++i) send();
    CHECK(pub_view.prefetching_ahead());
    // The subscriber catches up and releases all, then the ping-pong
    // again: three checks that find no stream leave it on (the frames at
    // 4, 5 and 6 KiB), the fourth (7 KiB) turns it off.
    while (receive(ch.view, cursor, got) == read_status::ok) {
    }
    ch.view.publish_position(sub, cursor);
    REQUIRE(cursor.position == 3840);
    ping_pong(48);
    CHECK(pub_view.prefetching_ahead());
    ping_pong(16);
    CHECK_FALSE(pub_view.prefetching_ahead());
  }
  SECTION("always and never do not look") {
    const bool always = GENERATE(true, false);
    pub_view.set_prefetch_ahead(always ? shmbus::detail::ahead_mode::always : shmbus::detail::ahead_mode::never);
    CHECK(pub_view.prefetching_ahead() == always);
    ping_pong(40);
    CHECK(pub_view.prefetching_ahead() == always);
    for (int i = 0; i < 20; ++i) send();
    CHECK(pub_view.prefetching_ahead() == always);
  }
  SECTION("a subscriber that does not know its next sequence says nothing") {
    // One that starts at the oldest frame of a ring that has wrapped:
    // ring_cursor::unknown_sequence until it first releases.
    pub_view.set_prefetch_ahead(shmbus::detail::ahead_mode::when_streaming);
    ping_pong(80);  // 5 KiB: past the end of the ring
    ch.view.unregister_subscriber(sub);
    ring_cursor oldest;
    const auto late = static_cast<std::uint32_t>(ch.view.register_subscriber(::getpid(), 1, true, oldest));
    REQUIRE(oldest.sequence == ring_cursor::unknown_sequence);
    for (int i = 0; i < 20; ++i) send();
    CHECK_FALSE(pub_view.prefetching_ahead());
    ch.view.unregister_subscriber(late);
  }
}

TEST_CASE("threads: publishers that come and go beside one that publishes alone lose and reorder nothing",
          "[ring][threads]") {
  // One publisher publishes throughout; two others register, publish a
  // few records and leave, again and again, so the first keeps switching
  // between claiming alone and claiming by CAS, and between fenced and
  // unfenced commits.
  ring_options o = small_ring(layout::policy_block);
  o.capacity = 1 << 16;
  test_channel ch(o);
  constexpr std::uint32_t publishers = 3;
#ifdef SHMBUS_SANITIZED
  constexpr std::uint64_t per_publisher = 20'000;
#else
  constexpr std::uint64_t per_publisher = 200'000;
#endif
  constexpr std::uint64_t per_visit = 50;


  ring_cursor cursor;
  const auto sub = static_cast<std::uint32_t>(ch.view.register_subscriber(::getpid(), 1, false, cursor));
  std::uint64_t bad = 0;
  std::atomic<bool> failed{false};  // the publishers stop instead of waiting for room forever
  std::thread reader([&] {
    ring r = ring::attach(ch.region.bytes(), "test", nullptr);
    std::array<std::uint64_t, publishers> next{};
    for (std::uint64_t total = 0; total < publishers * per_publisher;) {
      ring::frame f;
      std::uint64_t missed = 0;
      const auto status = r.try_read(cursor, f, missed);
      if (status == read_status::empty) {
        std::this_thread::yield();
        continue;
      }
      record rec{};
      if (status == read_status::ok && f.payload.size() == sizeof rec) std::memcpy(&rec, f.payload.data(), sizeof rec);
      if (status != read_status::ok || f.payload.size() != sizeof rec || missed != 0 || rec.publisher >= publishers ||
          rec.sequence != next[rec.publisher] || rec.checksum != checksum(rec.publisher, rec.sequence)) {
        ++bad;
        failed.store(true);
        break;
      }
      ++next[rec.publisher];
      ring::advance(cursor, f);
      r.publish_position(sub, cursor);
      ++total;
    }
  });
  // The one that stays publishes as try_publish does (publish_copy's
  // straight path while it is alone), the visitors as loans do.
  auto publish_records = [&](ring& r, std::uint32_t slot, std::uint32_t id, std::uint64_t from, std::uint64_t to) {
    const publish_path path = id == 0 ? publish_path::copy : publish_path::claim_and_commit;
    for (std::uint64_t s = from; s < to;) {
      if (publish_record(r, slot, id, s, path) == claim_status::would_block) {
        if (failed.load()) return;
        std::this_thread::yield();
        continue;
      }
      (void)r.take_parked_subscribers(slot);
      ++s;
    }
  };
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    ring r = ring::attach(ch.region.bytes(), "test", nullptr);
    const auto slot = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 1));
    publish_records(r, slot, 0, 0, per_publisher);
    r.unregister_publisher(slot);
  });
  for (std::uint32_t id = 1; id < publishers; ++id) {
    threads.emplace_back([&, id] {
      for (std::uint64_t s = 0; s < per_publisher; s += per_visit) {
        ring r = ring::attach(ch.region.bytes(), "test", nullptr);
        const int slot = r.register_publisher(::getpid(), 1);
        if (slot < 0) std::abort();
        publish_records(r, static_cast<std::uint32_t>(slot), id, s, std::min(s + per_visit, per_publisher));
        r.unregister_publisher(static_cast<std::uint32_t>(slot));
      }
    });
  }
  for (auto& t : threads) t.join();
  reader.join();
  CHECK(bad == 0);
  CHECK(cursor.sequence == publishers * per_publisher);
}
