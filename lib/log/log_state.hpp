// The process-local state behind a byte_log handle and its readers.
#pragma once

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/log.hpp>
#include <shmbus/region.hpp>
#include <shmbus/task.hpp>

#include "log/log_layout.hpp"
#include "notify/process_doorbells.hpp"

#include <atomic>
#include <coroutine>
#include <filesystem>
#include <map>
#include <memory>
#include <stop_token>
#include <vector>

namespace shmbus {
class scheduler;
}

namespace shmbus::detail {

struct segment_map {
  position start = 0;
  region file;
};

/// What a frame's header says, checked against the geometry and its CRC.
struct frame_check {
  bool ok = false;      ///< shaped and crc_ok
  bool shaped = false;  ///< a type and length that fit the segment (next is where the record ends)
  bool crc_ok = false;
  std::uint16_t type = 0;
  std::uint32_t length = 0;
  std::uint64_t sequence = 0;
  position next = 0;
};

/// The committed records from some position: where they end, and the
/// sequence number of the next record.
struct prefix {
  position end = 0;
  std::uint64_t sequence = 0;
  std::uint64_t records = 0;  ///< data and aborted records in it (walk_records)
};

struct log_state {
  scheduler* sched = nullptr;
  std::filesystem::path dir;
  log_options options;
  unique_fd dir_fd;
  region meta_file;
  log_layout::meta* meta = nullptr;
  process_identity self;
  std::uint64_t segment_size = 0;
  std::uint32_t max_record = 0;
  std::uint64_t salt = 0;
  std::map<std::uint64_t, std::unique_ptr<segment_map>> segments;
  // The segment segment() returned last: an append looks its segment up
  // several times (claim, header, payload, commit), nearly always the same.
  std::uint64_t last_segment_index = ~std::uint64_t{0};
  segment_map* last_segment = nullptr;
  int writer_slot = -1;
  recovery_report report;
  std::uint64_t syncs = 0;
  std::uint64_t appended_since_sync = 0;
  bool sync_in_flight = false;
  std::vector<std::coroutine_handle<>> sync_waiters;
  doorbell_cache reader_bells{log_layout::reader_slots};
  std::stop_source stop;

  std::uint64_t load(std::uint64_t& word) const noexcept;
  std::filesystem::path segment_path(std::uint64_t index) const;
  /// The mapped segment `index`; created (fallocated, directory fsynced)
  /// when `create`, else nullptr if its file does not exist.
  segment_map* segment(std::uint64_t index, bool create);
  /// Unmaps segment `index` (its file is someone else's business).
  void forget_segment(std::uint64_t index) noexcept;
  log_layout::record_header* header_at(position p, bool create);
  log_layout::record_header& header_for_write(position p);
  bool committed(const log_layout::record_header& h, position p) const noexcept;
  frame_check check_frame(position p, const log_layout::record_header& h) const noexcept;
  prefix committed_prefix(position from, std::uint64_t sequence);
  /// From `from` (a record boundary, or nothing is walked) while below
  /// `limit`: records that are committed and shaped, and, if
  /// `crc_required`, whose CRC32C holds. The walk that committed_prefix,
  /// recovery and its check of the durable word share.
  prefix walk_records(position from, std::uint64_t sequence, position limit, bool crc_required);
  void advance_durable(const prefix& p) noexcept;
  void wake_readers() noexcept;
  int take_slot(log_layout::slot* slots, std::uint32_t count) noexcept;
  void free_slot(log_layout::slot& s) noexcept;
  void sync_directory();

  position append(std::span<const std::byte> bytes);
  void prepare_ahead(position end) noexcept;
  /// Repairs the claim at `p` if its writer is dead (see log.cpp).
  bool try_repair(position p) noexcept;
  static task<void> sync_to(std::shared_ptr<log_state> self, position target);
  static task<void> background_sync(std::shared_ptr<log_state> self);
  std::size_t enforce_retention();

  void initialize(const log_options& o);
  void validate();
  void recover();
  /// recover(): the durable position is where a record starts, or throws.
  void check_durable_boundary();
};

}  // namespace shmbus::detail
