// Durable log: appends, group commit, recovery, retention (docs/LOG.md).
//
// Invariants:
//   - positions only grow; a record never spans two segments; a segment is
//     created (fallocated, linked, directory fsynced) and mapped before any
//     claim reaches into it, so a failed allocation leaves the tail alone;
//   - the durable position only grows, and only over a prefix of committed
//     records whose bytes an fdatasync has covered: every record before it
//     is whole and has a good CRC on stable storage;
//   - recovery runs only in a process that holds the log's lock alone
//     (flock LOCK_EX on log.meta: the kernel drops a dead process's lock),
//     so it never cuts a record that a live writer is still writing;
//   - log.meta itself is never fsynced on the append path: after a machine
//     crash its tail and durable words may be stale (older), and recovery
//     scans forward from the durable word it finds, so a stale value only
//     costs scanning.
#include <shmbus/log.hpp>

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/region.hpp>
#include <shmbus/scheduler.hpp>

#include "core/cas128.hpp"
#include "core/crc32c.hpp"
#include "core/syscall.hpp"
#include "log/log_state.hpp"
#include "ring/ring.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <ctime>

namespace shmbus {
namespace detail {

namespace ll = log_layout;

namespace {

std::uint64_t realtime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t random_salt() {
  std::uint64_t salt = 0;
  while (salt == 0)
    if (::getrandom(&salt, sizeof salt, 0) != sizeof salt) throw_errno(errno, "getrandom", "log salt");
  return salt;
}

std::uint32_t record_crc(const ll::record_header& h, std::span<const std::byte> payload) noexcept {
  const std::uint32_t head = crc32c({reinterpret_cast<const std::byte*>(&h), 16});
  return crc32c(payload, head);
}

}  // namespace

// ---- log_state: segments and the shared words ------------------------------------

std::filesystem::path log_state::segment_path(std::uint64_t index) const {
  return dir / fmt::format("{:020}.seg", index * segment_size);
}

segment_map* log_state::segment(std::uint64_t index, bool create) {
  if (index == last_segment_index) return last_segment;
  if (auto it = segments.find(index); it != segments.end()) {
    last_segment_index = index;
    last_segment = it->second.get();
    return last_segment;
  }
  const auto path = segment_path(index);
  std::error_code ec;
  const bool exists = std::filesystem::exists(path, ec);
  if (!exists && !create) return nullptr;
  auto seg = std::make_unique<segment_map>();
  seg->start = index * segment_size;
  seg->file = region::open_file(path, segment_size, create ? open_mode::open_or_create : open_mode::open_only,
                                access_mode::read_write, options.mode);
  if (seg->file.size() < segment_size)
    throw error(errc::region_corrupt, "open segment", path.string(),
                fmt::format("{} bytes, the log's segments have {}", seg->file.size(), segment_size));
  if (seg->file.created()) {
    sync_directory();
    enforce_retention();
  }
  auto* raw = seg.get();
  segments.emplace(index, std::move(seg));
  last_segment_index = index;
  last_segment = raw;
  return raw;
}

void log_state::forget_segment(std::uint64_t index) noexcept {
  if (index == last_segment_index) {
    last_segment_index = ~std::uint64_t{0};
    last_segment = nullptr;
  }
  segments.erase(index);
}

void log_state::sync_directory() {
  if (::fsync(dir_fd.get()) != 0) throw_errno(errno, "fsync", dir.string(), "the log directory");
}

std::uint64_t log_state::load(std::uint64_t& word) const noexcept {
  return std::atomic_ref<std::uint64_t>(word).load(std::memory_order_acquire);
}

ll::record_header& log_state::header_for_write(position p) {
  segment_map& seg = *segment(p / segment_size, true);  // never null when creating
  return *reinterpret_cast<ll::record_header*>(seg.file.bytes().data() + (p % segment_size));
}

ll::record_header* log_state::header_at(position p, bool create) {
  segment_map* seg = segment(p / segment_size, create);
  if (seg == nullptr) return nullptr;
  return reinterpret_cast<ll::record_header*>(seg->file.bytes().data() + (p % segment_size));
}

bool log_state::committed(const ll::record_header& h, position p) const noexcept {
  return std::atomic_ref<const std::uint64_t>(h.commit).load(std::memory_order_seq_cst) == (p ^ salt);
}

frame_check log_state::check_frame(position p, const ll::record_header& h) const noexcept {
  frame_check c;
  const std::uint64_t offset = p % segment_size;
  c.length = std::atomic_ref<const std::uint32_t>(h.length).load(std::memory_order_relaxed);
  c.type = std::atomic_ref<const std::uint16_t>(h.type).load(std::memory_order_relaxed);
  c.sequence = std::atomic_ref<const std::uint64_t>(h.sequence).load(std::memory_order_relaxed);
  if (c.type == ll::frame_padding) {
    c.shaped = offset + ll::frame_header_size + c.length == segment_size;
    c.next = p + (segment_size - offset);
  } else if (c.type == ll::frame_data || c.type == ll::frame_aborted) {
    c.shaped = c.length <= max_record && offset + ll::frame_size(c.length) <= segment_size;
    c.next = p + ll::frame_size(c.length);
  }
  if (!c.shaped) return c;
  const std::byte* payload = reinterpret_cast<const std::byte*>(&h) + ll::frame_header_size;
  const std::uint32_t want = std::atomic_ref<const std::uint32_t>(h.crc32c).load(std::memory_order_relaxed);
  c.crc_ok = record_crc(h, {payload, c.type == ll::frame_padding ? 0 : c.length}) == want;
  c.ok = c.crc_ok;
  return c;
}

prefix log_state::walk_records(position from_pos, std::uint64_t sequence, position limit, bool crc_required) {
  prefix r{from_pos, sequence, 0};
  if (!ll::frame_aligned(from_pos)) return r;  // not a record boundary: the callers report it
  while (r.end < limit) {
    const ll::record_header* h = header_at(r.end, false);
    if (h == nullptr || !committed(*h, r.end)) break;
    const frame_check c = check_frame(r.end, *h);
    if (!(crc_required ? c.ok : c.shaped)) break;
    if (c.type != ll::frame_padding) {
      r.sequence = c.sequence + 1;
      ++r.records;
    }
    r.end = c.next;
  }
  return r;
}

prefix log_state::committed_prefix(position from_pos, std::uint64_t sequence) {
  return walk_records(from_pos, sequence, load(meta->tail_position), true);
}

void log_state::advance_durable(const prefix& p) noexcept {
  std::uint64_t pos = load(meta->durable_position);
  std::uint64_t seq = load(meta->durable_sequence);
  while (pos < p.end && !cas128(&meta->durable_position, pos, seq, p.end, p.sequence)) {
  }
}

void log_state::wake_readers() noexcept {
  auto parked = std::atomic_ref<std::uint64_t>(meta->parked_readers);
  std::uint64_t bits = parked.load(std::memory_order_seq_cst);
  if (bits == 0) return;
  bits = parked.fetch_and(~bits, std::memory_order_acq_rel) & bits;
  while (bits != 0) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(bits));
    // A bit past the reader slots was set by a process that does not
    // follow the layout: it names no slot (and the bits go up from here).
    if (i >= ll::reader_slots) break;
    bits &= bits - 1;
    ll::slot& s = meta->readers[i];
    doorbell_cache::owner o;
    o.incarnation = (std::uint64_t{std::atomic_ref<std::uint32_t>(s.generation).load(std::memory_order_acquire)} << 32) |
                    std::atomic_ref<std::uint32_t>(s.state).load(std::memory_order_acquire);
    o.process = process_identity(std::atomic_ref<std::int32_t>(s.pid).load(std::memory_order_relaxed),
                                 std::atomic_ref<std::uint64_t>(s.start_time).load(std::memory_order_relaxed));
    o.doorbell_id = std::atomic_ref<std::uint64_t>(s.doorbell_id).load(std::memory_order_acquire);
    reader_bells.ring(i, o);
  }
}

