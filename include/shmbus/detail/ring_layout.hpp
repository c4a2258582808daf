// The byte layout of a channel region, version 2. docs/LAYOUT.md describes
// the same thing in prose, precisely enough for a reader in another
// language; the static_asserts below pin every offset it names.
//
//   0                4096        4096+64*P          ring_offset (page)   region_size
//   +----------------+-----------+------------------+---------------------+
//   | channel_header | publisher | subscriber slots | ring: capacity      |
//   |  (one page)    | slots [P] | [S], 128 B each  | bytes of frames     |
//   +----------------+-----------+------------------+---------------------+
//
// Everything is little-endian, fixed width, at the offsets asserted here.
// Memory holds positions and offsets, never pointers. Words that several
// processes write (the tail, the masks, slot positions) are accessed only
// through std::atomic_ref and sit on cache lines of their own.
//
// This memory is shared with processes we do not trust: the structs are
// read through validated, process-local copies of the geometry (see
// lib/ring/ring.cpp), never trusted field by field on the hot path.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace shmbus::detail::layout {

/// "SHMBUSCH" read as a little-endian u64; written last when a channel is
/// created (release), so a reader that sees it sees an initialised header.
inline constexpr std::uint64_t channel_magic = 0x48435355424d4853ull;
inline constexpr std::uint32_t channel_version = 2;
inline constexpr std::uint32_t kind_channel = 1;

inline constexpr std::size_t cache_line = 64;
inline constexpr std::size_t header_size = 4096;
inline constexpr std::size_t publisher_slot_size = 64;
inline constexpr std::size_t subscriber_slot_size = 128;
inline constexpr std::uint32_t max_publishers = 64;   // one bit each in a u64 mask
inline constexpr std::uint32_t max_subscribers = 64;  // likewise

inline constexpr std::size_t frame_header_size = 32;
inline constexpr std::size_t frame_alignment = 32;
inline constexpr std::uint64_t min_capacity = 4096;
inline constexpr std::uint64_t max_capacity = std::uint64_t{1} << 40;

/// frame_header::type values.
inline constexpr std::uint16_t frame_data = 1;
inline constexpr std::uint16_t frame_padding = 2;
/// A claim whose publisher died before committing it, written over by a
/// repairer: readers skip it. Its sequence number was claimed, so readers
/// expect the next one after it; nothing was published, nothing is missed.
inline constexpr std::uint16_t frame_aborted = 3;

/// Back-pressure policy, channel_header::policy.
inline constexpr std::uint32_t policy_block = 0;
inline constexpr std::uint32_t policy_overwrite = 1;

/// Slot states (publisher_slot::state, subscriber_slot::state). The state
/// and the generation next to it form one 8-byte word that changes only by
/// compare-and-swap, so a reclaim names the incarnation it reclaims.
inline constexpr std::uint32_t slot_free = 0;
inline constexpr std::uint32_t slot_active = 1;
inline constexpr std::uint32_t slot_reclaiming = 2;  ///< its owner died; being freed

/// publisher_slot::flags: the owner may claim with a plain 16-byte store
/// while it is the only publisher (docs/LAYOUT.md §9): a publisher that
/// joins must run a heavy barrier and wait out its claim in flight.
inline constexpr std::uint32_t publisher_lone_claims = 1;

/// The first page of a channel region.
struct channel_header {
  // --- written once by the creator, read-only afterwards -----------------
  std::uint64_t magic;                   //   0  channel_magic, stored last
  std::uint32_t version;                 //   8  channel_version
  std::uint32_t kind;                    //  12  kind_channel
  std::uint64_t region_size;             //  16  bytes, a multiple of the page size
  std::uint64_t ring_offset;             //  24  start of the ring, page aligned
  std::uint64_t ring_capacity;           //  32  power of two, min..max_capacity
  std::uint32_t max_message;             //  40  largest payload in bytes
  std::uint32_t policy;                  //  44  policy_block or policy_overwrite
  std::uint32_t publisher_slots;         //  48  1..max_publishers
  std::uint32_t subscriber_slots;        //  52  1..max_subscribers
  std::uint32_t publisher_slot_offset;   //  56  = header_size
  std::uint32_t subscriber_slot_offset;  //  60  after the publisher slots
  std::uint32_t type_size;               //  64  sizeof(T), 0 for byte channels
  std::uint32_t type_align;              //  68  alignof(T), 0 for byte channels
  std::uint64_t type_hash;               //  72  FNV-1a 64 of type_name, 0 for byte channels
  char type_name[64];                    //  80  NUL-padded
  std::uint64_t commit_salt;             // 144  random, non-zero; see frame_header::commit
  std::uint64_t created_ns;              // 152  CLOCK_REALTIME at creation
  std::uint32_t creator_pid;             // 160
  std::uint32_t reserved0;               // 164
  std::byte reserved1[256 - 168];        // 168

  // --- written by publishers ----------------------------------------------
  // The claim word: one 16-byte compare-and-swap advances both halves (a
  // publisher that is alone: one atomic 16-byte store).
  alignas(16) std::uint64_t tail_position;  // 256  end of the last claimed frame
  std::uint64_t tail_sequence;              // 264  number of data frames claimed
  std::byte reserved2[128 - 16];            // 272

  // --- bit i belongs to subscriber slot i (the second word of each line:
  // --- bit i belongs to publisher slot i) ---------------------------------
  std::uint64_t parked_subscribers;         // 384  asleep on their doorbell
  std::uint64_t unfenced_publishers;        // 392  committing without a fence
  std::byte reserved3[128 - 16];            // 400
  std::uint64_t active_subscribers;         // 512  slot in use
  std::uint64_t active_publishers;          // 520  slot in use
  std::byte reserved4[128 - 16];            // 528

