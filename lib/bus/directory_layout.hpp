// The byte layout of a bus directory region, version 1. docs/LAYOUT.md
// ("Bus directory (layout v1)") describes the same thing for readers in
// other languages; the static_asserts below pin every offset it names.
//
//   0                  4096               4096 + 128*C             + 64*P
//   +------------------+------------------+------------------------+
//   | directory_header | channel entries  | participant entries    |
//   |  (one page)      | [C], 128 B each  | [P], 64 B each         |
//   +------------------+------------------+------------------------+
//
// Little-endian, fixed width, no pointers. Entries start on 64-byte
// boundaries; each begins with its state+generation word, the only word
// ever changed by compare-and-swap, so that concurrent takers of
// different entries never share a cache line (participants) or do so only
// with their own entry's fields (channels: two lines).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace shmbus::detail::bus_layout {

static_assert(std::endian::native == std::endian::little, "the bus directory is little-endian");

/// "SHMBUSDR" read as a little-endian u64; stored last (release) by the
/// creator, so a reader that acquires it sees an initialised header.
inline constexpr std::uint64_t directory_magic = 0x52445355424d4853ull;
inline constexpr std::uint32_t directory_version = 1;
/// Region kinds share one numbering: 1 = channel (ring_layout.hpp), 2 = bus directory.
inline constexpr std::uint32_t kind_directory = 2;

inline constexpr std::size_t header_size = 4096;
inline constexpr std::size_t channel_entry_size = 128;
inline constexpr std::size_t participant_entry_size = 64;
inline constexpr std::uint32_t max_entries = 4096;  // of either kind
inline constexpr std::size_t name_bytes = 64;       // a name of at most 48 bytes, NUL-padded

/// channel_entry state values.
inline constexpr std::uint32_t channel_free = 0;
inline constexpr std::uint32_t channel_creating = 1;  ///< taken; fields being written
inline constexpr std::uint32_t channel_active = 2;    ///< fields complete, name fixed

/// participant_entry state values.
inline constexpr std::uint32_t participant_free = 0;
inline constexpr std::uint32_t participant_active = 1;

/// The state+generation word (offset 0 of every entry): state in the low
/// half, generation in the high half, i.e. u32 state at +0, u32 generation
/// at +4 in memory.
constexpr std::uint64_t incarnation(std::uint32_t state, std::uint32_t generation) noexcept {
  return state | (std::uint64_t{generation} << 32);
}
constexpr std::uint32_t state_of(std::uint64_t word) noexcept { return static_cast<std::uint32_t>(word); }
constexpr std::uint32_t generation_of(std::uint64_t word) noexcept { return static_cast<std::uint32_t>(word >> 32); }

/// The first page of the directory. Written once, before the magic.
struct directory_header {
  std::uint64_t magic;                   //   0  directory_magic, stored last
  std::uint32_t version;                 //   8  directory_version
  std::uint32_t kind;                    //  12  kind_directory
  std::uint64_t region_size;             //  16  participant_offset + 64 * participant_entries
  std::uint32_t channel_entries;         //  24  C, 1..max_entries
  std::uint32_t channel_entry_size;      //  28  128
  std::uint64_t channel_offset;          //  32  4096
  std::uint32_t participant_entries;     //  40  P, 1..max_entries
  std::uint32_t participant_entry_size;  //  44  64
  std::uint64_t participant_offset;      //  48  4096 + 128 * C
  std::uint64_t created_ns;              //  56  CLOCK_REALTIME at creation (information)
  std::int32_t creator_pid;              //  64  (information)
  std::uint32_t reserved0;               //  68
  std::uint64_t creator_start_time;      //  72  (information)
  std::byte reserved1[header_size - 80]; //  80
};

/// One channel the bus lists. All fields but the state word are written
/// while the entry is `creating` and are fixed while it is `active`.
struct alignas(64) channel_entry {
  std::uint64_t incarnation;        //   0  state (u32) | generation (u32) << 32; CAS only
  std::int32_t owner_pid;           //   8  process that recorded the entry ...
  std::uint32_t owner_generation;   //  12  ... = generation once owner_pid/start_time are written
  std::uint64_t owner_start_time;   //  16
  std::uint64_t created_ns;         //  24  CLOCK_REALTIME when recorded
  std::uint64_t name[name_bytes / 8];  //  32  the channel name, bytes NUL-padded (at most 48)
  std::uint32_t type_size;          //  96  sizeof(T); 0 for a byte channel
  std::uint32_t type_align;         // 100
  std::uint64_t type_hash;          // 104  FNV-1a 64 of the type name; 0 for a byte channel
  std::uint64_t capacity;           // 112  ring bytes
  std::uint32_t max_message;        // 120
  std::uint32_t policy;             // 124  0 block, 1 overwrite
};

/// One bus handle.
struct alignas(64) participant_entry {
  std::uint64_t incarnation;         //  0  state | generation << 32; CAS only
  std::int32_t pid;                  //  8
  std::uint32_t identity_generation; // 12  = generation once pid/start_time/joined_ns are written
  std::uint64_t start_time;          // 16  /proc/<pid>/stat field 22
  std::uint64_t joined_ns;           // 24  CLOCK_REALTIME when it joined
  std::byte reserved[32];            // 32
};

static_assert(sizeof(directory_header) == header_size);
static_assert(offsetof(directory_header, magic) == 0 && offsetof(directory_header, version) == 8 &&
              offsetof(directory_header, kind) == 12 && offsetof(directory_header, region_size) == 16 &&
              offsetof(directory_header, channel_entries) == 24 &&
              offsetof(directory_header, channel_entry_size) == 28 &&
              offsetof(directory_header, channel_offset) == 32 &&
              offsetof(directory_header, participant_entries) == 40 &&
              offsetof(directory_header, participant_entry_size) == 44 &&
              offsetof(directory_header, participant_offset) == 48 &&
              offsetof(directory_header, created_ns) == 56 && offsetof(directory_header, creator_pid) == 64 &&
              offsetof(directory_header, creator_start_time) == 72);

static_assert(sizeof(channel_entry) == channel_entry_size);
static_assert(offsetof(channel_entry, incarnation) == 0 && offsetof(channel_entry, owner_pid) == 8 &&
              offsetof(channel_entry, owner_generation) == 12 && offsetof(channel_entry, owner_start_time) == 16 &&
              offsetof(channel_entry, created_ns) == 24 && offsetof(channel_entry, name) == 32 &&
              offsetof(channel_entry, type_size) == 96 && offsetof(channel_entry, type_align) == 100 &&
              offsetof(channel_entry, type_hash) == 104 && offsetof(channel_entry, capacity) == 112 &&
              offsetof(channel_entry, max_message) == 120 && offsetof(channel_entry, policy) == 124);

static_assert(sizeof(participant_entry) == participant_entry_size);
static_assert(offsetof(participant_entry, incarnation) == 0 && offsetof(participant_entry, pid) == 8 &&
              offsetof(participant_entry, identity_generation) == 12 &&
              offsetof(participant_entry, start_time) == 16 && offsetof(participant_entry, joined_ns) == 24);

}  // namespace shmbus::detail::bus_layout
