// log: a durable, replayable publish/subscribe log in a directory of
// mmapped segment files (docs/LOG.md; the byte layout in lib/log/log_layout.hpp).
//
//   append (any process)                        durability
//   --------------------                        ----------
//   claim room: 16-byte CAS on the tail in      durability::none: visible to readers at
//     log.meta (a new segment is fallocated      once; a background policy syncs later
//     and mapped before it is claimed into)     durability::sync: resumes once an io_uring
//   write header, payload, CRC32C               fdatasync over the range has completed;
//   commit word = position ^ salt (seq_cst)     while one sync is in flight, appends pile up
//   ring parked live readers' doorbells         and the next sync covers them all (group
//                                                commit); any process's sync advances the
//                                                shared durable position for everyone
//
// The promise: a record whose append(sync) returned survives any crash of
// any process or of the machine; a record whose append did not return may
// be lost, but is never half visible (recovery cuts the torn tail).
//
// Thread-safety: a byte_log and its readers belong to the thread running
// the scheduler they were opened with. Many processes may open one log.
#pragma once

#include <shmbus/channel.hpp>
#include <shmbus/error.hpp>
#include <shmbus/export.hpp>
#include <shmbus/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace shmbus {

class scheduler;

/// A byte offset in a log's record stream; only grows.
using position = std::uint64_t;

enum class durability : std::uint8_t {
  none,  ///< visible at once; made durable by the background policy or sync()
  sync,  ///< append resumes once the record is on stable storage
};

struct log_options {
  /// Bytes per segment file, a power of two (64 KiB .. 16 GiB); fixed when
  /// the log is created.
  std::uint64_t segment_size = std::uint64_t{64} << 20;
  /// Largest payload; fixed when the log is created; at most segment_size - 32.
  std::uint32_t max_record = 1u << 20;
  /// Retention: drop whole old segments while the log holds more than this
  /// many bytes (0: no limit) ...
  std::uint64_t retain_bytes = 0;
  /// ... or once a segment is older than this (0: no limit). Checked when a
  /// segment is created and by enforce_retention().
  std::chrono::seconds retain_age{0};
  /// Background sync of durability::none appends: after this many records
  /// or this long (0 / 0: only explicit sync() and sync appends).
  std::uint64_t sync_every_records = 0;
  std::chrono::milliseconds sync_every{0};
  /// Permissions of created files.
  mode_t mode = 0600;
  /// What the records are (size 0: variable-length bytes); recorded when
  /// the log is created, checked by typed opens (errc::type_mismatch).
  payload_type type{};
};

/// What opening a log found after a crash.
struct recovery_report {
  bool scanned = false;          ///< this handle was the only one: it checked the tail
  position durable = 0;          ///< the durable position found
  position recovered_tail = 0;   ///< end of the last whole record with a good CRC
  position previous_tail = 0;    ///< the tail the log.meta recorded
  std::uint64_t records_after_durable = 0;  ///< whole records kept beyond the durable position
  std::uint64_t bytes_cut = 0;   ///< previous_tail - recovered_tail (torn or uncommitted)
  std::string summary() const;
};

/// A record, a view into the mapped segment, valid until the reader's next read.
struct log_record {
  std::span<const std::byte> data;
  position at = 0;         ///< where the record starts
  position next = 0;       ///< where the next one starts
  std::uint64_t sequence = 0;
  explicit operator bool() const noexcept { return next != 0; }
};

/// Where a reader starts.
struct from {
  enum class kind : std::uint8_t { beginning, at, end, cursor };
  kind where = kind::beginning;
  position pos = 0;
  std::string name;
  static from beginning() { return {}; }
  /// `p` is where a record starts (an append's result, a record's `at` or
  /// `next`): a multiple of 32, or reader() throws std::errc::invalid_argument.
  static from at_position(position p) { return {kind::at, p, {}}; }
  static from end() { return {kind::end, 0, {}}; }
  /// A named cursor (created at the beginning if it does not exist); the
  /// reader's commit() persists it.
  static from cursor(std::string_view name) { return {kind::cursor, 0, std::string(name)}; }
};

struct reader_options {
  /// Deliver only records below the durable position (a high watermark).
  bool durable_only = false;
  /// How long next() spins before sleeping on its doorbell.
  std::chrono::nanoseconds spin{std::chrono::microseconds(20)};
};

struct cursor_info {
  std::string name;
  position pos = 0;
};

namespace detail {
struct log_state;
struct log_reader_state;
}  // namespace detail

class byte_log;

/// Reads a log from a starting point; follows it live. Move-only.
class SHMBUS_API log_reader {
 public:
  log_reader(log_reader&&) noexcept;
  log_reader& operator=(log_reader&&) noexcept;
  ~log_reader();