int log_state::take_slot(ll::slot* slots, std::uint32_t count) noexcept {
  const process_identity me = self;
  for (std::uint32_t i = 0; i < count; ++i) {
    auto word = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(&slots[i]));
    std::uint64_t w = word.load(std::memory_order_acquire);
    bool dead = false;
    if (static_cast<std::uint32_t>(w) == 1) {
      const process_identity owner(std::atomic_ref<std::int32_t>(slots[i].pid).load(std::memory_order_relaxed),
                                   std::atomic_ref<std::uint64_t>(slots[i].start_time).load(std::memory_order_relaxed));
      dead = owner.pid != 0 && !is_alive(owner);
    }
    if (static_cast<std::uint32_t>(w) != 0 && !dead) continue;
    const std::uint64_t taken = ((w >> 32) + 1) << 32 | 1u;
    if (!word.compare_exchange_strong(w, taken, std::memory_order_acq_rel)) continue;
    std::atomic_ref<std::int32_t>(slots[i].pid).store(me.pid, std::memory_order_relaxed);
    std::atomic_ref<std::uint64_t>(slots[i].start_time).store(me.start_time, std::memory_order_release);
    return static_cast<int>(i);
  }
  return -1;
}

void log_state::free_slot(ll::slot& s) noexcept {
  auto word = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(&s));
  const std::uint64_t w = word.load(std::memory_order_relaxed);
  std::atomic_ref<std::uint64_t>(s.doorbell_id).store(0, std::memory_order_relaxed);
  word.store(w & ~std::uint64_t{0xffffffff}, std::memory_order_release);
}

