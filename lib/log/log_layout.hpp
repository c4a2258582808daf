// The files of a durable log, version 1 (docs/LOG.md has the prose and the
// recovery rules; the static_asserts pin every offset named there).
//
//   <dir>/log.meta                 4096 bytes, mapped MAP_SHARED by every handle
//   <dir>/00000000000000000000.seg one file per segment, named by its first
//   <dir>/00000000000067108864.seg position (20 decimal digits), each
//   ...                            fallocated to segment_size before mapping
//   <dir>/cursors/<name>.cursor    16 bytes: position, CRC32C, magic
//
//   log.meta
//   0      magic "SHMBUSLG" (stored last), version, kind, geometry, salt
//   256    claim word {tail_position, tail_sequence}  (16-byte CAS)
//   384    durable word {durable_position, durable_sequence} (16-byte CAS, only grows)
//   512    first_position: start of the oldest segment kept
//   640    parked_readers: bit i = reader slot i sleeps on its doorbell
//   768    writer slots [16] x 64 B (owner and claim intent)
//   1792   reader slots [32] x 64 B (owner, doorbell, position)
//
//   a segment: frames of the ring's format, back to back from offset 0
//   +--------------------------------+---------+-------------------------+
//   | length u32 | type u16 | writer u16 | sequence u64 | crc32c u32 |    |
//   | reserved u32 | commit u64 = position ^ salt      | payload ...   pad |
//   +--------------------------------+---------+-------------------------+
//   A frame never spans two segments: a padding frame fills the end.
//   crc32c covers header bytes [0, 16) and then the payload.
#pragma once

#include <shmbus/detail/ring_layout.hpp>

#include <cstddef>
#include <cstdint>

namespace shmbus::detail::log_layout {

/// "SHMBUSLG" as a little-endian u64.
inline constexpr std::uint64_t meta_magic = 0x474c53554248534dull;
inline constexpr std::uint32_t version = 1;
inline constexpr std::uint32_t kind_log = 3;
inline constexpr std::size_t meta_size = 4096;
inline constexpr std::uint32_t writer_slots = 16;
inline constexpr std::uint32_t reader_slots = 32;
inline constexpr std::uint64_t min_segment_size = 64 * 1024;
inline constexpr std::uint64_t max_segment_size = std::uint64_t{1} << 34;
inline constexpr std::uint32_t cursor_magic = 0x52435342;  // "BSCR"

using layout::frame_aligned;
using layout::frame_alignment;
using layout::frame_data;
using layout::frame_header_size;
using layout::frame_padding;
using layout::frame_size;
inline constexpr std::uint16_t frame_aborted = layout::frame_aborted;

struct alignas(8) slot {
  std::uint32_t state;            //  0  0 free, 1 active (changed by CAS with generation)
  std::uint32_t generation;       //  4
  std::int32_t pid;               //  8
  std::uint32_t reserved0;        // 12
  std::uint64_t start_time;       // 16
  std::uint64_t doorbell_id;      // 24  readers: their eventfd at the owner's doorbell server
  std::uint64_t position;         // 32  readers: next position (statistics); writers: claim intent
  std::uint64_t length;           // 40  writers: intent length (padding included)
  std::uint64_t sequence;         // 48  writers: intent sequence
  std::uint64_t reserved1;        // 56
};

struct meta {
  std::uint64_t magic;                   //   0
  std::uint32_t version;                 //   8
  std::uint32_t kind;                    //  12
  std::uint64_t segment_size;            //  16  power of two
  std::uint32_t max_record;              //  24  largest payload
  std::uint32_t reserved0;               //  28
  std::uint64_t commit_salt;             //  32  non-zero
  std::uint64_t created_ns;              //  40  CLOCK_REALTIME
  std::uint32_t type_size;               //  48  sizeof the record type, 0 for bytes
  std::uint32_t type_align;              //  52
  std::uint64_t type_hash;               //  56  FNV-1a 64 of type_name, 0 for bytes
  char type_name[64];                    //  64  NUL-padded
  std::byte reserved1[256 - 128];        // 128
  alignas(16) std::uint64_t tail_position;  // 256
  std::uint64_t tail_sequence;              // 264
  std::byte reserved2[128 - 16];            // 272
  alignas(16) std::uint64_t durable_position;  // 384
  std::uint64_t durable_sequence;              // 392
  std::byte reserved3[128 - 16];               // 400
  std::uint64_t first_position;             // 512
  std::byte reserved4[128 - 8];             // 520
  std::uint64_t parked_readers;             // 640
  std::byte reserved5[128 - 8];             // 648
  slot writers[writer_slots];               // 768
  slot readers[reader_slots];               // 1792
  std::byte reserved6[meta_size - 3840];    // 3840
};

/// The header of every record, as in the ring (ring_layout.hpp), with the
/// CRC32C in what the ring leaves reserved.
struct record_header {
  std::uint32_t length;    //  0  payload bytes
  std::uint16_t type;      //  4  frame_data / frame_padding / frame_aborted
  std::uint16_t writer;    //  6  writer slot (diagnostics)
  std::uint64_t sequence;  //  8  number of records appended before this one
  std::uint32_t crc32c;    // 16  over bytes [0, 16) and the payload
  std::uint32_t reserved;  // 20
  std::uint64_t commit;    // 24  position ^ commit_salt, stored last
};

struct cursor_file {
  std::uint64_t position;  //  0
  std::uint32_t crc32c;    //  8  of the 8 position bytes
  std::uint32_t magic;     // 12  cursor_magic
};

static_assert(sizeof(slot) == 64);
static_assert(offsetof(meta, type_name) == 64);
static_assert(offsetof(meta, tail_position) == 256);
static_assert(offsetof(meta, durable_position) == 384);
static_assert(offsetof(meta, first_position) == 512);
static_assert(offsetof(meta, parked_readers) == 640);
static_assert(offsetof(meta, writers) == 768);
static_assert(offsetof(meta, readers) == 1792);
static_assert(sizeof(meta) == meta_size);
static_assert(sizeof(record_header) == frame_header_size);
static_assert(offsetof(record_header, crc32c) == 16 && offsetof(record_header, commit) == 24);
static_assert(sizeof(cursor_file) == 16);

}  // namespace shmbus::detail::log_layout
