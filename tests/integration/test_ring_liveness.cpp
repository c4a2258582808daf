// Liveness in the ring, with real processes and real signals:
//  - a subscriber killed with SIGKILL stops holding back a publisher;
//  - a publisher killed between claim and commit does not stall readers:
//    its claim is repaired and readers continue with the next message;
//  - a process that is stopped (SIGSTOP: alive but getting no CPU) is
//    never taken for dead, and a stopped writer commits normally later;
//  - a dead publisher's slot is freed whatever its intent says, once no
//    claim of its is in progress, and a lone publisher killed at random
//    points of publish_copy leaves a ring that reads whole.
// Synchronisation is by pipes and waitpid only.
#include <shmbus/region.hpp>

#include "child_process.hpp"
#include "ring/ring.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <span>
#include <string>

using shmbus::detail::claim_status;
using shmbus::test::kill_and_reap;
using shmbus::test::pipe_pair;
using shmbus::test::stop_and_wait;
using shmbus::detail::read_status;
using shmbus::detail::ring;
using shmbus::detail::ring_cursor;
namespace layout = shmbus::detail::layout;

namespace {

/// Liveness by pid alone is enough here: every child is reaped before it is
/// expected to be dead, so its pid no longer exists. (The library's check
/// also compares the process start time.)
bool pid_alive(std::int32_t pid, std::uint64_t) noexcept { return ::kill(pid, 0) == 0 || errno == EPERM; }

struct channel {
  shmbus::region region;
  ring view;
  explicit channel(std::uint32_t policy) {
    shmbus::detail::ring_options o;
    o.capacity = 4096;
    o.max_message = 256;
    o.policy = policy;
    o.publisher_slots = 4;
    o.subscriber_slots = 4;
    region = shmbus::region::create_anonymous(shmbus::detail::ring_region_size(o, "liveness"));
    shmbus::detail::ring_initialize(region.bytes(), o, "liveness");
    view = ring::attach(region.bytes(), "liveness", nullptr);
  }
};

claim_status publish(ring& r, std::uint32_t slot, const std::string& text) {
  ring::claim c;
  const auto status = r.try_claim(static_cast<std::uint32_t>(text.size()), slot, c);
  if (status == claim_status::ok) {
    std::memcpy(c.payload, text.data(), text.size());
    r.commit(c, slot);
  }
  return status;
}

read_status receive(ring& r, ring_cursor& cursor, std::string& text, std::uint64_t& missed) {
  ring::frame f;
  const auto status = r.try_read(cursor, f, missed);
  if (status == read_status::ok) {
    text.assign(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
    ring::advance(cursor, f);
  }
  return status;
}

/// Publishes and reads 25 frames of 160 bytes: the tail stops at 4000, 96
/// bytes before the end of the 4 KiB ring, so a 200-byte claim must take
/// those 96 bytes as padding and put its frame at the next lap.
void fill_to_near_end(ring& r, std::uint32_t pub, ring_cursor& cursor) {
  std::string text;
  std::uint64_t missed = 0;
  for (int i = 0; i < 25; ++i) {
    REQUIRE(publish(r, pub, std::string(128, 'a')) == claim_status::ok);
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    r.publish_position(0, cursor);
  }
  REQUIRE(r.tail_position() == 4000);
}

/// A channel with a registered subscriber (`cursor`) and a publisher
/// (`pub`) in this process: the stuck reader and the other writer of the
/// repair tests.
template <std::uint32_t Policy>
struct reader_and_publisher {
  channel ch{Policy};
  ring& r = ch.view;
  ring_cursor cursor;
  std::uint32_t pub = 0;
  std::string text;  // the last message received
  std::uint64_t missed = 0;
  reader_and_publisher() {
    REQUIRE(r.register_subscriber(::getpid(), 0, false, cursor) >= 0);
    const int slot = r.register_publisher(::getpid(), 0);
    REQUIRE(slot >= 0);
    pub = static_cast<std::uint32_t>(slot);
  }
};
using block_ring = reader_and_publisher<layout::policy_block>;
using overwrite_ring = reader_and_publisher<layout::policy_overwrite>;

/// The child of fork_publisher, once ready: waits to be killed.
struct wait_for_kill {
  void operator()(ring&, std::uint32_t) const { ::pause(); }
};

/// Forks a process that registers a publisher on `ch` and runs
/// `in_child(its ring, its slot)` (false: the child fails), then
/// `when_ready(its ring, its slot)` until it is killed. Returns once the
/// child has run in_child.
template <class InChild, class WhenReady = wait_for_kill>
pid_t fork_publisher(channel& ch, InChild in_child, WhenReady when_ready = {}) {
  pipe_pair ready;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ring mine = ring::attach(ch.region.bytes(), "liveness", nullptr);
    const int slot = mine.register_publisher(::getpid(), 0);
    if (slot < 0 || !in_child(mine, static_cast<std::uint32_t>(slot))) ::_exit(1);
    ready.child_send('r');
    when_ready(mine, static_cast<std::uint32_t>(slot));
    ::_exit(0);
  }
  REQUIRE(ready.receive() == 'r');
  return child;
}

/// A child publisher that claims `length` bytes and never commits them.
pid_t fork_claimer(channel& ch, std::uint32_t length) {
  return fork_publisher(ch, [length](ring& mine, std::uint32_t slot) {
    ring::claim c;
    return mine.try_claim(length, slot, c) == claim_status::ok;
  });
}

}  // namespace