// ---- appending ------------------------------------------------------------------

position log_state::append(std::span<const std::byte> bytes) {
  if (bytes.size() > max_record)
    throw error(errc::bad_size, "append", dir.string(),
                fmt::format("a record of {} bytes; the log's maximum is {}", bytes.size(), max_record));
  const auto length = static_cast<std::uint32_t>(bytes.size());
  const std::uint64_t frame_bytes = ll::frame_size(length);
  std::uint64_t pos = load(meta->tail_position);
  std::uint64_t seq = load(meta->tail_sequence);
  std::uint64_t need = 0;
  ll::slot& me = meta->writers[writer_slot];
  for (;;) {
    // Every claim starts on a frame start (docs/LOG.md): a claim word that
    // does not was written by a process that does not follow the layout,
    // and records claimed from it would sit where no reader looks, their
    // commit words unaligned.
    if (!ll::frame_aligned(pos)) {
      std::atomic_ref<std::uint64_t>(me.position).store(~std::uint64_t{0}, std::memory_order_release);
      throw error(errc::region_corrupt, "append", dir.string(), "the claim word is not at a frame boundary");
    }
    const std::uint64_t offset = pos % segment_size;
    const std::uint64_t room = segment_size - offset;
    need = frame_bytes <= room ? frame_bytes : room + frame_bytes;
    // Both segments the claim touches exist and are mapped before the claim:
    // a full disk fails here, with nothing claimed.
    segment(pos / segment_size, true);
    if (need != frame_bytes) segment(pos / segment_size + 1, true);
    std::atomic_ref<std::uint64_t>(me.length).store(need, std::memory_order_relaxed);
    std::atomic_ref<std::uint64_t>(me.sequence).store(seq, std::memory_order_relaxed);
    std::atomic_ref<std::uint64_t>(me.position).store(pos, std::memory_order_relaxed);
    if (cas128(&meta->tail_position, pos, seq, pos + need, seq + 1)) break;
  }
  position at = pos;
  if (need != frame_bytes) {
    const std::uint64_t padding = need - frame_bytes;
    ll::record_header& pad = header_for_write(pos);
    pad.length = static_cast<std::uint32_t>(padding - ll::frame_header_size);
    pad.type = ll::frame_padding;
    pad.writer = static_cast<std::uint16_t>(writer_slot);
    pad.sequence = seq;
    pad.reserved = 0;
    pad.crc32c = record_crc(pad, {});
    std::atomic_ref<std::uint64_t>(pad.commit).store(pos ^ salt, std::memory_order_release);
    at = pos + padding;
  }
  ll::record_header& h = header_for_write(at);
  h.length = length;
  h.type = ll::frame_data;
  h.writer = static_cast<std::uint16_t>(writer_slot);
  h.sequence = seq;
  h.reserved = 0;
  std::byte* payload = reinterpret_cast<std::byte*>(&h) + ll::frame_header_size;
  if (length != 0) std::memcpy(payload, bytes.data(), length);
  h.crc32c = record_crc(h, {payload, length});
  std::atomic_ref<std::uint64_t>(h.commit).store(at ^ salt, std::memory_order_seq_cst);
  std::atomic_ref<std::uint64_t>(me.position).store(~std::uint64_t{0}, std::memory_order_release);
  wake_readers();
  ++appended_since_sync;
  prepare_ahead(at + frame_bytes);
  return at;
}

