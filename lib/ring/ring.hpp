// ring: the frame protocol inside a channel region (layout: ring_layout.hpp,
// docs/LAYOUT.md). Process-local logic over shared data, in the manner of a
// pusher/popper pair: nothing here knows about coroutines or eventfds.
//
// Claim and commit (any number of publishers, in any processes):
//
//   1. read the claim word {tail_position t, tail_sequence s};
//   2. the frame needs f = frame_size(length) bytes; if it does not fit
//      before the end of the ring, the claim also takes the rest of the ring
//      for a padding frame: need = room + f;
//   3. block policy: refuse (would_block) while t + need would pass the
//      slowest active subscriber by more than the capacity;
//   4. record the intent {t, need} in the publisher's slot, then
//      16-byte CAS {t, s} -> {t + need, s + 1}; on failure start again;
//   5. write the padding frame (if any), then the data frame's header and
//      payload; store each frame's commit word = position ^ salt last, with
//      release ordering; clear the intent.
//
// Read (one subscriber, its own cursor {position p, sequence q}):
//
//   1. acquire the commit word of the frame at p; if it equals p ^ salt the
//      frame is complete for this lap: validate its length and type against
//      the local geometry (never trusting shared memory), deliver it, and
//      advance p by its size (padding is skipped);
//   2. otherwise compare p with the tail: p == tail means nothing new;
//      tail - p > capacity means the frame was overwritten (overwrite
//      policy): the reader lagged; anything else is a claim whose writer has
//      not committed yet.
//   3. Under the overwrite policy a payload may be overwritten while it is
//      being read: a reader re-reads the commit word after copying and
//      discards the copy if it changed.
//
// Every value read from shared memory is bounds-checked before it is used
// to address memory; geometry is copied into this object once, at attach.
#pragma once

#include <shmbus/detail/claim_ticket.hpp>
#include <shmbus/detail/ring_layout.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace shmbus::detail {

/// What a payload type looks like; checked when a channel is opened.
struct type_fingerprint {
  std::uint32_t size = 0;   ///< 0 for byte channels
  std::uint32_t align = 0;
  std::uint64_t hash = 0;   ///< FNV-1a 64 of `name`
  std::string_view name;    ///< at most 63 bytes are stored
};