  /// The next record if one is there (and durable, for durable_only
  /// readers); an empty record otherwise. Throws errc::region_corrupt
  /// naming the position when a record before the tail fails its checks,
  /// errc::lagged when the position was dropped by retention (the message
  /// names the oldest available position).
  log_record try_next();
  /// Waits for the next record (another process's append wakes it).
  [[nodiscard]] task<log_record> next();
  /// Everything available now, in order.
  std::vector<log_record> available();
  /// Persists a named reader's position durably (cursor file, fsync,
  /// rename, directory fsync). errc::not_supported for unnamed readers.
  [[nodiscard]] task<void> commit();
  position current() const noexcept;

 private:
  friend class byte_log;
  explicit log_reader(std::unique_ptr<detail::log_reader_state> s) noexcept;
  std::unique_ptr<detail::log_reader_state> m_state;
};

/// A durable log of variable-length records. Move-only.
class SHMBUS_API byte_log {
 public:
  /// Opens the log in `dir`, creating the directory and the log if needed.
  /// The first handle to open a log (no other live handle holds its lock)
  /// recovers it: see recovery(). Throws shmbus::error naming the path.
  static byte_log open(scheduler& s, const std::filesystem::path& dir, const log_options& options = {});
  /// Same, checking that an existing log records `expected` as its payload
  /// type (size, alignment, name hash): errc::type_mismatch otherwise.
  static byte_log open(scheduler& s, const std::filesystem::path& dir, const log_options& options,
                       const payload_type& expected);

  byte_log(byte_log&&) noexcept;
  byte_log& operator=(byte_log&&) noexcept;
  ~byte_log();

  /// Appends without waiting for durability; returns the record's position.
  /// Throws errc::bad_size (too long), or the errno of a failed segment
  /// allocation (ENOSPC: nothing appended, the log stays usable).
  position try_append(std::span<const std::byte> record);
  /// Appends; with durability::sync resumes once the record is durable.
  [[nodiscard]] task<position> append(std::span<const std::byte> record, durability d = durability::sync);
  /// Makes everything committed so far durable.
  [[nodiscard]] task<void> sync();

  log_reader reader(const from& start, const reader_options& options = {});

  std::vector<cursor_info> cursors() const;
  /// Throws std::errc::invalid_argument if `p` is not a multiple of 32.
  void reset_cursor(std::string_view name, position p);
  bool remove_cursor(std::string_view name);

  /// Drops old segments per the retention options; returns how many.
  std::size_t enforce_retention();

  position first() const noexcept;    ///< oldest position still kept
  position tail() const noexcept;     ///< end of the last claimed record
  position durable() const noexcept;  ///< everything before it is on stable storage
  const recovery_report& recovery() const noexcept;
  const std::filesystem::path& directory() const noexcept;
  /// fsyncs this handle issued (group commit makes it far below appends).
  std::uint64_t syncs_issued() const noexcept;

 private:
  explicit byte_log(std::shared_ptr<detail::log_state> s) noexcept;
  std::shared_ptr<detail::log_state> m_state;
};

/// A durable log of Ts: byte_log with a type check when opened.
template <channel_payload T>
class log {
 public:
  static log open(scheduler& s, const std::filesystem::path& dir, log_options options = {}) {
    options.type = payload_type_of<T>();
    if (options.max_record < sizeof(T)) options.max_record = sizeof(T);
    return log(byte_log::open(s, dir, options, options.type));
  }

  position try_append(const T& value) { return m_bytes.try_append(as_bytes(value)); }
  /// `value` must live until the append is awaited.
  [[nodiscard]] task<position> append(const T& value, durability d = durability::sync) {
    return m_bytes.append(as_bytes(value), d);
  }
  [[nodiscard]] task<void> sync() { return m_bytes.sync(); }
  log_reader reader(const from& start, const reader_options& options = {}) { return m_bytes.reader(start, options); }
  /// The T in a record read from this log (errc::region_corrupt if its size is not sizeof(T)).
  static const T& value(const log_record& r) {
    if (r.data.size() != sizeof(T))
      throw error(errc::region_corrupt, "read", "log", "a record of another size than the log's type");
    return *reinterpret_cast<const T*>(r.data.data());
  }
  byte_log& bytes() noexcept { return m_bytes; }

 private:
  explicit log(byte_log b) noexcept : m_bytes(std::move(b)) {}
  static std::span<const std::byte> as_bytes(const T& v) noexcept {
    return {reinterpret_cast<const std::byte*>(&v), sizeof(T)};
  }
  byte_log m_bytes;
};

}  // namespace shmbus