TEST_CASE("a killed subscriber stops holding back publishers; a stopped one is kept", "[ring][liveness][process]") {
  channel ch(layout::policy_block);
  ring& r = ch.view;
  pipe_pair registered;
  pipe_pair never;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ring mine = ring::attach(ch.region.bytes(), "liveness", nullptr);
    ring_cursor cursor;
    if (mine.register_subscriber(::getpid(), 0, false, cursor) < 0) ::_exit(1);
    registered.child_send('r');
    never.child_receive();  // never reads a message
    ::_exit(0);
  }
  CHECK(registered.receive() == 'r');
  r.set_liveness(&pid_alive, std::chrono::nanoseconds(0));
  const auto pub = static_cast<std::uint32_t>(r.register_publisher(::getpid(), 0));

  const std::string message(100, 'x');
  int sent = 0;
  while (publish(r, pub, message) == claim_status::ok) ++sent;
  CHECK(sent > 0);
  // Alive, then stopped (alive, getting no CPU): both hold the publisher back.
  CHECK(publish(r, pub, message) == claim_status::would_block);
  stop_and_wait(child);
  CHECK(publish(r, pub, message) == claim_status::would_block);
  CHECK(r.reclaim_dead_subscribers(&pid_alive) == 0);

  kill_and_reap(child, SIGKILL);
  CHECK(publish(r, pub, message) == claim_status::ok);  // its slot was reclaimed
  CHECK((r.header().active_subscribers & 1) == 0);
  // The freed slot can be taken again, by a new incarnation.
  ring_cursor cursor;
  CHECK(r.register_subscriber(::getpid(), 0, false, cursor) == 0);
  CHECK(r.subscriber(0).generation == 2);
}

