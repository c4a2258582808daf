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
//      16-byte CAS {t, s} -> {t + need, s + 1}; on failure start again.
//      A publisher that is the only active one (active_publishers holds
//      its bit alone) stores {t + need, s + 1} with one 16-byte store
//      instead: a publisher that joins makes sure, before its first claim,
//      that such a claim is not under way (register_publisher);
//   5. write the padding frame (if any), then the data frame's header and
//      payload; store each frame's commit word = position ^ salt last, with
//      release ordering; clear the intent.
//
// Fences. A locked instruction (the CAS, a seq_cst store) makes the
// publisher wait until its earlier stores, the payload included, have
// reached the other cores; at one per message that wait is most of the
// cost of streaming. So a publisher that is alone claims without the CAS,
// and a publisher that has found no parked subscriber for a while commits
// with a release store, having announced it in unfenced_publishers; a
// subscriber that parks then runs the heavy half of an asymmetric barrier
// (core/process_barrier.hpp) in place of the publisher's fence.
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

#include "core/cas128.hpp"
#include "core/cpu_relax.hpp"
#include "core/prefetch.hpp"
#include "core/process_barrier.hpp"
#include "core/sanitizers.hpp"

#include <shmbus/detail/claim_ticket.hpp>
#include <shmbus/detail/ring_layout.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

/// corrupt: the claim word breaks the layout (section 9); nothing was claimed.
enum class claim_status : std::uint8_t { ok, would_block, too_large, corrupt };

/// When a publisher's claims ask for the lines ahead of them
/// (ring::prefetch_ahead; publisher_options::prefetch_ahead).
enum class ahead_mode : std::uint8_t {
  never,
  always,
  when_streaming,  ///< while a subscriber has more than one message unreleased
};
enum class read_status : std::uint8_t { ok, empty, lagged, corrupt };

/// A reader's place in the ring.
struct ring_cursor {
  /// `sequence` of a reader that does not know which sequence number comes
  /// next (one that starts at the oldest frame): nothing counts as missed.
  static constexpr std::uint64_t unknown_sequence = ~std::uint64_t{0};
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
  /// When this publisher's claims run prefetch_ahead (never until set).
  /// when_streaming starts without it; see subscribers_stream_behind.
  void set_prefetch_ahead(ahead_mode mode) noexcept {
    m_prefetch_ahead = mode == ahead_mode::always;
    m_ahead_when_streaming = mode == ahead_mode::when_streaming;
  }
  /// Whether this publisher's claims now run prefetch_ahead (for tests).
  bool prefetching_ahead() const noexcept { return m_prefetch_ahead; }
  /// Frees the slots of active subscribers whose process is dead; returns
  /// how many. Safe against a slot being taken again meanwhile (the
  /// reclaim names the incarnation by its generation).
  std::uint32_t reclaim_dead_subscribers(liveness_check alive) noexcept;
  /// Frees the slots of dead publishers that have no claim in progress (a
  /// claim in progress waits for try_repair). An intent that names no such
  /// claim, left by a publisher that died just before its claim or just
  /// after its commit, is cleared.
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
  /// returns its index, or -1 if all are taken. Never throws. If another
  /// active publisher is allowed to claim alone without the CAS (its slot's
  /// flags say so), runs a heavy barrier and waits until that publisher's
  /// claim in flight, if any, has stored the claim word (a few instructions;
  /// a dead claimer, by set_liveness's check, is not waited for). If the
  /// barrier is refused, the slot is given back and -2 is returned; if that
  /// claim has not settled after lone_claim_settle_ns (its process stopped
  /// there, or its intent was written by a process that does not follow
  /// the layout), the slot is given back and -3 is returned.
  int register_publisher(std::int32_t pid, std::uint64_t start_time) noexcept;
  /// How long register_publisher waits for a lone publisher's claim.
  static constexpr std::uint64_t lone_claim_settle_ns = 1'000'000'000;
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
  /// try_claim, a copy of `bytes` into the frame, and commit, in one call:
  /// the per-message path of try_publish: try_lone_claim and a commit with
  /// the geometry in registers where it can, else the general claim and
  /// commit. Never blocks; never throws.
  claim_status publish_copy(std::span<const std::byte> bytes, std::uint32_t publisher_index) noexcept;
  /// Publishes a claimed frame (step 5). The data frame's commit word is
  /// stored seq_cst: with take_parked_subscribers() after it, this is one
  /// half of the parking handshake (a subscriber parks, then re-reads the
  /// commit word seq_cst: either it sees the frame or we see its parked
  /// bit). Unfenced, a release store, and the parking subscriber's heavy
  /// barrier stands in for the fence.
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
  /// The owner of a slot; nobody's (all zero) for an index past the slots.
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