/// FNV-1a, 64 bits: stable across compilers and languages.
constexpr std::uint64_t fnv1a_64(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

struct ring_options {
  std::uint64_t capacity = 1 << 20;  ///< ring bytes, power of two
  std::uint32_t max_message = 4096;  ///< largest payload
  std::uint32_t policy = layout::policy_block;
  std::uint32_t publisher_slots = 16;
  std::uint32_t subscriber_slots = 16;
  type_fingerprint type;
};

/// Checks options and returns the size of a region that holds them;
/// throws shmbus::error (errc::bad_size) naming `object`.
std::size_t ring_region_size(const ring_options& options, std::string_view object);

/// Writes a fresh header into a zeroed region of ring_region_size() bytes.
/// The magic is stored last (release).
void ring_initialize(std::span<std::byte> region, const ring_options& options, std::string_view object);

enum class claim_status : std::uint8_t { ok, would_block, too_large };
enum class read_status : std::uint8_t { ok, empty, lagged, corrupt };

/// A reader's place in the ring.
struct ring_cursor {
  std::uint64_t position = 0;
  std::uint64_t sequence = 0;
};

/// Validated, process-local view of a channel region.
class ring {
 public:
  /// Validates the header of `region` (magic, version, kind, sizes,
  /// geometry, and `expected` unless it is null) and copies the geometry.
  /// Throws shmbus::error naming `object`: errc::region_corrupt (bad magic,
  /// kind, geometry, truncated), errc::version_mismatch, errc::type_mismatch.
  static ring attach(std::span<std::byte> region, std::string_view object, const type_fingerprint* expected);

  std::uint64_t capacity() const noexcept { return m_capacity; }
  std::uint32_t max_message() const noexcept { return m_max_message; }
  std::uint32_t policy() const noexcept { return m_policy; }
  std::uint32_t publisher_slots() const noexcept { return m_publisher_slots; }
  std::uint32_t subscriber_slots() const noexcept { return m_subscriber_slots; }
  layout::channel_header& header() const noexcept { return *m_header; }
  layout::publisher_slot& publisher(std::uint32_t i) const noexcept { return m_publishers[i]; }
  layout::subscriber_slot& subscriber(std::uint32_t i) const noexcept { return m_subscribers[i]; }

  // ---- liveness ----------------------------------------------------------------

  /// Tells whether the process (pid, start time) that owns a slot still
  /// runs. Must never call a live process dead (no heartbeats: a process
  /// starved of CPU is alive).
  using liveness_check = bool (*)(std::int32_t pid, std::uint64_t start_time) noexcept;

  /// Lets try_claim reclaim the slots of dead subscribers when they hold
  /// back a publisher (block policy), checking at most every `interval`.
  void set_liveness(liveness_check alive, std::chrono::nanoseconds interval) noexcept {
    m_alive = alive;
    m_liveness_interval_ns = static_cast<std::uint64_t>(interval.count());
  }
  /// Frees the slots of active subscribers whose process is dead; returns
  /// how many. Safe against a slot being taken again meanwhile (the
  /// reclaim names the incarnation by its generation).
  std::uint32_t reclaim_dead_subscribers(liveness_check alive) noexcept;
  /// Frees the slots of dead publishers that have no claim in progress.
  std::uint32_t reclaim_dead_publishers(liveness_check alive) noexcept;

  enum class repair_status : std::uint8_t {
    not_stalled,  ///< the frame is committed, or nothing was claimed there
    writer_alive, ///< a live publisher claimed it: wait for it
    unknown,      ///< no claim intent names this position (yet): wait
    repaired,     ///< the dead publisher's claim now reads as skipped frames
  };
  /// Called by a reader stuck at `position` (claimed, never committed):
  /// if the publisher whose intent names that position is dead, writes the
  /// claimed bytes as a padding and/or an aborted frame and commits them.
  /// Only a dead writer's claim is ever repaired, so no late commit can
  /// race with the repair.
  repair_status try_repair(std::uint64_t position, liveness_check alive) noexcept;

  // ---- slots -----------------------------------------------------------------

  /// Takes a free publisher slot for process `pid` (started at `start_time`);
  /// returns its index, or -1 if all are taken. Never throws.
  int register_publisher(std::int32_t pid, std::uint64_t start_time) noexcept;
  void unregister_publisher(std::uint32_t index) noexcept;

  /// Takes a free subscriber slot and places its cursor at the newest or
  /// the oldest frame; -1 if all are taken. The slot's position is published
  /// before the slot counts as active, and set again after, so that no
  /// publisher can lap it (see ring.cpp).
  int register_subscriber(std::int32_t pid, std::uint64_t start_time, bool from_oldest, ring_cursor& cursor) noexcept;
  void unregister_subscriber(std::uint32_t index) noexcept;
  /// Tells publishers how far subscriber `index` has read (release; seq_cst
  /// when `then_check_waiters`: the caller loads waiting_publishers next).
  void publish_position(std::uint32_t index, const ring_cursor& cursor, bool then_check_waiters = false) noexcept;

  // ---- publishing ----------------------------------------------------------

  /// A claimed, not yet committed data frame.
  using claim = claim_ticket;

  /// Claims room for a payload of `length` bytes (steps 1-4 above).
  /// `publisher_index` is the caller's slot. Never blocks; never throws.
  claim_status try_claim(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept;
  /// Publishes a claimed frame (step 5). The data frame's commit word is
  /// stored seq_cst: with parked_subscribers() after it, this is one half
  /// of the parking handshake (a subscriber parks, then re-reads the commit
  /// word seq_cst: either it sees the frame or we see its parked bit).
  void commit(const claim& c, std::uint32_t publisher_index) noexcept;
  /// Gives a claim up: it is committed as an aborted frame, which readers
  /// skip without counting it as missed (a loan dropped without commit).
  void abandon(const claim& c, std::uint32_t publisher_index) noexcept;
  /// The position of the slowest active subscriber, or the tail if none.
  std::uint64_t slowest_subscriber() noexcept;

  /// Who holds a slot now (read from shared memory, so possibly already
  /// stale): its incarnation (state and generation word), process, doorbell.
  struct slot_owner {
    std::uint64_t incarnation = 0;
    std::int32_t pid = 0;
    std::uint64_t start_time = 0;
    std::uint64_t doorbell_id = 0;
  };
  slot_owner subscriber_owner(std::uint32_t index) const noexcept;
  slot_owner publisher_owner(std::uint32_t index) const noexcept;
  /// Records the doorbell a slot's owner sleeps on (before it first parks).
  void set_subscriber_doorbell(std::uint32_t index, std::uint64_t id) noexcept;
  void set_publisher_doorbell(std::uint32_t index, std::uint64_t id) noexcept;
  /// Statistics kept in the subscriber's slot for tools (relaxed).
  void count_delivered(std::uint32_t index, std::uint64_t received, std::uint64_t missed) noexcept;

  // ---- parking -----------------------------------------------------------------
  //
  // A subscriber that found nothing sets its bit in parked_subscribers
  // (seq_cst), re-reads the ring, and sleeps on its doorbell. A publisher,
  // after each commit, loads the word (seq_cst; a plain load on x86-64) and
  // clears and rings the bits it found. Publishers held back under the
  // block policy use waiting_publishers the same way, rung by subscribers
  // after they free room.

  void park_subscriber(std::uint32_t index) noexcept;
  void unpark_subscriber(std::uint32_t index) noexcept;
  /// The parked subscribers' bits, cleared by this call: the caller rings
  /// exactly these. 0, with one load and no write, when nobody is parked.
  std::uint64_t take_parked_subscribers() noexcept;
  void park_publisher(std::uint32_t index) noexcept;
  void unpark_publisher(std::uint32_t index) noexcept;
  std::uint64_t take_waiting_publishers() noexcept;

  // ---- reading ---------------------------------------------------------------

  /// A delivered frame: payload points into shared memory.
  struct frame {
    std::span<const std::byte> payload;
    std::uint64_t position = 0;  ///< where the frame starts
    std::uint64_t sequence = 0;
    std::uint64_t next_position = 0;
  };

  /// The current claim word (acquire).
  std::uint64_t tail_position() const noexcept;
  std::uint64_t tail_sequence() const noexcept;

  /// Looks at the frame at `cursor`, skipping padding. On ok, `out` is the
  /// next data frame and `missed` the number of data frames between the
  /// cursor's sequence and this frame's (non-zero only after a lag). On
  /// lagged, `cursor` was moved to the oldest frame start known to be
  /// intact and `missed` holds nothing yet. Does not advance past the data
  /// frame: call advance(). Never throws, never reads out of bounds.
  read_status try_read(ring_cursor& cursor, frame& out, std::uint64_t& missed) const noexcept;
  /// True if the frame is still the one try_read returned (overwrite
  /// policy: its bytes were not claimed by a newer lap while in use).
  bool still_valid(const frame& f) const noexcept;
  /// Moves the cursor past `f`.
  static void advance(ring_cursor& cursor, const frame& f) noexcept {
    cursor.position = f.next_position;
    cursor.sequence = f.sequence + 1;
  }

  /// Where a new subscriber starts: the tail (newest) ...
  ring_cursor newest() const noexcept;
  /// ... or the oldest frame still in the ring.
  ring_cursor oldest() const noexcept;

 private:
  layout::frame_header& frame_at(std::uint64_t position) const noexcept {
    return *reinterpret_cast<layout::frame_header*>(m_ring + (position & m_mask));
  }
  void write_frame_header(std::uint64_t position, std::uint32_t length, std::uint16_t type,
                          std::uint64_t sequence, std::uint32_t publisher_index) noexcept;
  void store_commit(std::uint64_t position, std::memory_order order = std::memory_order_release) noexcept;
  void commit_as(const claim& c, std::uint32_t publisher_index, std::uint16_t type) noexcept;
  bool unchanged_since(std::uint64_t position, std::uint64_t commit) const noexcept;
  std::uint64_t load_commit(std::uint64_t position) const noexcept;

  layout::channel_header* m_header = nullptr;
  layout::publisher_slot* m_publishers = nullptr;
  layout::subscriber_slot* m_subscribers = nullptr;
  std::byte* m_ring = nullptr;
  std::uint64_t m_capacity = 0;
  std::uint64_t m_mask = 0;
  std::uint64_t m_salt = 0;
  std::uint32_t m_max_message = 0;
  std::uint32_t m_policy = 0;
  std::uint32_t m_publisher_slots = 0;
  std::uint32_t m_subscriber_slots = 0;
  // Publisher-side cache of the slowest subscriber (block policy).
  std::uint64_t m_limit_cache = 0;
  std::uint64_t m_active_cache = ~std::uint64_t{0};
  // Set by register_subscriber on this object: under the block policy no
  // publisher can reach the frames this reader has not released, so its
  // reads need not look at the tail (a cache line every claim writes).
  bool m_unlappable_reader = false;
  // Reclaiming dead subscribers from try_claim.
  liveness_check m_alive = nullptr;
  std::uint64_t m_liveness_interval_ns = 0;
  std::uint64_t m_last_liveness_check_ns = 0;
};

}  // namespace shmbus::detail