  // --- bit i belongs to publisher slot i -------------------------------------
  std::uint64_t waiting_publishers;         // 640  asleep waiting for room (block policy)
  std::byte reserved5[1024 - 648];          // 648

  // --- written by publishers whose claim passes a segment boundary -------
  // The ring is cut into segments of 2^resync_segment_shift(CAP) bytes (at
  // most 256). Entry k holds the position of the first frame that starts
  // at or after the latest boundary of segment k: where a reader that
  // lagged may resume (docs/LAYOUT.md section 11). Hints only: readers
  // check them.
  std::uint64_t resync_hints[256];          // 1024
  std::byte reserved6[header_size - 3072];  // 3072
};

/// One per publishing handle; claimed by compare-and-swap of `state`.
struct alignas(8) publisher_slot {
  std::uint32_t state;            //  0  slot_free / slot_active / slot_reclaiming
  std::uint32_t generation;       //  4  incremented each time the slot is taken
  std::int32_t pid;               //  8  owner's pid ...
  std::uint32_t flags;            // 12  publisher_lone_claims, or 0
  std::uint64_t start_time;       // 16  ... and its start time (/proc/<pid>/stat field 22)
  std::uint64_t intent_position;  // 24  position being claimed, ~0 when none
  std::uint64_t intent_length;    // 32  bytes being claimed (padding included)
  std::uint64_t published;        // 40  data frames committed (statistics)
  std::uint64_t doorbell_id;      // 48  id of its eventfd at the owner's doorbell server
  std::uint64_t intent_sequence;  // 56  sequence number being claimed
};

/// One per subscribing handle.
struct alignas(8) subscriber_slot {
  std::uint32_t state;            //   0  slot_free / slot_active / slot_reclaiming
  std::uint32_t generation;       //   4
  std::int32_t pid;               //   8
  std::uint32_t reserved0;        //  12
  std::uint64_t start_time;       //  16
  std::uint64_t doorbell_id;      //  24
  std::uint64_t received;         //  32  data frames delivered (statistics)
  std::uint64_t missed;           //  40  data frames overwritten before read (overwrite policy)
  std::byte reserved1[64 - 48];   //  48
  // Its own cache line: written by the subscriber on every read, read by
  // publishers computing room (block policy).
  std::uint64_t position;         //  64  next position to read
  std::uint64_t sequence;         //  72  sequence number expected next
  std::byte reserved2[128 - 80];  //  80
};

/// The header of every frame in the ring; payload follows at +32, and the
/// next frame starts at align(position + 32 + length, 32). A frame never
/// wraps: a padding frame fills the end of the ring instead.
struct frame_header {
  std::uint32_t length;    //  0  payload bytes (padding: bytes after the header)
  std::uint16_t type;      //  4  frame_data / frame_padding
  std::uint16_t publisher; //  6  publisher slot index (diagnostics)
  std::uint64_t sequence;  //  8  data: number of data frames claimed before it
  std::uint64_t reserved;  // 16
  /// position ^ commit_salt, stored last with release ordering: a reader at
  /// `position` that acquires this value sees the whole frame. Any other
  /// value means "not (yet) written for this lap".
  std::uint64_t commit;    // 24
};

static_assert(sizeof(channel_header) == header_size);
static_assert(offsetof(channel_header, ring_capacity) == 32);
static_assert(offsetof(channel_header, type_name) == 80);
static_assert(offsetof(channel_header, commit_salt) == 144);
static_assert(offsetof(channel_header, tail_position) == 256);
static_assert(offsetof(channel_header, tail_sequence) == 264);
static_assert(offsetof(channel_header, parked_subscribers) == 384);
static_assert(offsetof(channel_header, unfenced_publishers) == 392);
static_assert(offsetof(channel_header, active_subscribers) == 512);
static_assert(offsetof(channel_header, active_publishers) == 520);
static_assert(offsetof(channel_header, waiting_publishers) == 640);
static_assert(offsetof(channel_header, resync_hints) == 1024);
static_assert(sizeof(publisher_slot) == publisher_slot_size);
static_assert(offsetof(publisher_slot, flags) == 12);
static_assert(offsetof(publisher_slot, intent_position) == 24);
static_assert(sizeof(subscriber_slot) == subscriber_slot_size);
static_assert(offsetof(subscriber_slot, position) == 64);
static_assert(sizeof(frame_header) == frame_header_size);
static_assert(offsetof(frame_header, commit) == 24);

/// log2 of a resync segment's size: 1/256 of the ring, at least 64 bytes.
constexpr unsigned resync_segment_shift(std::uint64_t capacity) noexcept {
  const unsigned ring_shift = static_cast<unsigned>(std::countr_zero(capacity));
  return ring_shift > 14 ? ring_shift - 8 : 6;
}

/// Frame size for a payload of `length` bytes.
constexpr std::uint64_t frame_size(std::uint64_t length) noexcept {
  return (frame_header_size + length + frame_alignment - 1) & ~std::uint64_t{frame_alignment - 1};
}

/// Whether `v` (a position, or a claim's or frame's length) is a multiple
/// of frame_alignment, as every frame start and size is. A value read from
/// shared memory that is not was written by a process that does not follow
/// the layout.
constexpr bool frame_aligned(std::uint64_t v) noexcept { return (v & (frame_alignment - 1)) == 0; }

}  // namespace shmbus::detail::layout