  /// True if a publisher is now sure to ring this subscriber after its next
  /// commit. False only if a publisher commits without a fence and the
  /// heavy barrier was refused: the caller must then sleep for short times.
  [[nodiscard]] bool park_subscriber(std::uint32_t index) noexcept;
  void unpark_subscriber(std::uint32_t index) noexcept;
  /// Called by publisher `publisher_index` after each commit: the parked
  /// subscribers' bits, cleared by this call; the caller rings exactly
  /// these. 0, with one load and no write, when nobody is parked. Decides
  /// whether the next commits need a fence (see the top of this file).
  std::uint64_t take_parked_subscribers(std::uint32_t publisher_index) noexcept;
  /// True while this publisher commits without a fence (for tests).
  bool commits_unfenced() const noexcept { return m_unfenced; }
  /// True if some publisher commits without a fence: parking costs a heavy
  /// barrier meanwhile (a dead one's bit stays until its slot is reclaimed).
  bool has_unfenced_publishers() const noexcept;
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

  /// True if the frame at `position` is committed for this lap: one load,
  /// for spinning. A reader that may be lapped must also call try_read now
  /// and then (a lapped position never reads as committed).
  bool committed_at(std::uint64_t position) const noexcept { return load_commit(position) == (position ^ m_salt); }
  /// Spins on the commit word at `position` until committed_at() would be
  /// true or `turns` pauses have passed; the caller then reads.
  void spin_on_commit(std::uint64_t position, unsigned turns) const noexcept;

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
  static void write_frame_header(layout::frame_header& f, std::uint32_t length, std::uint16_t type,
                                 std::uint64_t sequence, std::uint32_t publisher_index) noexcept;
  /// The frame's commit word = position ^ salt; release, or seq_cst when
  /// `fenced`. Each order reaches the store as a constant: g++ compiles a
  /// run-time memory_order as seq_cst, an xchg on x86-64, which would make
  /// every unfenced commit a locked one.
  static void store_commit_word(layout::frame_header& f, std::uint64_t word, bool fenced) noexcept;
  /// publish_copy's general path: try_claim_general, copy, commit (out of
  /// line, so that the straight path's frame stays small).
  claim_status publish_copy_claimed(std::span<const std::byte> bytes, std::uint32_t publisher_index) noexcept;
  /// After a commit: counts a data frame in the publisher's slot.
  static void count_published(layout::publisher_slot& me) noexcept;
  void store_commit(std::uint64_t position, bool fenced = false) noexcept;
  /// Both claims, once the claim's position is known: a frame that fits
  /// one cache line is where a caught-up subscriber polls the commit word,
  /// so that line is asked for now and travels while the claim runs
  /// (core/prefetch.hpp). Larger frames are written longer after this
  /// point than the subscriber takes to pull the line back, so they gain
  /// nothing. The frame is at `offset` in the ring at `ring_base`.
  static void prefetch_one_line_frame(std::byte* ring_base, std::uint64_t offset, std::uint64_t frame_bytes) noexcept {
    if ((offset & (layout::cache_line - 1)) + frame_bytes <= layout::cache_line) prefetch_for_write(ring_base + offset);
  }
  /// How far ahead of a claim's end prefetch_ahead asks for lines.
  static constexpr std::uint64_t write_ahead = 1024;
  /// While the publisher wants it (set_prefetch_ahead: always, or while
  /// after_segment_boundary finds a stream), for a frame of up to two lines
  /// ending at `end`: asks for the two lines `write_ahead` bytes further, which
  /// later claims will write (core/prefetch.hpp). A stream of such frames has
  /// each of its lines asked for. Larger frames are left alone: their copy
  /// keeps lines in flight by itself, and string stores that write whole lines
  /// without reading them lose that when the line is fetched first (4 KiB
  /// measured slower with it). Under the block policy only inside the room
  /// already known free: a line past it may be one a subscriber has still to
  /// read.
  void prefetch_ahead(std::uint64_t end, std::uint64_t frame_bytes) const noexcept {
    if (!m_prefetch_ahead || frame_bytes > 2 * layout::cache_line) return;
    const std::uint64_t at = end + write_ahead;
    // The lines asked for end at most two lines past `at`; the room ends
    // where the slowest subscriber's line starts, a lap on.
    constexpr std::uint64_t line_mask = ~std::uint64_t{layout::cache_line - 1};
    if (m_policy == layout::policy_block && at + 2 * layout::cache_line > (m_limit_cache & line_mask)) return;
    prefetch_for_write(m_ring + (at & m_mask));
    prefetch_for_write(m_ring + ((at + layout::cache_line) & m_mask));
  }
  /// After a commit, off the path a waiting subscriber is on: true if the
  /// claim [start, end) starts on a resync segment boundary or passes one,
  /// and so must record hints (after_segment_boundary). Its first and last
  /// bytes lie in different segments, counting the byte before its start:
  /// one shift and compare.
  bool passes_segment_boundary(std::uint64_t start, std::uint64_t end) const noexcept {
    return passes_boundary(start, end, m_segment_shift);
  }
  static bool passes_boundary(std::uint64_t start, std::uint64_t end, unsigned shift) noexcept {
    return ((start - 1) >> shift) != ((end - 1) >> shift);
  }
  /// A commit whose claim passed a resync segment boundary: records the
  /// hints (note_resync_hints) and, where the claim also passed a multiple
  /// of 2^m_streaming_check_shift, decides again whether to write ahead
  /// (ahead_mode::when_streaming): on at once, off after
  /// checks_to_stop_ahead checks in a row. Out of line: it runs once a
  /// segment.
  void after_segment_boundary(std::uint64_t claim_position, std::uint64_t frame_position, std::uint64_t end,
                              std::uint64_t sequence) noexcept;
  /// ahead_mode::when_streaming's test, after committing data frame
  /// `sequence`: true if some active subscriber has not yet released two
  /// or more of the frames claimed before it. A subscriber that answers
  /// each message before the next one is sent (a ping-pong, a request and
  /// its reply) has at most one: the one it read last, which it releases
  /// when it next finds nothing (channel.cpp). One behind a stream has
  /// as many as are in flight between the two cores, and one that reads in
  /// batches up to a quarter ring's worth. A read of each active
  /// subscriber's slot, most likely a line from another core: hence only
  /// every 2^m_streaming_check_shift bytes of the ring.
  bool subscribers_stream_behind(std::uint64_t sequence) const noexcept;
  void commit_as(const claim& c, std::uint32_t publisher_index, std::uint16_t type) noexcept;
  /// Steps 1-4 for a lone publisher (step 4's plain store) whose frame fits
  /// before the end of the ring and within the cached room, with what they
  /// read from this object held in locals (the atomics would otherwise make
  /// the compiler load each member again after them). False: try_claim's
  /// general path must take the claim (its claim overwrites the intent
  /// this may have left). `length` is at most max_message.
  bool try_lone_claim(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept;
  /// try_claim for any publisher and any frame: padding at the end of the
  /// ring, a rescan of the subscribers for room, the CAS among publishers.
  claim_status try_claim_general(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept;
  bool unchanged_since(std::uint64_t position, std::uint64_t commit) const noexcept;
  std::uint64_t load_commit(std::uint64_t position) const noexcept;
  /// Publisher: stores the claim word {position, sequence} -> {position +
  /// need, sequence + 1}; false if it had changed (the arguments then hold
  /// its new value). Alone, with one 16-byte store; otherwise by CAS.
  bool advance_tail(std::uint32_t publisher_index, std::uint64_t& position, std::uint64_t& sequence,
                    std::uint64_t need) noexcept;
  /// Switches between fenced and unfenced commits (take_parked_subscribers).
  void enter_unfenced(std::uint32_t publisher_index) noexcept;
  void leave_unfenced(std::uint32_t publisher_index) noexcept;
  /// reclaim_dead_publishers, for a dead owner's slot: clears its intent
  /// unless it names a claim in progress; true if the intent is now clear.
  bool drop_stale_intent(layout::publisher_slot& slot) noexcept;
  /// register_publisher: waits out another publisher's claim without CAS;
  /// false if it has not settled by `deadline_ns` (monotonic).
  bool wait_for_lone_claim(std::uint32_t other, std::uint64_t deadline_ns) noexcept;
  /// try_repair: true if a claim that starts at intent position `start`
  /// has its data frame at `position` (at `start`, or at the next lap
  /// boundary after a padding frame).
  bool claim_reaches(std::uint64_t start, std::uint64_t position) const noexcept;
  /// commit_as, for a claim over a resync segment boundary: records where
  /// the first frame at or after each boundary in [claim start, end) starts.
  void note_resync_hints(std::uint64_t claim_position, std::uint64_t frame_position, std::uint64_t end) noexcept;
  /// Where a reader that lagged behind `tail` (> capacity) resumes: the
  /// first frame start at or after tail - capacity that a resync hint names
  /// and whose commit word checks, or else the next lap boundary.
  std::uint64_t resync_position(std::uint64_t tail) const noexcept;
  /// try_repair: true if a claim is known to start (or the tail to stand)
  /// at `end`: the tail, a committed frame, or some slot's intent.
  bool is_claim_boundary(std::uint64_t end, std::uint64_t tail) const noexcept;
  /// Block policy: true if a claim ending at `end` keeps within a ring of
  /// the slowest subscriber (the cached limit first).
  bool room_for(std::uint64_t end) noexcept;
  /// room_for's slow side: rescans the subscribers, reclaims dead ones.
  bool refresh_room(std::uint64_t end) noexcept;

  layout::channel_header* m_header = nullptr;
  layout::publisher_slot* m_publishers = nullptr;
  layout::subscriber_slot* m_subscribers = nullptr;
  std::byte* m_ring = nullptr;
  std::uint64_t m_capacity = 0;
  std::uint64_t m_mask = 0;
  unsigned m_segment_shift = 6;  // layout::resync_segment_shift(m_capacity)
  std::uint64_t m_salt = 0;
  std::uint32_t m_max_message = 0;
  std::uint32_t m_policy = 0;
  // What claims do now (prefetch_ahead), and whether commits decide it
  // again every 2^m_streaming_check_shift bytes (ahead_mode::when_streaming).
  bool m_prefetch_ahead = false;
  bool m_ahead_when_streaming = false;
  unsigned m_streaming_check_shift = 18;
  std::uint32_t m_checks_without_stream = 0;
  static constexpr std::uint32_t checks_to_stop_ahead = 4;
  std::uint32_t m_publisher_slots = 0;
  std::uint32_t m_subscriber_slots = 0;
  // Publisher-side cache of the slowest subscriber (block policy).
  std::uint64_t m_limit_cache = 0;
  std::uint64_t m_active_cache = ~std::uint64_t{0};
  // Set by register_subscriber on this object: under the block policy no
  // publisher can reach the frames this reader has not released, so its
  // reads need not look at the tail (a cache line every claim writes).
  bool m_unlappable_reader = false;
  // Publisher side: this process registered for heavy barriers, so it may
  // commit without a fence, and, where a 16-byte store is atomic, claim
  // alone without the CAS.
  bool m_light_barriers = false;
  bool m_lone_claims = false;
  bool m_unfenced = false;
  // Commits in a row that found nobody parked; at unfence_after, stop
  // fencing. A subscriber that parks meanwhile pays a heavy barrier, which
  // costs it less than the sleep and wake-up it is about to pay anyway.
  std::uint32_t m_quiet_commits = 0;
  static constexpr std::uint32_t unfence_after = 64;
  // Reclaiming dead subscribers from try_claim.
  liveness_check m_alive = nullptr;
  std::uint64_t m_liveness_interval_ns = 0;
  std::uint64_t m_last_liveness_check_ns = 0;
};

// ---- per-message paths, inline: every publish and read runs them -------------

namespace ring_detail {

/// A word of the shared region, accessed atomically (other processes
/// write the same bytes).
template <class T>
std::atomic_ref<T> shared(T& w) noexcept {
  return std::atomic_ref<T>(w);
}

/// Orders the plain reads of a frame before the re-checks that validate
/// them (the seqlock pattern). ThreadSanitizer does not model fences (g++
/// refuses them under it); there it is left out, which on x86-64 changes
/// nothing: loads are not reordered with other loads.
inline void fence_before_recheck() noexcept {
#ifndef SHMBUS_TSAN
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

/// Clears and returns the bits set in `w`: one load and no write when none.
inline std::uint64_t take_bits(std::uint64_t& w) noexcept {
  auto a = shared(w);
  const std::uint64_t bits = a.load(std::memory_order_seq_cst);
  if (bits == 0) return 0;
  return a.fetch_and(~bits, std::memory_order_acq_rel) & bits;
}

}  // namespace ring_detail

inline void ring::spin_on_commit(std::uint64_t position, unsigned turns) const noexcept {
  const std::uint64_t expected = position ^ m_salt;
  if (turns == 0) return;
#if defined(__x86_64__) && !defined(SHMBUS_TSAN)
  // Five instructions at a fixed place: 32 bytes into a 64-byte block,
  // jumped to over the padding. Compiled, the same loop took about 235 or
  // about 310 ns one-way in the spin ping-pong on the far placement of the
  // Zen 5 host depending on where the linker put it (eight builds: a
  // shift of the library's code moved it from one to the other); this one
  // took 230-250 ns at each of four offsets in the block
  // (docs/BENCHMARKS.md, "The eleventh round"). The load is a plain load,
  // which on x86-64 is an acquire load; the caller's read() loads the word
  // again as one.
  __asm__ __volatile__(
      "jmp 2f\n\t"
      ".p2align 6\n\t"
      ".skip 32, 0xcc\n"
      "2:\tcmpq %[expected], (%[word])\n\t"
      "je 3f\n\t"
      "pause\n\t"
      "subl $1, %[turns]\n\t"
      "jnz 2b\n"
      "3:"
      : [turns] "+r"(turns)
      : [word] "r"(&frame_at(position).commit), [expected] "r"(expected)
      : "cc", "memory");
#else
  const auto commit = ring_detail::shared(frame_at(position).commit);
  for (unsigned i = 0; i < turns; ++i) {
    if (commit.load(std::memory_order_acquire) == expected) return;
    cpu_relax();
  }
#endif
}

inline bool ring::has_unfenced_publishers() const noexcept {
  return ring_detail::shared(m_header->unfenced_publishers).load(std::memory_order_relaxed) != 0;
}

inline std::uint64_t ring::tail_position() const noexcept {
  return ring_detail::shared(m_header->tail_position).load(std::memory_order_acquire);
}

inline std::uint64_t ring::tail_sequence() const noexcept {
  return ring_detail::shared(m_header->tail_sequence).load(std::memory_order_acquire);
}

inline void ring::publish_position(std::uint32_t index, const ring_cursor& cursor, bool then_check_waiters) noexcept {
  layout::subscriber_slot& slot = m_subscribers[index];
  ring_detail::shared(slot.sequence).store(cursor.sequence, std::memory_order_relaxed);
  // release: publishers that acquire the position may reuse the bytes before
  // it. seq_cst when waiting publishers are looked at next. Each order is
  // spelled as a constant (see store_commit_word).
  auto position = ring_detail::shared(slot.position);
  if (then_check_waiters)
    position.store(cursor.position, std::memory_order_seq_cst);
  else
    position.store(cursor.position, std::memory_order_release);
}

inline void ring::count_delivered(std::uint32_t index, std::uint64_t received, std::uint64_t missed) noexcept {
  ring_detail::shared(m_subscribers[index].received).store(received, std::memory_order_relaxed);
  ring_detail::shared(m_subscribers[index].missed).store(missed, std::memory_order_relaxed);
}

inline std::uint64_t ring::take_parked_subscribers(std::uint32_t publisher_index) noexcept {
  // Unfenced, the commit before and the load below are kept in program
  // order for the parking subscriber's heavy barrier.
  light_barrier();
  const std::uint64_t bits = ring_detail::take_bits(m_header->parked_subscribers);
  if (bits != 0) [[unlikely]] {
    m_quiet_commits = 0;
    if (m_unfenced) leave_unfenced(publisher_index);
  } else if (!m_unfenced && m_light_barriers && ++m_quiet_commits >= unfence_after) [[unlikely]] {
    enter_unfenced(publisher_index);
  }
  return bits;
}
inline std::uint64_t ring::take_waiting_publishers() noexcept {
  return ring_detail::take_bits(m_header->waiting_publishers);
}

inline void ring::write_frame_header(layout::frame_header& f, std::uint32_t length, std::uint16_t type,
                                     std::uint64_t sequence, std::uint32_t publisher_index) noexcept {
  // Relaxed atomics: under the overwrite policy a lapped reader may read
  // these while we write them (and then discards what it read).
  ring_detail::shared(f.length).store(length, std::memory_order_relaxed);
  ring_detail::shared(f.type).store(type, std::memory_order_relaxed);
  ring_detail::shared(f.publisher).store(static_cast<std::uint16_t>(publisher_index), std::memory_order_relaxed);
  ring_detail::shared(f.sequence).store(sequence, std::memory_order_relaxed);
}

inline void ring::write_frame_header(std::uint64_t position, std::uint32_t length, std::uint16_t type,
                                     std::uint64_t sequence, std::uint32_t publisher_index) noexcept {
  write_frame_header(frame_at(position), length, type, sequence, publisher_index);
}

inline void ring::store_commit_word(layout::frame_header& f, std::uint64_t word, bool fenced) noexcept {
  // release (at least): the header fields and payload written before are
  // visible to a reader that acquires this value.
  auto commit = ring_detail::shared(f.commit);
  if (fenced)
    commit.store(word, std::memory_order_seq_cst);
  else
    commit.store(word, std::memory_order_release);
}

inline void ring::store_commit(std::uint64_t position, bool fenced) noexcept {
  store_commit_word(frame_at(position), position ^ m_salt, fenced);
}

inline void ring::count_published(layout::publisher_slot& me) noexcept {
  // Only the slot's owner writes its counter: no read-modify-write needed.
  auto published = ring_detail::shared(me.published);
  published.store(published.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

inline std::uint64_t ring::load_commit(std::uint64_t position) const noexcept {
  // seq_cst, for the parking handshake (see park_subscriber); on x86-64 it
  // is the same plain load as acquire.
  return ring_detail::shared(frame_at(position).commit).load(std::memory_order_seq_cst);
}

inline bool ring::room_for(std::uint64_t end) noexcept {
  // A subscriber joining (or leaving) changes the mask: rescan then;
  // otherwise only when the cached limit is in the way.
  const std::uint64_t active = ring_detail::shared(m_header->active_subscribers).load(std::memory_order_acquire);
  if (active == m_active_cache && end <= m_limit_cache) return true;
  return refresh_room(end);
}

inline bool ring::advance_tail(std::uint32_t publisher_index, std::uint64_t& position, std::uint64_t& sequence,
                               std::uint64_t need) noexcept {
  if (m_lone_claims) {
    // The intent above, then this load, in program order: a publisher that
    // joins (its bit set, then a heavy barrier) either sees the intent or
    // is seen here.
    light_barrier();
    const std::uint64_t others = ring_detail::shared(m_header->active_publishers).load(std::memory_order_acquire) &
                                 ~(std::uint64_t{1} << publisher_index);
    if (others == 0) [[likely]] {
      // Alone. A publisher may have come and gone since the tail was read.
      const std::uint64_t p = tail_position();
      const std::uint64_t s = tail_sequence();
      if (p != position || s != sequence) {
        position = p;
        sequence = s;
        return false;
      }
      // One 16-byte store, like the CAS: no reader (and no process that
      // dies here) ever sees half of it.
      store128(&m_header->tail_position, position + need, sequence + 1);
      return true;
    }
  }
  return cas128(&m_header->tail_position, position, sequence, position + need, sequence + 1);
}

inline bool ring::try_lone_claim(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept {
  layout::channel_header& h = *m_header;
  layout::publisher_slot& me = m_publishers[publisher_index];
  std::byte* const base = m_ring;
  const std::uint64_t position = ring_detail::shared(h.tail_position).load(std::memory_order_acquire);
  const std::uint64_t sequence = ring_detail::shared(h.tail_sequence).load(std::memory_order_acquire);
  const std::uint64_t offset = position & m_mask;
  const std::uint64_t frame_bytes = layout::frame_size(length);
  const std::uint64_t end = position + frame_bytes;
  // The block policy's room, from the cache only; refresh_room's rescan
  // is try_claim's business.
  const bool room = m_policy != layout::policy_block ||
                    (ring_detail::shared(h.active_subscribers).load(std::memory_order_acquire) == m_active_cache &&
                     end <= m_limit_cache);
  // A claim word off a frame boundary was written by a process that does
  // not follow the layout: try_claim_general reports it.
  const bool misaligned = !layout::frame_aligned(position);
  if (frame_bytes > m_capacity - offset || !room || misaligned) return false;
  prefetch_one_line_frame(base, offset, frame_bytes);
  prefetch_ahead(end, frame_bytes);
  ring_detail::shared(me.intent_length).store(frame_bytes, std::memory_order_relaxed);
  ring_detail::shared(me.intent_sequence).store(sequence, std::memory_order_relaxed);
  ring_detail::shared(me.intent_position).store(position, std::memory_order_relaxed);
  // advance_tail's lone branch: the intent, then this check, in program
  // order; then the tail must still be the one the intent names.
  light_barrier();
  const std::uint64_t others = ring_detail::shared(h.active_publishers).load(std::memory_order_acquire) &
                               ~(std::uint64_t{1} << publisher_index);
  if (others != 0 || ring_detail::shared(h.tail_position).load(std::memory_order_acquire) != position ||
      ring_detail::shared(h.tail_sequence).load(std::memory_order_acquire) != sequence) [[unlikely]]
    return false;  // another publisher joined, or one came and went
  store128(&h.tail_position, end, sequence + 1);
  // Two stores of their own: as one 16-byte store (what the compiler makes
  // of two equal values), commit's 8-byte loads of them would be slow.
  std::uint64_t frame_position = position;
  in_register(frame_position);
  out.claim_position = position;
  out.frame_position = frame_position;
  out.sequence = sequence;
  out.length = length;
  out.payload = base + offset + layout::frame_header_size;
  return true;
}

inline claim_status ring::try_claim(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept {
  if (length > m_max_message) return claim_status::too_large;
  if (m_lone_claims && try_lone_claim(length, publisher_index, out)) [[likely]]
    return claim_status::ok;
  return try_claim_general(length, publisher_index, out);
}

inline claim_status ring::try_claim_general(std::uint32_t length, std::uint32_t publisher_index, claim& out) noexcept {
  layout::publisher_slot& me = m_publishers[publisher_index];
  std::uint64_t position = ring_detail::shared(m_header->tail_position).load(std::memory_order_acquire);
  std::uint64_t sequence = ring_detail::shared(m_header->tail_sequence).load(std::memory_order_acquire);
  const std::uint64_t frame_bytes = layout::frame_size(length);
  // A claim that loses the race to another publisher only wasted a hint.
  prefetch_one_line_frame(m_ring, position & m_mask, frame_bytes);
  std::uint64_t room;
  for (;;) {
    // Frames start at multiples of frame_alignment, and so does every claim
    // (LAYOUT.md section 9); a claim word that does not was written by a
    // process that does not follow the layout. Claiming from it would put
    // frames where no reader looks for them, their words unaligned.
    if (!layout::frame_aligned(position)) [[unlikely]] {
      ring_detail::shared(me.intent_position).store(~std::uint64_t{0}, std::memory_order_release);
      return claim_status::corrupt;
    }
    room = m_capacity - (position & m_mask);
    const std::uint64_t need = frame_bytes <= room ? frame_bytes : room + frame_bytes;
    if (m_policy == layout::policy_block && !room_for(position + need)) [[unlikely]] {
      // An intent left from an earlier turn would name a claim that will
      // never be made; a joining publisher would wait for it (ring.cpp).
      ring_detail::shared(me.intent_position).store(~std::uint64_t{0}, std::memory_order_release);
      return claim_status::would_block;
    }
    // The intent lets a repairer find the length of a claim whose writer
    // died before writing a header. Ordered before the claim by the CAS
    // (or, alone, by the claim's release store).
    ring_detail::shared(me.intent_length).store(need, std::memory_order_relaxed);
    ring_detail::shared(me.intent_sequence).store(sequence, std::memory_order_relaxed);
    ring_detail::shared(me.intent_position).store(position, std::memory_order_relaxed);
    if (advance_tail(publisher_index, position, sequence, need)) break;
  }
  out.claim_position = position;
  out.frame_position = frame_bytes <= room ? position : position + room;
  prefetch_ahead(out.frame_position + frame_bytes, frame_bytes);
  out.sequence = sequence;
  out.length = length;
  out.payload = m_ring + (out.frame_position & m_mask) + layout::frame_header_size;
  return claim_status::ok;
}

inline void ring::commit_as(const claim& c, std::uint32_t publisher_index, std::uint16_t type) noexcept {
  if (c.frame_position != c.claim_position) [[unlikely]] {
    const std::uint64_t padding = c.frame_position - c.claim_position;
    write_frame_header(c.claim_position, static_cast<std::uint32_t>(padding - layout::frame_header_size),
                       layout::frame_padding, c.sequence, publisher_index);
    store_commit(c.claim_position);
  }
  write_frame_header(c.frame_position, c.length, type, c.sequence, publisher_index);
  // seq_cst: the first half of the parking handshake, unless a parking
  // subscriber runs a heavy barrier for us (unfenced_publishers).
  store_commit(c.frame_position, !m_unfenced);
  layout::publisher_slot& me = m_publishers[publisher_index];
  ring_detail::shared(me.intent_position).store(~std::uint64_t{0}, std::memory_order_release);
  if (type == layout::frame_data) count_published(me);
  const std::uint64_t end = c.frame_position + layout::frame_size(c.length);
  if (passes_segment_boundary(c.claim_position, end)) [[unlikely]]
    after_segment_boundary(c.claim_position, c.frame_position, end, c.sequence);
}

inline claim_status ring::publish_copy(std::span<const std::byte> bytes, std::uint32_t publisher_index) noexcept {
  if (bytes.size() > m_max_message) return claim_status::too_large;
  const auto length = static_cast<std::uint32_t>(bytes.size());
  claim c;
  if (m_lone_claims && try_lone_claim(length, publisher_index, c)) [[likely]] {
    // Step 5 as commit_as takes it for a claim without padding. What the
    // commit stores (its word, its fence) is read from this object before
    // the copy: read after the call to memcpy, those loads stood in front
    // of the commit, and a polled 64 B stream ran a fifth slower. The
    // segment test, which runs after the commit, is made after the copy:
    // held across the call, its values were spilled to the stack, and a
    // streaming publisher waits on its stores (docs/BENCHMARKS.md, the
    // fourteenth and fifteenth rounds).
    layout::publisher_slot& me = m_publishers[publisher_index];
    const std::uint64_t word = c.frame_position ^ m_salt;
    const bool fenced = !m_unfenced;
    const std::uint64_t end = c.frame_position + layout::frame_size(length);
    auto& f = *reinterpret_cast<layout::frame_header*>(c.payload - layout::frame_header_size);
    // The payload first, then the header and the commit word together: a
    // caught-up subscriber polls the header's line, and takes it from us
    // once if we write that line once, just before the commit.
    if (length != 0) std::memcpy(c.payload, bytes.data(), length);
    const bool hints = passes_segment_boundary(c.frame_position, end);
    write_frame_header(f, length, layout::frame_data, c.sequence, publisher_index);
    store_commit_word(f, word, fenced);
    ring_detail::shared(me.intent_position).store(~std::uint64_t{0}, std::memory_order_release);
    count_published(me);
    if (hints) [[unlikely]]
      after_segment_boundary(c.frame_position, c.frame_position, end, c.sequence);
    return claim_status::ok;
  }
  return publish_copy_claimed(bytes, publisher_index);
}

inline void ring::commit(const claim& c, std::uint32_t publisher_index) noexcept {
  commit_as(c, publisher_index, layout::frame_data);
}

inline void ring::abandon(const claim& c, std::uint32_t publisher_index) noexcept {
  commit_as(c, publisher_index, layout::frame_aborted);
}

inline bool ring::unchanged_since(std::uint64_t position, std::uint64_t commit) const noexcept {
  // Seqlock-style: the reads before this point must not drift after the
  // checks below.
  ring_detail::fence_before_recheck();
  if (load_commit(position) != commit) return false;
  // No claim has reached the bytes of this frame on the next lap: any claim
  // covering them ends past position + capacity.
  return tail_position() <= position + m_capacity;
}

inline bool ring::still_valid(const frame& f) const noexcept {
  return unchanged_since(f.position, f.position ^ m_salt);
}

inline read_status ring::try_read(ring_cursor& cursor, frame& out, std::uint64_t& missed) const noexcept {
  constexpr std::uint64_t unknown_sequence = ring_cursor::unknown_sequence;
  missed = 0;
  // Each turn consumes a padding frame or resynchronises after a lap; a
  // well-formed ring needs at most a few. The bound keeps a hostile writer
  // from holding a reader here forever.
  for (int turn = 0; turn < 8; ++turn) {
    const std::uint64_t p = cursor.position;
    if (!layout::frame_aligned(p)) [[unlikely]]
      return read_status::corrupt;
    const std::uint64_t commit = load_commit(p);
    if (commit != (p ^ m_salt)) {
      // A registered reader under the block policy cannot have been lapped:
      // not committed means nothing new (or a claim in progress).
      if (m_unlappable_reader) return read_status::empty;
      const std::uint64_t tail = tail_position();
      if (p >= tail) return read_status::empty;
      if (tail - p <= m_capacity) return read_status::empty;  // claimed, not yet committed
      // Overwritten: resume at the oldest frame start known to be still in
      // the ring. cursor.sequence still says what we expected, so the next
      // delivered frame reports what was missed.
      cursor.position = resync_position(tail);
      continue;
    }
    layout::frame_header& f = frame_at(p);
    const std::uint32_t length = ring_detail::shared(f.length).load(std::memory_order_relaxed);
    const std::uint64_t offset = p & m_mask;
    // A payload that ends in the line after the header's: that line is
    // asked for now, so that it travels while the checks below and the
    // caller's first steps run, instead of after them, when the copy gets
    // there. (Longer payloads gained nothing: their copy streams.)
    const std::uint64_t line_after_header = (offset | (layout::cache_line - 1)) + 1;
    const std::uint64_t payload_end = offset + layout::frame_header_size + length;
    if (payload_end > line_after_header && payload_end <= line_after_header + layout::cache_line &&
        line_after_header < m_capacity)
      prefetch_for_read(m_ring + line_after_header);
    const std::uint16_t type = ring_detail::shared(f.type).load(std::memory_order_relaxed);
    const std::uint64_t sequence = ring_detail::shared(f.sequence).load(std::memory_order_relaxed);
    const std::uint64_t size = layout::frame_size(length);
    // Under the overwrite policy these fields may already belong to a newer
    // lap: a writer that has claimed but not yet committed over them leaves
    // the old commit word in place, so check the tail too (still_valid).
    if (!m_unlappable_reader && !unchanged_since(p, commit)) continue;
    if (type == layout::frame_data && length <= m_max_message && offset + size <= m_capacity) [[likely]] {
      out.payload = {m_ring + offset + layout::frame_header_size, length};
      out.position = p;
      out.sequence = sequence;
      out.next_position = p + size;
      if (cursor.sequence != unknown_sequence && sequence > cursor.sequence) missed = sequence - cursor.sequence;
      return read_status::ok;
    }
    if (type == layout::frame_padding) {
      if (offset + layout::frame_header_size + length != m_capacity) return read_status::corrupt;
      cursor.position = p + (m_capacity - offset);
      continue;
    }
    if (type == layout::frame_aborted) {
      // A dead publisher's claim, or a loan given up: its sequence number
      // was taken, nothing was published. Skip it, not counted as missed.
      if (offset + size > m_capacity) return read_status::corrupt;
      cursor.position = p + size;
      if (cursor.sequence == unknown_sequence || sequence >= cursor.sequence) cursor.sequence = sequence + 1;
      continue;
    }
    return read_status::corrupt;
  }
  return read_status::empty;
}

}  // namespace shmbus::detail