TEST_CASE_METHOD(block_ring, "a publisher killed between claim and commit does not stall readers",
                 "[ring][liveness][process]") {
  REQUIRE(publish(r, pub, "before") == claim_status::ok);

  pipe_pair claimed;
  pipe_pair go_on;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ring mine = ring::attach(ch.region.bytes(), "liveness", nullptr);
    const int slot = mine.register_publisher(::getpid(), 0);
    ring::claim c;
    if (slot < 0 || mine.try_claim(40, static_cast<std::uint32_t>(slot), c) != claim_status::ok) ::_exit(1);
    std::memset(c.payload, 'z', 40);
    claimed.child_send('c');
    go_on.child_receive();
    mine.commit(c, static_cast<std::uint32_t>(slot));  // only if allowed to go on
    ::_exit(0);
  }
  CHECK(claimed.receive() == 'c');
  // Messages published after the stuck claim wait behind it.
  REQUIRE(publish(r, pub, "after 1") == claim_status::ok);
  REQUIRE(publish(r, pub, "after 2") == claim_status::ok);

  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "before");
  const std::uint64_t stuck = cursor.position;
  CHECK(receive(r, cursor, text, missed) == read_status::empty);

  SECTION("killed: the claim is repaired and reading goes on") {
    stop_and_wait(child);
    CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::writer_alive);  // stopped is alive
    kill_and_reap(child, SIGKILL);
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 0);  // its claim is in progress: repair first
    CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::repaired);
    CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::not_stalled);  // once only
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "after 1");
    CHECK(missed == 0);  // the dead claim published nothing: nothing was missed
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "after 2");
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
  }
  SECTION("stopped, then resumed: it commits and nothing was repaired") {
    stop_and_wait(child);
    CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::writer_alive);
    REQUIRE(::kill(child, SIGCONT) == 0);
    go_on.send('g');
    CHECK(shmbus::test::wait_exit(child) == 0);
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == std::string(40, 'z'));
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "after 1");
  }
}

TEST_CASE_METHOD(overwrite_ring, "a dead claim spanning the end of the ring is repaired as padding plus an aborted frame",
                 "[ring][liveness][process]") {
  fill_to_near_end(r, pub, cursor);

  const pid_t child = fork_claimer(ch, 200);
  REQUIRE(publish(r, pub, "next") == claim_status::ok);
  CHECK(receive(r, cursor, text, missed) == read_status::empty);
  kill_and_reap(child, SIGKILL);
  CHECK(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::repaired);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "next");
  CHECK(missed == 0);
}

TEST_CASE_METHOD(block_ring, "a publisher killed after its padding frame but before its data frame is repaired",
                 "[ring][liveness][process]") {
  fill_to_near_end(r, pub, cursor);

  const pid_t child = fork_publisher(ch, [region = ch.region.data()](ring& mine, std::uint32_t slot) {
    ring::claim c;
    if (mine.try_claim(200, slot, c) != claim_status::ok || c.frame_position == c.claim_position) return false;
    // Do the first half of commit() by hand: the padding frame only.
    auto* pad = reinterpret_cast<layout::frame_header*>(region + mine.header().ring_offset +
                                                        (c.claim_position & (mine.capacity() - 1)));
    pad->length = static_cast<std::uint32_t>(c.frame_position - c.claim_position - layout::frame_header_size);
    pad->type = layout::frame_padding;
    std::atomic_ref<std::uint64_t>(pad->commit).store(c.claim_position ^ mine.header().commit_salt,
                                                      std::memory_order_release);
    return true;
  });
  REQUIRE(publish(r, pub, "next") == claim_status::ok);
  CHECK(receive(r, cursor, text, missed) == read_status::empty);
  CHECK(cursor.position == 4096);  // past the padding, stuck at the lap boundary
  CHECK(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::writer_alive);
  kill_and_reap(child, SIGKILL);
  CHECK(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::repaired);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "next");
  CHECK(missed == 0);
}

/// A child publisher that leaves an intent for `length` bytes at
/// `position` and claims nothing: what a publisher whose CAS lost the race
/// for that position leaves behind when it dies.
pid_t fork_stale_intent(channel& ch, std::uint64_t position, std::uint64_t length) {
  return fork_publisher(ch, [position, length](ring& mine, std::uint32_t slot) {
    layout::publisher_slot& me = mine.publisher(slot);
    std::atomic_ref<std::uint64_t>(me.intent_length).store(length);
    std::atomic_ref<std::uint64_t>(me.intent_sequence).store(1);
    std::atomic_ref<std::uint64_t>(me.intent_position).store(position);
    return true;
  });
}