void log_state::prepare_ahead(position end) noexcept {
  // Past the middle of a segment, make sure the next one exists and its
  // pages are in memory, so that the append crossing into it does not pay
  // for fallocate and page faults. Best effort: the record is already
  // appended, and a failure here (a full disk) is reported by the append
  // that needs the segment, before it claims anything.
  const std::uint64_t index = end / segment_size;
  if (end % segment_size < segment_size / 2 || segments.count(index + 1) != 0) return;
  segment_map* next = nullptr;
  try {
    next = segment(index + 1, true);
  } catch (const std::exception&) {
    return;
  }
  ::madvise(next->file.data(), segment_size, MADV_WILLNEED);
#ifdef MADV_POPULATE_READ
  ::madvise(next->file.data(), segment_size, MADV_POPULATE_READ);
#endif
}

// ---- dead writers ---------------------------------------------------------------------

bool log_state::try_repair(position p) noexcept {
  // Only a claim whose writer is dead is repaired, and only when no live
  // writer's intent names the same position (a writer that died before
  // its CAS succeeded leaves an intent for a position someone else took).
  int dead_slot = -1;
  for (std::uint32_t i = 0; i < ll::writer_slots; ++i) {
    ll::slot& w = meta->writers[i];
    if (std::atomic_ref<std::uint32_t>(w.state).load(std::memory_order_acquire) != 1) continue;
    if (std::atomic_ref<std::uint64_t>(w.position).load(std::memory_order_acquire) != p) continue;
    const process_identity owner(std::atomic_ref<std::int32_t>(w.pid).load(std::memory_order_relaxed),
                                 std::atomic_ref<std::uint64_t>(w.start_time).load(std::memory_order_relaxed));
    if (owner.pid == 0 || is_alive(owner)) return false;
    dead_slot = static_cast<int>(i);
  }
  if (dead_slot < 0) return false;
  ll::slot& w = meta->writers[dead_slot];
  const std::uint64_t length = std::atomic_ref<std::uint64_t>(w.length).load(std::memory_order_relaxed);
  const std::uint64_t sequence = std::atomic_ref<std::uint64_t>(w.sequence).load(std::memory_order_relaxed);
  const std::uint64_t offset = p % segment_size;
  const std::uint64_t room = segment_size - offset;
  if (length < ll::frame_header_size || !ll::frame_aligned(length) || length > room + segment_size ||
      p + length > load(meta->tail_position))
    return false;  // not an intent this library writes: leave it to recovery
  try {
    const auto write = [&](position at, std::uint64_t bytes, std::uint16_t type) {
      ll::record_header& h = header_for_write(at);
      h.length = static_cast<std::uint32_t>(bytes - ll::frame_header_size);
      h.type = type;
      h.writer = static_cast<std::uint16_t>(dead_slot);
      h.sequence = sequence;
      h.reserved = 0;
      const std::byte* payload = reinterpret_cast<const std::byte*>(&h) + ll::frame_header_size;
      h.crc32c = record_crc(h, {payload, type == ll::frame_padding ? 0 : h.length});
      std::atomic_ref<std::uint64_t>(h.commit).store(at ^ salt, std::memory_order_seq_cst);
    };
    if (length > room) {
      write(p, room, ll::frame_padding);
      write(p + room, length - room, ll::frame_aborted);
    } else {
      write(p, length, ll::frame_aborted);
    }
  } catch (const std::exception&) {
    return false;
  }
  std::atomic_ref<std::uint64_t>(w.position).store(~std::uint64_t{0}, std::memory_order_release);
  wake_readers();
  return true;
}

