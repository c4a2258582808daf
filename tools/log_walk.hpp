// A read-only walk over a durable log's files (docs/LOG.md, lib/log/log_layout.hpp),
// for log stat, log dump and log verify.
//
// byte_log::open is not used here on purpose: it takes the log's lock, and
// the first handle runs recovery, which cuts a torn tail and deletes
// segments. A tool that looks at a log (or checks it after a crash) must not
// change it, so this walk opens log.meta and each segment O_RDONLY, maps
// them PROT_READ, and applies the same checks as the library's reader
// (lib/log/reader.cpp): a frame is whole when its commit word equals
// position ^ commit_salt, its type and length fit the segment, and its
// CRC32C (header bytes 0..15, then the payload) is good.
//
// Positions and segments come from log.meta as other processes may be
// changing them; every value read is checked before it addresses memory.
#pragma once

#include <shmbus/region.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace shmbus::tool {

/// A snapshot of log.meta.
struct log_meta_view {
  std::uint32_t version = 0;
  std::uint64_t segment_size = 0;
  std::uint32_t max_record = 0;
  std::uint64_t salt = 0;
  std::uint64_t created_ns = 0;
  std::uint32_t type_size = 0;
  std::uint32_t type_align = 0;
  std::string type_name;
  std::uint64_t first = 0;
  std::uint64_t tail = 0;
  std::uint64_t tail_sequence = 0;
  std::uint64_t durable = 0;
  std::uint64_t durable_sequence = 0;

  struct slot {
    std::uint32_t index = 0;
    std::int32_t pid = 0;
    bool alive = false;
    std::uint64_t position = 0;  ///< readers: next position; writers: claim in progress (~0: none)
  };
  std::vector<slot> writers;  ///< active writer slots: one per open byte_log handle
  std::vector<slot> readers;  ///< active reader slots
};

struct segment_file {
  std::uint64_t start = 0;  ///< its first position (from its name)
  std::filesystem::path path;
  std::uint64_t size = 0;
};

struct cursor_entry {
  std::string name;
  std::optional<std::uint64_t> position;  ///< empty when the file is bad
  std::string problem;
};

/// One frame read at a position.
struct log_frame {
  enum class status : std::uint8_t {
    ok,           ///< whole: committed, header fits, CRC good
    uncommitted,  ///< its commit word does not match (claimed, not written yet, or torn)
    missing,      ///< its segment file does not exist
    bad,          ///< committed, but the header or the CRC is wrong: `why`
  };
  status state = status::uncommitted;
  std::string why;
  std::uint64_t at = 0;
  std::uint64_t next = 0;
  std::uint16_t type = 0;  ///< 1 data, 2 padding, 3 aborted
  std::uint32_t length = 0;
  std::uint64_t sequence = 0;
  std::span<const std::byte> payload;  ///< valid until the next read()
};

class log_walk {
 public:
  /// Opens `dir` read-only and validates log.meta; a directory that is no
  /// shmbus log is a failure (exit 1) saying why.
  explicit log_walk(std::filesystem::path dir);

  const std::filesystem::path& dir() const noexcept { return m_dir; }
  /// A fresh snapshot of log.meta's words and slots.
  log_meta_view meta() const;
  std::vector<segment_file> segments() const;
  std::vector<cursor_entry> cursors() const;

  /// The frame at `p` (32-byte aligned, inside the log's range).
  log_frame read(std::uint64_t p);
  /// Drops the mapped segment (walks over large logs keep one mapped).
  void release() noexcept { m_segment = region(); m_segment_index = ~std::uint64_t{0}; }

 private:
  std::filesystem::path m_dir;
  region m_meta;
  std::uint64_t m_segment_size = 0;
  std::uint32_t m_max_record = 0;
  std::uint64_t m_salt = 0;
  region m_segment;
  std::uint64_t m_segment_index = ~std::uint64_t{0};
  bool m_segment_missing = false;
  std::string m_segment_problem;
};

}  // namespace shmbus::tool