TEST_CASE_METHOD(block_ring, "two dead publishers whose intents name the same claim: the claim is repaired once",
                 "[ring][liveness][process]") {
  // One publisher claims and is killed before committing; the other had
  // stored an intent for the same position and length (as when its CAS
  // lost the race for it) and is killed too. Both intents look like the
  // stuck claim's; the repair must still happen, and only once.
  REQUIRE(publish(r, pub, "before") == claim_status::ok);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);

  const pid_t claimer = fork_claimer(ch, 100);
  const std::uint64_t stuck = cursor.position;
  const pid_t loser = fork_stale_intent(ch, stuck, layout::frame_size(100));
  REQUIRE(publish(r, pub, "after") == claim_status::ok);
  CHECK(receive(r, cursor, text, missed) == read_status::empty);
  kill_and_reap(claimer, SIGKILL);
  kill_and_reap(loser, SIGKILL);
  CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::repaired);
  CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::not_stalled);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "after");
  CHECK(missed == 0);
  CHECK(r.reclaim_dead_publishers(&pid_alive) == 2);  // neither intent is left behind
}

TEST_CASE_METHOD(block_ring,
                 "of two dead intents at the stuck position, the one ending at the nearest boundary is the claim",
                 "[ring][liveness][process]") {
  // The stale intent is longer than the claim and ends on the tail, so
  // both end where a claim could: the real claim ends first.
  REQUIRE(publish(r, pub, "before") == claim_status::ok);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);

  const pid_t claimer = fork_claimer(ch, 100);
  const std::uint64_t stuck = cursor.position;
  REQUIRE(publish(r, pub, "after") == claim_status::ok);
  const pid_t loser = fork_stale_intent(ch, stuck, layout::frame_size(100) + layout::frame_size(5));
  kill_and_reap(claimer, SIGKILL);
  kill_and_reap(loser, SIGKILL);
  CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::repaired);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "after");
  CHECK(missed == 0);
  CHECK(r.reclaim_dead_publishers(&pid_alive) == 2);
}

TEST_CASE_METHOD(block_ring, "a stale intent that spans a live claim is not repaired over it",
                 "[ring][liveness][process]") {
  // After the dead claim comes a live publisher's claim, not committed yet,
  // then a committed frame. A dead stale intent from the stuck position to
  // that frame ends on a boundary; the dead claim ends where the live
  // claim's intent starts. Repairing the stale length would skip the live
  // claim, and lose its message when it commits.
  REQUIRE(publish(r, pub, "before") == claim_status::ok);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);

  const pid_t claimer = fork_claimer(ch, 100);
  const std::uint64_t stuck = cursor.position;
  const pid_t live = fork_claimer(ch, 8);
  REQUIRE(publish(r, pub, "after") == claim_status::ok);
  const pid_t loser = fork_stale_intent(ch, stuck, layout::frame_size(100) + layout::frame_size(8));
  kill_and_reap(claimer, SIGKILL);
  kill_and_reap(loser, SIGKILL);
  CHECK(r.try_repair(stuck, &pid_alive) == ring::repair_status::repaired);
  CHECK(receive(r, cursor, text, missed) == read_status::empty);
  CHECK(cursor.position == stuck + layout::frame_size(100));
  CHECK(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::writer_alive);
  kill_and_reap(live, SIGKILL);
  CHECK(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::repaired);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  CHECK(text == "after");
  CHECK(missed == 0);
}