// ---- durability --------------------------------------------------------------------

struct sync_waiter {
  log_state* st;
  bool await_ready() const noexcept { return !st->sync_in_flight; }
  void await_suspend(std::coroutine_handle<> h) { st->sync_waiters.push_back(h); }
  void await_resume() const noexcept {}
};

task<void> log_state::sync_to(std::shared_ptr<log_state> self, position target) {
  log_state& st = *self;
  int stalls = 0;
  bool yielded = false;
  while (st.load(st.meta->durable_position) < target) {
    if (st.sync_in_flight) {
      co_await sync_waiter{&st};
      continue;
    }
    if (!yielded) {
      // One turn of the loop before issuing a sync, so that the coroutines
      // ready now (a burst of appends, the writers the last sync resumed)
      // append first and this sync covers them too: without it a sync
      // covered about half of what was ready (bench_log: 1 fsync per 32
      // records with 64 writers, against 1 per 64 for a hand-written loop).
      yielded = true;
      co_await st.sched->schedule();
      continue;
    }
    const prefix p = st.committed_prefix(st.load(st.meta->durable_position), st.load(st.meta->durable_sequence));
    const position from_pos = st.load(st.meta->durable_position);
    if (!ll::frame_aligned(from_pos))
      throw error(errc::region_corrupt, "sync", st.dir.string(),
                  fmt::format("log.meta's durable position {} is not at a record boundary", from_pos));
    if (p.end <= from_pos) {
      // The next record is claimed by a writer that has not committed it
      // yet: let it run; if it is dead, its claim becomes an aborted frame.
      if (++stalls < 64)
        co_await st.sched->schedule();
      else if (!st.try_repair(from_pos))
        co_await st.sched->sleep_for(std::chrono::microseconds(200));
      continue;
    }
    stalls = 0;
    st.sync_in_flight = true;
    struct done_guard {
      log_state& s;
      ~done_guard() {
        s.sync_in_flight = false;
        for (auto h : s.sync_waiters) s.sched->enqueue(h);
        s.sync_waiters.clear();
      }
    } guard{st};
    for (std::uint64_t index = from_pos / st.segment_size; index * st.segment_size < p.end; ++index) {
      segment_map* seg = st.segment(index, false);
      if (seg == nullptr) continue;
      const std::uint64_t lo = std::max(from_pos, seg->start) - seg->start;
      const std::uint64_t hi = std::min(p.end, seg->start + st.segment_size) - seg->start;
      co_await async_fsync(*st.sched, seg->file.fd(), sync_kind::data, lo, hi - lo);
    }
    ++st.syncs;
    st.appended_since_sync = 0;
    st.advance_durable(p);
    st.wake_readers();
  }
}

task<void> log_state::background_sync(std::shared_ptr<log_state> self) {
  log_state& st = *self;
  for (;;) {
    co_await st.sched->sleep_for(st.options.sync_every);
    const position tail = st.load(st.meta->tail_position);
    if (st.load(st.meta->durable_position) < tail) co_await sync_to(self, st.committed_prefix(st.load(st.meta->durable_position), 0).end);
  }
}

// ---- retention ----------------------------------------------------------------------

std::size_t log_state::enforce_retention() {
  if (options.retain_bytes == 0 && options.retain_age.count() == 0) return 0;
  std::vector<std::uint64_t> starts;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.size() != 24 || !name.ends_with(".seg")) continue;
    starts.push_back(std::strtoull(name.c_str(), nullptr, 10));
  }
  std::sort(starts.begin(), starts.end());
  const position durable_pos = load(meta->durable_position);
  std::size_t dropped = 0;
  std::uint64_t total = starts.size() * segment_size;
  const auto now = std::filesystem::file_time_type::clock::now();
  for (std::size_t i = 0; i + 1 < starts.size(); ++i) {
    const std::uint64_t end = starts[i] + segment_size;
    if (end > durable_pos) break;  // never drop what is not durable
    const auto path = dir / fmt::format("{:020}.seg", starts[i]);
    bool too_old = false;
    if (options.retain_age.count() > 0) {
      std::error_code ec;
      const auto written = std::filesystem::last_write_time(path, ec);
      too_old = !ec && now - written > options.retain_age;
    }
    const bool too_big = options.retain_bytes != 0 && total > options.retain_bytes;
    if (!too_old && !too_big) break;
    // first_position moves first: a reader that sees the old value may
    // still find the file unlinked, and then reports the new first.
    std::uint64_t first = load(meta->first_position);
    while (first < end && !std::atomic_ref<std::uint64_t>(meta->first_position).compare_exchange_weak(first, end)) {
    }
    ::unlink(path.c_str());
    forget_segment(starts[i] / segment_size);
    total -= segment_size;
    ++dropped;
  }
  if (dropped != 0) sync_directory();
  return dropped;
}

