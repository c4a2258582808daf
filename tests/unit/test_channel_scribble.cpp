// Any process of the user may write anything into a channel's region
// (DESIGN.md, "Shared memory is untrusted input"). Here a seeded generator
// plays that process: it writes words of chosen and random values at
// random places of a live channel (the header page, the slots, the frames),
// then the handles that were using the channel, and new ones opened on it,
// carry on. What must hold whatever was written:
//   - nothing crashes, hangs or reads outside what it may (a received view
//     lies inside the ring, or in the subscriber's own buffer, and is at
//     most max_message bytes; every byte of it is read, under ASan too);
//   - opening refuses with a shmbus::error, never another exception;
//   - the non-waiting calls return one of their statuses.
// A failing iteration is reported with its seed (CAPTURE), and every seed
// replays the same writes.
#include <shmbus/channel.hpp>
#include <shmbus/detail/ring_layout.hpp>
#include <shmbus/error.hpp>

#include "scribbler.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

namespace {

namespace layout = shmbus::detail::layout;

struct outcome_counts {
  std::uint64_t delivered = 0;      ///< messages read after a scribble
  std::uint64_t corrupt = 0;        ///< reads that reported the ring corrupt
  std::uint64_t published = 0;      ///< publishes after a scribble that went through
  std::uint64_t refused_publishes = 0;  ///< publishes that found the claim word corrupt
  std::uint64_t refused_opens = 0;  ///< attaches (or handles) refused with a shmbus::error
};

/// Reads every byte of a view, so that a view past its buffer faults (or
/// is reported by ASan) here.
std::uint64_t touch(std::span<const std::byte> data) {
  std::uint64_t sum = 0;
  for (const std::byte b : data) sum += static_cast<std::uint8_t>(b);
  return sum;
}

using shmbus::test::scribbler;

/// Writes one word somewhere in the channel's region: more often in the
/// header page's mutable words and the slots than their share of the bytes,
/// since those are what every handle reads. Where to write comes from the
/// geometry the channel was made with (the header's copy may be scribbled
/// already); values near the claim word's position are likely.
void scribble(scribbler& rng, const shmbus::channel& ch) {
  std::byte* const base = ch.backing().data();
  const std::size_t size = ch.backing().size();
  const std::uint64_t capacity = ch.capacity();
  const std::uint64_t ring_offset = size - capacity;
  const std::uint64_t tail =
      std::atomic_ref<std::uint64_t>(reinterpret_cast<layout::channel_header*>(base)->tail_position).load();
  std::size_t offset = 0;
  const std::uint64_t where = rng.below(100);
  if (where < 15) {
    offset = rng.below(256);  // the fields written once
  } else if (where < 35) {
    offset = 256 + rng.below(1024 - 256);  // claim word, bitmasks
  } else if (where < 45) {
    offset = 1024 + rng.below(2048);  // resync hints
  } else if (where < 60) {
    offset = layout::header_size + rng.below(ring_offset - layout::header_size);  // the slots
  } else if (where < 80) {
    // The frames just claimed: those a subscriber has yet to read.
    const std::uint64_t back = 1 + rng.below(std::min<std::uint64_t>(capacity, 2048));
    offset = ring_offset + ((tail - back) & (capacity - 1));
  } else {
    offset = rng.below(size);  // anywhere, mostly the frames
  }
  rng.write_word(base, size, offset, tail, capacity);
}

/// Reads at most `limit` messages, checking each; stops at empty or corrupt.
void read_some(shmbus::byte_subscriber& sub, const shmbus::channel& ch, std::size_t limit, outcome_counts& counts) {
  const std::byte* const region_begin = ch.backing().data();
  const std::byte* const region_end = region_begin + ch.backing().size();
  for (std::size_t i = 0; i < limit; ++i) {
    const shmbus::byte_message m = sub.try_next();
    if (m.status == shmbus::receive_status::empty) return;
    if (m.status == shmbus::receive_status::corrupt) {
      ++counts.corrupt;
      // Asking again is allowed and says the same, or moves on.
      const auto again = sub.try_next().status;
      CHECK((again == shmbus::receive_status::corrupt || again == shmbus::receive_status::empty ||
             again == shmbus::receive_status::ok));
      return;
    }
    REQUIRE(m.status == shmbus::receive_status::ok);
    REQUIRE(m.data.size() <= sub.max_message());
    if (ch.policy() == shmbus::overflow_policy::block && !m.data.empty()) {
      // Block policy: a view into the ring itself.
      REQUIRE(m.data.data() >= region_begin);
      REQUIRE(m.data.data() + m.data.size() <= region_end);
    }
    (void)touch(m.data);
    ++counts.delivered;
  }
}

void publish_some(shmbus::byte_publisher& pub, scribbler& rng, std::size_t count, outcome_counts& counts) {
  std::vector<std::byte> payload(pub.max_message(), std::byte{0x3c});
  for (std::size_t i = 0; i < count; ++i) {
    const auto length = static_cast<std::uint32_t>(rng.below(pub.max_message() + 1));
    if (rng.chance(30)) {
      shmbus::byte_loan loan = pub.try_loan(length);
      if (!loan) continue;
      REQUIRE(loan.data().size() == length);
      std::memset(loan.data().data(), 0x3c, length);
      loan.commit();
      ++counts.published;
      continue;
    }
    const shmbus::publish_status st = pub.try_publish({payload.data(), length});
    if (st == shmbus::publish_status::corrupt) {
      ++counts.refused_publishes;
      return;
    }
    CHECK((st == shmbus::publish_status::ok || st == shmbus::publish_status::would_block));
    if (st == shmbus::publish_status::ok) ++counts.published;
  }
}

/// One channel, a little traffic, a few scribbles, then everyone carries on.
void run_seed(std::uint64_t seed, outcome_counts& counts) {
  scribbler rng(seed);
  shmbus::channel_options o;
  o.capacity = std::uint64_t{4096} << rng.below(3);
  o.max_message = static_cast<std::uint32_t>(16 + rng.below(o.capacity / 4 - 64));
  o.policy = rng.chance(50) ? shmbus::overflow_policy::block : shmbus::overflow_policy::overwrite;
  o.max_publishers = static_cast<std::uint32_t>(1 + rng.below(4));
  o.max_subscribers = static_cast<std::uint32_t>(1 + rng.below(4));
  auto ch = shmbus::channel::create_memfd(fmt::format("scribble-{}-{}", ::getpid(), seed), o, shmbus::payload_type{});

  shmbus::publisher_options po;
  po.prefault = false;
  shmbus::subscriber_options so;
  so.prefault = false;
  so.start = rng.chance(50) ? shmbus::start_at::oldest : shmbus::start_at::newest;
  std::optional<shmbus::byte_publisher> pub(std::in_place, ch, po);
  std::optional<shmbus::byte_subscriber> sub(std::in_place, ch, so);

  // Traffic before: some read, some left in the ring.
  outcome_counts before;
  publish_some(*pub, rng, rng.below(64), before);
  read_some(*sub, ch, rng.below(64), before);

  // The geometry scribble() assumes: the ring ends the region.
  REQUIRE(reinterpret_cast<const layout::channel_header*>(ch.backing().data())->ring_offset ==
          ch.backing().size() - ch.capacity());
  const std::uint64_t scribbles = 1 + rng.below(6);
  for (std::uint64_t i = 0; i < scribbles; ++i) scribble(rng, ch);

  // The handles that were there carry on.
  const std::size_t read_limit = 2 * o.capacity / layout::frame_header_size;
  read_some(*sub, ch, read_limit, counts);
  publish_some(*pub, rng, rng.below(64), counts);
  read_some(*sub, ch, read_limit, counts);

  // New handles, as another process that opens the channel now.
  try {
    // (A magic scribbled away reads as a header still being written: wait
    // for it only briefly.)
    auto again = shmbus::channel::attach(shmbus::region::adopt_fd(ch.backing().dup_fd()), nullptr, "scribbled",
                                         std::chrono::milliseconds(10));
    shmbus::byte_subscriber late(again, so);
    shmbus::byte_publisher other(again, po);
    publish_some(other, rng, rng.below(32), counts);
    read_some(late, again, read_limit, counts);
    read_some(*sub, ch, read_limit, counts);
  } catch (const shmbus::error& e) {
    // Refused: the header is inconsistent, or no slot reads as free.
    CAPTURE(e.what());
    CHECK((e.code() == shmbus::errc::region_corrupt || e.code() == shmbus::errc::version_mismatch ||
           e.code() == shmbus::errc::type_mismatch || e.code() == shmbus::errc::bad_size ||
           e.code() == shmbus::errc::would_block || e.code() == shmbus::errc::timed_out));
    ++counts.refused_opens;
  }
  // Handles let go of a scribbled region without trouble.
  pub.reset();
  sub.reset();
}

}  // namespace

TEST_CASE("words scribbled anywhere in a live channel never crash, hang or leak a view out of bounds",
          "[channel][scribble]") {
  outcome_counts counts;
  const std::uint64_t seeds = shmbus::test::scribble_seeds(400);
  for (std::uint64_t seed = 1; seed <= seeds; ++seed) {
    CAPTURE(seed);
    run_seed(seed, counts);
  }
  // The generator reached both outcomes: channels that went on carrying
  // messages, and scribbles that the readers or the openers caught.
  INFO(fmt::format("delivered {}, corrupt {}, published {}, refused publishes {}, refused opens {}",
                   counts.delivered, counts.corrupt, counts.published, counts.refused_publishes,
                   counts.refused_opens));
  CHECK(counts.delivered > 0);
  CHECK(counts.published > 0);
  CHECK(counts.corrupt + counts.refused_publishes + counts.refused_opens > 0);
}