TEST_CASE_METHOD(block_ring, "a dead publisher's intent that names no claim in progress does not keep its slot",
                 "[ring][liveness][process]") {
  // A publisher stores its intent before it claims and clears it after it
  // commits; killed in between it leaves an intent, and the slot is freed
  // only without one. These intents name no claim that a reader could be
  // stuck on, so nobody would ever repair them: the reclaim clears them.
  REQUIRE(publish(r, pub, "before") == claim_status::ok);
  REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
  r.publish_position(0, cursor);
  const std::uint64_t tail = r.tail_position();

  SECTION("killed after storing its intent, before its claim") {
    kill_and_reap(fork_stale_intent(ch, tail, layout::frame_size(100)), SIGKILL);
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
    REQUIRE(publish(r, pub, "after") == claim_status::ok);
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "after");
    CHECK(missed == 0);
  }
  SECTION("killed after its commit, before clearing its intent") {
    const pid_t child = fork_publisher(ch, [tail](ring& mine, std::uint32_t slot) {
      if (mine.publish_copy(std::as_bytes(std::span("done", 4)), slot) != claim_status::ok) return false;
      // The intent of that claim, as it stood before the commit.
      layout::publisher_slot& me = mine.publisher(slot);
      std::atomic_ref<std::uint64_t>(me.intent_length).store(layout::frame_size(4));
      std::atomic_ref<std::uint64_t>(me.intent_position).store(tail);
      return true;
    });
    kill_and_reap(child, SIGKILL);
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "done");
  }
  SECTION("killed before its claim, and a lap has gone by since") {
    kill_and_reap(fork_stale_intent(ch, tail, layout::frame_size(100)), SIGKILL);
    for (int i = 0; i < 30; ++i) {  // 30 frames of 160 bytes: more than the 4 KiB ring
      REQUIRE(publish(r, pub, std::string(128, 'l')) == claim_status::ok);
      REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
      r.publish_position(0, cursor);
    }
    REQUIRE(r.tail_position() - tail > r.capacity());
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
  }
  SECTION("an intent that no claim could have stored") {
    kill_and_reap(fork_stale_intent(ch, tail - 8, 40), SIGKILL);  // neither is a multiple of 32
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
  }
  // The dead publisher's bit is gone: the one left claims alone again.
  CHECK(std::atomic_ref<std::uint64_t>(r.header().active_publishers).load() == std::uint64_t{1} << pub);
}

TEST_CASE("a publisher joining beside a lone claim that never settles gives its slot back, and joins once that "
          "claimer is dead",
          "[ring][liveness][process]") {
  // A lone publisher stores its intent, then the claim word without a CAS.
  // Stopped between the two (here: SIGSTOP right after the intent), it is
  // alive, so a joiner may not take it for dead, nor claim beside it (the
  // store would overwrite its claim). The joiner gives up at the deadline
  // instead of waiting for good.
  channel ch(layout::policy_block);
  ring& r = ch.view;
  r.set_liveness(&pid_alive, std::chrono::milliseconds(10));
  const std::uint64_t tail = r.tail_position();
  const pid_t child = fork_publisher(ch, [tail](ring& mine, std::uint32_t slot) {
    layout::publisher_slot& me = mine.publisher(slot);
    std::atomic_ref<std::uint64_t>(me.intent_length).store(layout::frame_size(100));
    std::atomic_ref<std::uint64_t>(me.intent_sequence).store(mine.tail_sequence());
    std::atomic_ref<std::uint64_t>(me.intent_position).store(tail);
    return true;
  });
  stop_and_wait(child);
  const std::uint32_t lone_flags = std::atomic_ref<std::uint32_t>(r.publisher(0).flags).load();
  if ((lone_flags & layout::publisher_lone_claims) == 0) {
    kill_and_reap(child, SIGKILL);
    WARN("publishers claim by CAS only here (no membarrier): nothing to wait for");
    return;
  }
  auto active = std::atomic_ref<std::uint64_t>(r.header().active_publishers);
  CHECK(r.register_publisher(::getpid(), 0) == -3);
  CHECK(active.load() == 1u);  // only the stopped publisher's bit
  CHECK(r.reclaim_dead_publishers(&pid_alive) == 0);
  CHECK(r.tail_position() == tail);

  kill_and_reap(child, SIGKILL);
  const int slot = r.register_publisher(::getpid(), 0);
  REQUIRE(slot >= 0);
  CHECK(publish(r, static_cast<std::uint32_t>(slot), "after") == claim_status::ok);
}

namespace {

/// What the lone publisher below sends: message i is 16 + (i % 7) * 8
/// bytes, every 8-byte word i ^ (its index * a constant).
std::size_t stress_length(std::uint64_t i) { return 16 + (i % 7) * 8; }
std::uint64_t stress_word(std::uint64_t i, std::size_t k) { return i ^ (k * 0x9e3779b97f4a7c15ull); }

/// The index of a well-formed stress message, or nothing.
std::optional<std::uint64_t> stress_index(const std::string& text) {
  if (text.size() < 16 || text.size() % 8 != 0) return std::nullopt;
  std::uint64_t i = 0;
  std::memcpy(&i, text.data(), sizeof i);
  if (text.size() != stress_length(i)) return std::nullopt;
  for (std::size_t k = 0; k < text.size() / 8; ++k) {
    std::uint64_t w = 0;
    std::memcpy(&w, text.data() + k * 8, sizeof w);
    if (w != stress_word(i, k)) return std::nullopt;
  }
  return i;
}

}  // namespace