// ---- opening and recovery --------------------------------------------------------------

void log_state::initialize(const log_options& o) {
  if (!std::has_single_bit(o.segment_size) || o.segment_size < ll::min_segment_size ||
      o.segment_size > ll::max_segment_size)
    throw error(errc::bad_size, "create log", dir.string(),
                fmt::format("segment_size {} is not a power of two in [64 KiB, 16 GiB]", o.segment_size));
  if (o.max_record > o.segment_size - ll::frame_header_size)
    throw error(errc::bad_size, "create log", dir.string(),
                fmt::format("max_record {} does not fit a segment of {} bytes", o.max_record, o.segment_size));
  meta->version = ll::version;
  meta->kind = ll::kind_log;
  meta->segment_size = o.segment_size;
  meta->max_record = o.max_record;
  meta->commit_salt = random_salt();
  meta->created_ns = realtime_ns();
  if (o.type.size != 0) {
    meta->type_size = o.type.size;
    meta->type_align = o.type.align;
    meta->type_hash = fnv1a_64(o.type.name);
    std::memcpy(meta->type_name, o.type.name.data(), std::min(o.type.name.size(), sizeof meta->type_name - 1));
  }
  std::atomic_ref<std::uint64_t>(meta->magic).store(ll::meta_magic, std::memory_order_release);
  meta_file.sync(0, meta_file.size());
  sync_directory();
}

void log_state::validate() {
  const auto fail = [&](std::string_view what) { throw error(errc::region_corrupt, "open log", dir.string(), what); };
  if (load(meta->magic) != ll::meta_magic) fail("log.meta is not a shmbus log (bad magic)");
  if (meta->version != ll::version)
    throw error(errc::version_mismatch, "open log", dir.string(),
                fmt::format("log layout version {}, this library reads {}", meta->version, ll::version));
  if (meta->kind != ll::kind_log) fail("log.meta has the wrong kind");
  segment_size = meta->segment_size;
  max_record = meta->max_record;
  salt = meta->commit_salt;
  if (!std::has_single_bit(segment_size) || segment_size < ll::min_segment_size || segment_size > ll::max_segment_size)
    fail(fmt::format("segment size {} is invalid", segment_size));
  if (max_record > segment_size - ll::frame_header_size) fail("max_record does not fit a segment");
  if (salt == 0) fail("commit salt is zero");
  // Positions that name where records start; readers and recovery begin at
  // them. (The claim word is checked by each append.)
  const position first = load(meta->first_position);
  const position durable = load(meta->durable_position);
  if (first % segment_size != 0 || !ll::frame_aligned(durable) || first > durable)
    fail(fmt::format("log.meta's first position {} and durable position {} are not record boundaries in order",
                     first, durable));
}

void log_state::check_durable_boundary() {
  // Segments start with a record, and records never span two: walking from
  // the start of the durable position's segment must land on it exactly.
  // Otherwise log.meta's durable word is not one this library wrote, and
  // recovering from it would cut whole records after it.
  // Shape and commit only: a record that fails its CRC is still a record,
  // reported to whoever reads it.
  const position durable = report.durable;
  const position q = walk_records(durable - durable % segment_size, 0, durable, false).end;
  if (q != durable)
    throw error(errc::region_corrupt, "open log", dir.string(),
                fmt::format("log.meta's durable position {} is not where a record starts (the records of its "
                            "segment lead to {})",
                            durable, q));
}

