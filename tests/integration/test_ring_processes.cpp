// The ring protocol between real processes: 4 publisher processes and 3
// subscriber processes share one channel region (forked children of a
// shared anonymous mapping), 1,000,000 messages per publisher, block policy.
// Every subscriber checks every message: per-publisher order, no loss, no
// duplicate, content (sequence + checksum). Waiting is sched_yield polling:
// the doorbells come with channels; this test is about the frame protocol.
#include <shmbus/region.hpp>

#include "core/sanitizers.hpp"
#include "ring/ring.hpp"

#include <catch2/catch.hpp>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <vector>

using shmbus::detail::claim_status;
using shmbus::detail::read_status;
using shmbus::detail::ring;
using shmbus::detail::ring_cursor;
namespace layout = shmbus::detail::layout;

namespace {

constexpr std::uint32_t publishers = 4;
constexpr std::uint32_t subscribers = 3;
#ifdef SHMBUS_TSAN
// ThreadSanitizer slows every access 5-15x and cannot see across processes
// anyway; the threaded test in test_ring.cpp is the one it checks.
constexpr std::uint64_t per_publisher = 50'000;
#else
constexpr std::uint64_t per_publisher = 1'000'000;
#endif

struct record {
  std::uint32_t publisher;
  std::uint32_t length_marker;
  std::uint64_t sequence;
  std::uint64_t checksum;
};

std::uint64_t checksum(std::uint32_t p, std::uint64_t s) { return (s * 0x9e3779b97f4a7c15ull) ^ (p + 1); }

/// Variable sizes (24..88 bytes) so that padding frames occur at the wrap.
std::uint32_t length_for(std::uint64_t s) { return static_cast<std::uint32_t>(sizeof(record) + (s % 3) * 32); }

int publisher_main(std::span<std::byte> region, std::uint32_t id) {
  ring r = ring::attach(region, "processes", nullptr);
  const int slot = r.register_publisher(::getpid(), 0);
  if (slot < 0) return 10;
  for (std::uint64_t s = 0; s < per_publisher;) {
    ring::claim c;
    const std::uint32_t length = length_for(s);
    const auto status = r.try_claim(length, static_cast<std::uint32_t>(slot), c);
    if (status == claim_status::would_block) {
      ::sched_yield();
      continue;
    }
    if (status != claim_status::ok) return 11;
    const record rec{id, length, s, checksum(id, s)};
    std::memcpy(c.payload, &rec, sizeof rec);
    std::memset(c.payload + sizeof rec, static_cast<int>(s & 0xff), length - sizeof rec);
    r.commit(c, static_cast<std::uint32_t>(slot));
    ++s;
  }
  return 0;
}

int subscriber_main(std::span<std::byte> region, std::uint32_t slot, ring_cursor cursor) {
  ring r = ring::attach(region, "processes", nullptr);
  std::array<std::uint64_t, publishers> next{};
  for (std::uint64_t total = 0; total < publishers * per_publisher;) {
    ring::frame f;
    std::uint64_t missed = 0;
    const auto status = r.try_read(cursor, f, missed);
    if (status == read_status::empty) {
      ::sched_yield();
      continue;
    }
    if (status != read_status::ok) return 20;
    if (missed != 0) return 21;
    record rec;
    if (f.payload.size() < sizeof rec) return 22;
    std::memcpy(&rec, f.payload.data(), sizeof rec);
    if (rec.publisher >= publishers) return 23;
    if (rec.sequence != next[rec.publisher]) return 24;  // lost, duplicated or reordered
    if (rec.checksum != checksum(rec.publisher, rec.sequence) || rec.length_marker != f.payload.size() ||
        f.payload.size() != length_for(rec.sequence))
      return 25;
    for (std::size_t k = sizeof rec; k < f.payload.size(); ++k)
      if (f.payload[k] != static_cast<std::byte>(rec.sequence & 0xff)) return 26;
    ++next[rec.publisher];
    ring::advance(cursor, f);
    r.publish_position(slot, cursor);
    ++total;
  }
  return 0;
}

}  // namespace

TEST_CASE("4 publisher and 3 subscriber processes: nothing lost, duplicated or reordered", "[ring][process]") {
  shmbus::detail::ring_options o;
  o.capacity = 1 << 16;
  o.max_message = 1024;
  o.policy = layout::policy_block;
  o.publisher_slots = publishers;
  o.subscriber_slots = subscribers;
  auto region = shmbus::region::create_anonymous(shmbus::detail::ring_region_size(o, "processes"));
  shmbus::detail::ring_initialize(region.bytes(), o, "processes");
  ring parent_view = ring::attach(region.bytes(), "processes", nullptr);

  std::vector<pid_t> children;
  // Subscribers register before any publisher starts, so block policy
  // keeps every message for them.
  for (std::uint32_t i = 0; i < subscribers; ++i) {
    ring_cursor cursor;
    const int slot = parent_view.register_subscriber(::getpid(), 0, false, cursor);
    REQUIRE(slot >= 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(subscriber_main(region.bytes(), static_cast<std::uint32_t>(slot), cursor));
    children.push_back(pid);
  }
  for (std::uint32_t i = 0; i < publishers; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(publisher_main(region.bytes(), i));
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    INFO("child " << pid << " status " << status);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CHECK(parent_view.tail_sequence() == publishers * per_publisher);
}
