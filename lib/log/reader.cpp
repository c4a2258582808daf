// Log readers and named cursors (docs/LOG.md, "Readers" and "Cursors").
//
// A reader walks the records from its position: a record is delivered when
// its commit word matches its position, its header fits the segment and
// its CRC32C is good. Below the durable position every record must pass:
// anything else is corruption, reported with its position, never skipped.
// At or past it, a record that is not committed yet means "nothing new".
// A live reader parks like a channel subscriber: a bit in parked_readers,
// a re-read, and a bounded sleep on its eventfd, rung by appenders (and by
// syncs, for readers that see only durable records).
#include <shmbus/log.hpp>

#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>

#include "core/crc32c.hpp"
#include "core/syscall.hpp"
#include "core/time_after.hpp"
#include "log/log_state.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace shmbus {
namespace detail {

namespace ll = log_layout;

namespace {

bool valid_cursor_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

std::filesystem::path cursor_path(const log_state& st, std::string_view name) {
  if (!valid_cursor_name(name))
    throw error(errc::bad_name, "cursor", std::string(name), "1..64 characters of [A-Za-z0-9_-]");
  return st.dir / "cursors" / (std::string(name) + ".cursor");
}

/// The 16 bytes of a cursor file (as bytes: g++ misreads a write of the
/// struct from a coroutine frame as reading past its first field).
std::array<std::byte, sizeof(ll::cursor_file)> cursor_bytes(position p) noexcept {
  ll::cursor_file c{};
  c.position = p;
  c.crc32c = crc32c({reinterpret_cast<const std::byte*>(&c.position), 8});
  c.magic = ll::cursor_magic;
  std::array<std::byte, sizeof c> bytes{};
  std::memcpy(bytes.data(), &c, sizeof c);
  return bytes;
}

/// The cursor's position, or std::nullopt when it does not exist.
std::optional<position> read_cursor(const std::filesystem::path& path) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    throw_errno(errno, "open", path.string(), "cursor");
  }
  ll::cursor_file c{};
  const ssize_t n = retry_on_eintr([&] { return ::read(fd.get(), &c, sizeof c); });
  if (n != static_cast<ssize_t>(sizeof c) || c.magic != ll::cursor_magic ||
      c.crc32c != crc32c({reinterpret_cast<const std::byte*>(&c.position), 8}))
    throw error(errc::region_corrupt, "read cursor", path.string(), "not a 16-byte cursor with a good CRC");
  return c.position;
}

/// A position a user passes must be one where a record may start: records
/// are 32-byte aligned, and reading from anywhere else is undefined.
void require_record_boundary(const log_state& st, std::string_view operation, position p) {
  if (!ll::frame_aligned(p))
    throw error(std::make_error_code(std::errc::invalid_argument), operation, st.dir.string(),
                fmt::format("position {} is not where a record starts (positions are multiples of {})", p,
                            ll::frame_alignment));
}

/// Writes a cursor file without waiting on the loop (for reset_cursor).
void write_cursor_now(const log_state& st, const std::filesystem::path& path, position p) {
  const auto tmp = path.string() + ".tmp";
  unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.options.mode));
  if (!fd) throw_errno(errno, "open", tmp, "cursor");
  const auto c = cursor_bytes(p);
  if (::write(fd.get(), c.data(), c.size()) != static_cast<ssize_t>(c.size())) throw_errno(errno, "write", tmp);
  if (::fdatasync(fd.get()) != 0) throw_errno(errno, "fdatasync", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno(errno, "rename", tmp);
  unique_fd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir || ::fsync(dir.get()) != 0) throw_errno(errno, "fsync", path.parent_path().string());
}

}  // namespace

struct log_reader_state {
  std::shared_ptr<log_state> log;
  position pos = 0;
  reader_options options;
  std::string cursor;  // empty: not a named reader
  int slot = -1;
  std::unique_ptr<event_fd> bell;
  std::uint64_t bell_id = 0;

  ~log_reader_state() {
    if (slot >= 0) {
      auto& s = log->meta->readers[slot];
      std::atomic_ref<std::uint64_t>(log->meta->parked_readers)
          .fetch_and(~(std::uint64_t{1} << slot), std::memory_order_relaxed);
      log->free_slot(s);
    }
    if (bell_id != 0) process_doorbells::instance().remove(bell_id);
  }

  [[noreturn]] void corrupt(position p, std::string_view why) const {
    throw error(errc::region_corrupt, "read", log->dir.string(),
                fmt::format("the record at position {} {} (durable position {})", p, why,
                            log->load(log->meta->durable_position)));
  }

  log_record read() {
    log_state& st = *log;
    for (;;) {
      const position first = st.load(st.meta->first_position);
      if (pos < first)
        throw error(errc::lagged, "read", st.dir.string(),
                    fmt::format("position {} was dropped by retention; the oldest available is {}", pos, first));
      const position limit = options.durable_only ? st.load(st.meta->durable_position) : st.load(st.meta->tail_position);
      if (pos >= limit) return {};
      const position durable_pos = st.load(st.meta->durable_position);
      // Where a reader starts may come from log.meta or a cursor file.
      if (!ll::frame_aligned(pos)) corrupt(pos, "is not at a record boundary");
      const ll::record_header* h = st.header_at(pos, false);
      if (h == nullptr) {
        if (pos < st.load(st.meta->first_position)) continue;  // dropped meanwhile: report it above
        if (pos < durable_pos) corrupt(pos, "lies in a segment file that is missing");
        return {};
      }
      if (!st.committed(*h, pos)) {
        if (pos < durable_pos) corrupt(pos, "has no valid commit word");
        return {};  // claimed, not committed yet
      }
      const frame_check c = st.check_frame(pos, *h);
      if (!c.ok) corrupt(pos, c.shaped ? "fails its CRC32C" : "has an impossible header");
      const position at = pos;
      pos = c.next;
      if (c.type != ll::frame_data) continue;  // padding or an aborted claim
      std::atomic_ref<std::uint64_t>(st.meta->readers[slot].position).store(pos, std::memory_order_relaxed);
      return {{reinterpret_cast<const std::byte*>(h) + ll::frame_header_size, c.length}, at, pos, c.sequence};
    }
  }