void log_state::recover() {
  // Alone: nobody appends. Walk from the durable position while records are
  // committed, whole and have good CRCs; cut the rest.
  report.scanned = true;
  report.durable = load(meta->durable_position);
  report.previous_tail = load(meta->tail_position);
  check_durable_boundary();
  // No bound but the records themselves: claims may reach past the tail
  // that log.meta recorded if its page was not written back.
  const prefix walked = walk_records(report.durable, load(meta->durable_sequence), ~position{0}, true);
  const position p = walked.end;
  const std::uint64_t sequence = walked.sequence;
  report.records_after_durable = walked.records;
  report.recovered_tail = p;
  report.bytes_cut = report.previous_tail > p ? report.previous_tail - p : 0;
  // Zero what follows in p's segment (a torn record, or a claim never
  // committed), so that no stale commit word survives, and drop later
  // segments: nothing in them was ever whole.
  if (segment_map* seg = segment(p / segment_size, false)) {
    const std::uint64_t offset = p % segment_size;
    std::byte* base = seg->file.bytes().data();
    std::uint64_t end = offset;
    // Zero up to the last non-zero byte: claims may reach past the tail
    // that log.meta recorded if its page was not written back.
    for (std::uint64_t i = offset; i < segment_size; i += 4096) {
      const std::uint64_t chunk = std::min<std::uint64_t>(4096, segment_size - i);
      bool zero = true;
      for (std::uint64_t k = 0; k < chunk && zero; k += 8) {
        std::uint64_t w;
        std::memcpy(&w, base + i + k, 8);
        zero = w == 0;
      }
      if (!zero) end = i + chunk;
    }
    if (end > offset) {
      std::memset(base + offset, 0, end - offset);
      seg->file.sync(0, seg->file.size());
    }
  }
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.size() != 24 || !name.ends_with(".seg")) continue;
    const std::uint64_t start = std::strtoull(name.c_str(), nullptr, 10);
    if (start > p - p % segment_size) {
      forget_segment(start / segment_size);
      ::unlink(e.path().c_str());
    }
  }
  // What survived is whole: make it durable now.
  if (p > report.durable) {
    for (std::uint64_t index = report.durable / segment_size, last = (p - 1) / segment_size; index <= last; ++index)
      if (segment_map* seg = segment(index, false)) seg->file.sync(0, seg->file.size());
  }
  std::uint64_t tp = load(meta->tail_position);
  std::uint64_t ts = load(meta->tail_sequence);
  while (!cas128(&meta->tail_position, tp, ts, p, sequence)) {
  }
  std::uint64_t dp = load(meta->durable_position);
  std::uint64_t ds = load(meta->durable_sequence);
  while (!cas128(&meta->durable_position, dp, ds, p, sequence)) {
  }
  std::atomic_ref<std::uint64_t>(meta->parked_readers).store(0);
  for (auto& s : meta->writers) free_slot(s);
  for (auto& s : meta->readers) free_slot(s);
  meta_file.sync(0, meta_file.size());
  sync_directory();
}

}  // namespace detail

std::string recovery_report::summary() const {
  if (!scanned) return "not scanned (another handle holds the log open)";
  return fmt::format("durable position {}, {} whole records after it kept, tail {} (was {}), {} bytes cut", durable,
                     records_after_durable, recovered_tail, previous_tail, bytes_cut);
}

// ---- byte_log ---------------------------------------------------------------------------

byte_log byte_log::open(scheduler& s, const std::filesystem::path& dir, const log_options& options,
                        const payload_type& expected) {
  byte_log log = open(s, dir, options);
  const auto& m = *log.m_state->meta;
  const std::uint64_t hash = expected.size != 0 ? detail::fnv1a_64(expected.name) : 0;
  if (m.type_size != expected.size || m.type_align != expected.align || m.type_hash != hash)
    throw error(errc::type_mismatch, "open log", dir.string(),
                fmt::format("the log holds '{}' (size {}), expected '{}' (size {})",
                            std::string_view(m.type_name, ::strnlen(m.type_name, sizeof m.type_name)), m.type_size,
                            expected.name, expected.size));
  return log;
}