TEST_CASE("a lone publisher SIGKILLed anywhere in publish_copy: readers go on and its slot is freed",
          "[ring][liveness][process]") {
  // The publisher is alone, so it takes publish_copy's straight path (and
  // the general one at each wrap); the kill lands wherever it happens to
  // be: before its intent, between intent and claim, between claim and
  // commit, or after the commit. Whichever, a reader reads every message
  // whole and in order, a claim left open is repaired, the slot is freed,
  // and the next publisher claims alone.
  for (int round = 0; round < 40; ++round) {
    channel ch(layout::policy_overwrite);
    ring& r = ch.view;
    // Messages [from, to) through publish_copy; false if one is refused.
    auto publish_stream = [](ring& mine, std::uint32_t slot, std::uint64_t from, std::uint64_t to) {
      std::array<std::uint64_t, 8> words{};
      for (std::uint64_t i = from; i != to; ++i) {
        const std::size_t length = stress_length(i);
        for (std::size_t k = 0; k < length / 8; ++k) words[k] = stress_word(i, k);
        if (mine.publish_copy(std::as_bytes(std::span(words)).first(length), slot) != claim_status::ok) return false;
      }
      return true;
    };
    const auto first = 1000 + static_cast<std::uint64_t>(round);
    const pid_t child = fork_publisher(
        ch, [&](ring& mine, std::uint32_t slot) { return publish_stream(mine, slot, 0, first); },
        [&](ring& mine, std::uint32_t slot) { publish_stream(mine, slot, first, ~std::uint64_t{0}); });
    // Woken by the child's write, this process may have taken its CPU, and
    // the child would then be killed where it wrote. Kill it once it has
    // published again, so that the signal lands where it happens to be.
    const std::uint64_t seen = r.tail_position();
    while (r.tail_position() < seen + 4096) {
    }
    kill_and_reap(child, SIGKILL);

    ring_cursor cursor;
    REQUIRE(r.register_subscriber(::getpid(), 0, true, cursor) >= 0);
    std::optional<std::uint64_t> last;
    std::string text;
    std::uint64_t missed = 0;
    int repaired = 0;
    for (;;) {
      const read_status st = receive(r, cursor, text, missed);
      if (st == read_status::ok) {
        const std::optional<std::uint64_t> i = stress_index(text);
        REQUIRE(i.has_value());
        if (last) {
          CHECK(*i == *last + 1);
          CHECK(missed == 0);
        }
        last = i;
        continue;
      }
      REQUIRE(st == read_status::empty);
      if (cursor.position >= r.tail_position()) break;
      // Stuck behind the dead publisher's last claim.
      REQUIRE(r.try_repair(cursor.position, &pid_alive) == ring::repair_status::repaired);
      ++repaired;
    }
    CHECK(last.has_value());
    CHECK(repaired <= 1);  // one publisher, one claim at a time
    CHECK(r.reclaim_dead_publishers(&pid_alive) == 1);
    CHECK(std::atomic_ref<std::uint64_t>(r.header().active_publishers).load() == 0);
    // (Were the dead one still registered, a newcomer would wait for its
    // claim in flight; the liveness check lets it see that nothing will come.)
    r.set_liveness(&pid_alive, std::chrono::nanoseconds(0));
    const int pub = r.register_publisher(::getpid(), 0);
    REQUIRE(pub >= 0);
    REQUIRE(publish(r, static_cast<std::uint32_t>(pub), "after") == claim_status::ok);
    REQUIRE(receive(r, cursor, text, missed) == read_status::ok);
    CHECK(text == "after");
  }
}