  void park() noexcept {
    std::atomic_ref<std::uint64_t>(log->meta->parked_readers).fetch_or(std::uint64_t{1} << slot, std::memory_order_seq_cst);
  }
  void unpark() noexcept {
    std::atomic_ref<std::uint64_t>(log->meta->parked_readers)
        .fetch_and(~(std::uint64_t{1} << slot), std::memory_order_relaxed);
  }
};

}  // namespace detail

log_reader::log_reader(std::unique_ptr<detail::log_reader_state> s) noexcept : m_state(std::move(s)) {}
log_reader::log_reader(log_reader&&) noexcept = default;
log_reader& log_reader::operator=(log_reader&&) noexcept = default;
log_reader::~log_reader() = default;

log_record log_reader::try_next() { return m_state->read(); }
position log_reader::current() const noexcept { return m_state->pos; }

std::vector<log_record> log_reader::available() {
  std::vector<log_record> out;
  while (auto r = m_state->read()) out.push_back(r);
  return out;
}

task<log_record> log_reader::next() {
  detail::log_reader_state& r = *m_state;
  scheduler& s = *r.log->sched;
  if (auto rec = r.read()) co_return rec;
  const auto until = detail::time_after(std::chrono::steady_clock::now(), r.options.spin);
  while (std::chrono::steady_clock::now() < until)
    if (auto rec = r.read()) co_return rec;
  if (!r.bell) {
    // A doorbell only for readers that sleep: try_next() readers need none
    // (and no doorbell server thread).
    r.bell = std::make_unique<event_fd>();
    r.bell_id = detail::process_doorbells::instance().add(*r.bell);
    std::atomic_ref<std::uint64_t>(r.log->meta->readers[r.slot].doorbell_id).store(r.bell_id, std::memory_order_release);
  }
  for (;;) {
    r.park();
    if (auto rec = r.read()) {
      r.unpark();
      co_return rec;
    }
    const bool rung = (co_await r.bell->wait_for(s, std::chrono::milliseconds(100))).has_value();
    r.unpark();
    if (auto rec = r.read()) co_return rec;
    if (!rung) r.log->try_repair(r.pos);  // stuck behind a dead writer's claim?
  }
}

task<void> log_reader::commit() {
  detail::log_reader_state& r = *m_state;
  if (r.cursor.empty())
    throw error(errc::not_supported, "commit", r.log->dir.string(), "this reader has no named cursor");
  const auto path = detail::cursor_path(*r.log, r.cursor);
  const auto tmp = path.string() + ".tmp";
  unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, r.log->options.mode));
  if (!fd) throw_errno(errno, "open", tmp, "cursor");
  const auto c = detail::cursor_bytes(r.pos);
  if (::write(fd.get(), c.data(), c.size()) != static_cast<ssize_t>(c.size())) throw_errno(errno, "write", tmp);
  co_await async_fsync(*r.log->sched, fd.get(), sync_kind::data);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno(errno, "rename", tmp);
  unique_fd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) throw_errno(errno, "open", path.parent_path().string());
  co_await async_fsync(*r.log->sched, dir.get(), sync_kind::full);
}

log_reader byte_log::reader(const from& start, const reader_options& options) {
  auto r = std::make_unique<detail::log_reader_state>();
  r->log = m_state;
  r->options = options;
  switch (start.where) {
    case from::kind::beginning: r->pos = first(); break;
    case from::kind::at:
      detail::require_record_boundary(*m_state, "reader", start.pos);
      r->pos = start.pos;
      break;
    case from::kind::end: r->pos = tail(); break;
    case from::kind::cursor: {
      r->cursor = start.name;
      const auto path = detail::cursor_path(*m_state, start.name);
      r->pos = detail::read_cursor(path).value_or(first());
      break;
    }
  }
  r->slot = m_state->take_slot(m_state->meta->readers, detail::log_layout::reader_slots);
  if (r->slot < 0) throw error(errc::would_block, "reader", m_state->dir.string(), "all 32 reader slots are taken");
  return log_reader(std::move(r));
}

std::vector<cursor_info> byte_log::cursors() const {
  std::vector<cursor_info> out;
  for (const auto& e : std::filesystem::directory_iterator(m_state->dir / "cursors")) {
    const auto name = e.path().filename().string();
    if (!name.ends_with(".cursor")) continue;
    const auto pos = detail::read_cursor(e.path());
    if (pos) out.push_back({name.substr(0, name.size() - 7), *pos});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

void byte_log::reset_cursor(std::string_view name, position p) {
  detail::require_record_boundary(*m_state, "reset cursor", p);
  detail::write_cursor_now(*m_state, detail::cursor_path(*m_state, name), p);
}

bool byte_log::remove_cursor(std::string_view name) {
  const auto path = detail::cursor_path(*m_state, name);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return false;
    throw_errno(errno, "unlink", path.string(), "cursor");
  }
  m_state->sync_directory();
  return true;
}

}  // namespace shmbus