byte_log byte_log::open(scheduler& s, const std::filesystem::path& dir, const log_options& options) {
  auto st = std::make_shared<detail::log_state>();
  st->sched = &s;
  st->dir = dir;
  st->options = options;
  std::error_code ec;
  std::filesystem::create_directories(dir / "cursors", ec);
  if (ec) throw error(ec, "create log directory", dir.string());
  st->dir_fd.reset(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!st->dir_fd) throw_errno(errno, "open", dir.string(), "the log directory");
  st->meta_file = region::open_file(dir / "log.meta", detail::log_layout::meta_size, open_mode::open_or_create,
                                    access_mode::read_write, options.mode);
  if (st->meta_file.size() < detail::log_layout::meta_size)
    throw error(errc::region_corrupt, "open log", dir.string(), "log.meta is truncated");
  st->meta = reinterpret_cast<detail::log_layout::meta*>(st->meta_file.data());
  st->self = detail::process_identity::self();
  const int fd = st->meta_file.fd();
  if (detail::retry_on_eintr([&] { return ::flock(fd, LOCK_EX | LOCK_NB); }) == 0) {
    // Alone with the log: create it, or recover it.
    if (st->load(st->meta->magic) == 0) st->initialize(options);
    st->validate();
    st->recover();
    if (detail::retry_on_eintr([&] { return ::flock(fd, LOCK_SH); }) != 0) throw_errno(errno, "flock", dir.string());
  } else {
    if (errno != EWOULDBLOCK) throw_errno(errno, "flock", dir.string());
    // Blocks only while a first opener initialises or recovers.
    if (detail::retry_on_eintr([&] { return ::flock(fd, LOCK_SH); }) != 0) throw_errno(errno, "flock", dir.string());
    st->validate();
  }
  st->writer_slot = st->take_slot(st->meta->writers, detail::log_layout::writer_slots);
  if (st->writer_slot < 0) throw error(errc::would_block, "open log", dir.string(), "all 16 writer slots are taken");
  if (options.sync_every.count() > 0) {
    s.spawn(detail::log_state::background_sync(st).with_stop_token(st->stop.get_token()));
  }
  return byte_log(std::move(st));
}

byte_log::byte_log(std::shared_ptr<detail::log_state> s) noexcept : m_state(std::move(s)) {}
byte_log::byte_log(byte_log&&) noexcept = default;
byte_log& byte_log::operator=(byte_log&&) noexcept = default;
byte_log::~byte_log() {
  if (m_state) {
    m_state->stop.request_stop();
    if (m_state->writer_slot >= 0) m_state->free_slot(m_state->meta->writers[m_state->writer_slot]);
  }
}

position byte_log::try_append(std::span<const std::byte> record) {
  const position p = m_state->append(record);
  const auto& o = m_state->options;
  if (o.sync_every_records != 0 && m_state->appended_since_sync >= o.sync_every_records && !m_state->sync_in_flight) {
    m_state->appended_since_sync = 0;
    m_state->sched->spawn(detail::log_state::sync_to(m_state, m_state->load(m_state->meta->tail_position)));
  }
  return p;
}

task<position> byte_log::append(std::span<const std::byte> record, durability d) {
  const position p = try_append(record);
  if (d == durability::sync)
    co_await detail::log_state::sync_to(m_state, p + detail::log_layout::frame_size(record.size()));
  co_return p;
}

task<void> byte_log::sync() {
  const auto target = m_state->committed_prefix(m_state->load(m_state->meta->durable_position), 0).end;
  co_await detail::log_state::sync_to(m_state, target);
}

std::size_t byte_log::enforce_retention() { return m_state->enforce_retention(); }
position byte_log::first() const noexcept { return m_state->load(m_state->meta->first_position); }
position byte_log::tail() const noexcept { return m_state->load(m_state->meta->tail_position); }
position byte_log::durable() const noexcept { return m_state->load(m_state->meta->durable_position); }
const recovery_report& byte_log::recovery() const noexcept { return m_state->report; }
const std::filesystem::path& byte_log::directory() const noexcept { return m_state->dir; }
std::uint64_t byte_log::syncs_issued() const noexcept { return m_state->syncs; }

}  // namespace shmbus
