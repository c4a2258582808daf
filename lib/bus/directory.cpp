// The bus directory protocol (directory.hpp has the state machines and the
// identity rule; docs/BUS.md the reasoning).
//
// Recording a channel, and why duplicates cannot survive. Two processes may
// record the same name at once (two openers healing a missing entry, or a
// creator racing an opener), each taking a different free entry. So after
// storing its entry `active` (seq_cst), a recorder scans every other entry
// (seq_cst loads) for an active one with the same name: it frees any such
// entry with a higher index, and frees its own entry if it finds one with a
// lower index. Of two racing recorders, the seq_cst store-then-load order
// guarantees at least one sees the other, and whichever sees it makes the
// higher-indexed entry go; the lowest-indexed entry of a name is never
// freed by this rule, so exactly one remains.
#include "bus/directory.hpp"

#include <shmbus/detail/ring_layout.hpp>
#include <shmbus/error.hpp>

#include <fmt/format.h>

#include <time.h>

#include <atomic>
#include <cstring>
#include <thread>

namespace shmbus::detail {
namespace {

namespace bl = bus_layout;

// Every shared word is accessed through atomic_ref, also for plain reads:
// other processes may write it at any time.
template <class T>
std::atomic_ref<T> shared(T& word) noexcept {
  return std::atomic_ref<T>(word);
}
template <class T>
T load(const T& word, std::memory_order order = std::memory_order_relaxed) noexcept {
  return std::atomic_ref<T>(const_cast<T&>(word)).load(order);
}

constexpr auto acquire = std::memory_order_acquire;

[[noreturn]] void corrupt(std::string_view object, std::string_view detail) {
  throw error(errc::region_corrupt, "open bus", object, detail);
}

struct geometry {
  std::uint64_t channel_offset = 0;
  std::uint64_t participant_offset = 0;
  std::uint64_t region_size = 0;
};

constexpr geometry compute_geometry(std::uint32_t channels, std::uint32_t participants) noexcept {
  geometry g;
  g.channel_offset = bl::header_size;
  g.participant_offset = g.channel_offset + std::uint64_t{channels} * bl::channel_entry_size;
  g.region_size = g.participant_offset + std::uint64_t{participants} * bl::participant_entry_size;
  return g;
}

void encode_name(bl::channel_entry& e, std::string_view name) noexcept {
  char bytes[bl::name_bytes] = {};
  std::memcpy(bytes, name.data(), std::min(name.size(), bl::name_bytes - 1));
  for (std::size_t k = 0; k < bl::name_bytes / 8; ++k) {
    std::uint64_t w = 0;
    std::memcpy(&w, bytes + 8 * k, 8);
    shared(e.name[k]).store(w, std::memory_order_relaxed);
  }
}

}  // namespace

bool valid_bus_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 48 || name.front() == '-') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::uint64_t realtime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

// ---- creating and opening ------------------------------------------------------

std::size_t directory::region_size(std::uint32_t channels, std::uint32_t participants) noexcept {
  return compute_geometry(channels, participants).region_size;
}

void directory::initialize(std::span<std::byte> bytes, std::uint32_t channels, std::uint32_t participants,
                           const process_identity& creator) noexcept {
  const geometry g = compute_geometry(channels, participants);
  auto& h = *reinterpret_cast<bl::directory_header*>(bytes.data());
  // Nobody reads these before the magic: plain stores, then the release.
  h.version = bl::directory_version;
  h.kind = bl::kind_directory;
  h.region_size = g.region_size;
  h.channel_entries = channels;
  h.channel_entry_size = bl::channel_entry_size;
  h.channel_offset = g.channel_offset;
  h.participant_entries = participants;
  h.participant_entry_size = bl::participant_entry_size;
  h.participant_offset = g.participant_offset;
  h.created_ns = realtime_ns();
  h.creator_pid = creator.pid;
  h.creator_start_time = creator.start_time;
  // Every entry is free at generation 0: the zero-filled object already says so.
  // release: pairs with the opener's acquire of the magic.
  shared(h.magic).store(bl::directory_magic, std::memory_order_release);
}

directory directory::attach(region r, std::chrono::milliseconds init_timeout) {
  const std::string object = r.name();
  if (r.size() < bl::header_size)
    corrupt(object, fmt::format("{} B is smaller than a bus directory header, not a bus directory", r.size()));
  auto& h = *reinterpret_cast<bl::directory_header*>(r.data());

  // A creator stores the magic last; until then the page reads as zeros.
  // acquire: pairs with initialize()'s release.
  std::uint64_t magic = load(h.magic, std::memory_order_acquire);
  if (magic == 0) {
    const auto deadline = std::chrono::steady_clock::now() + init_timeout;
    while ((magic = load(h.magic, std::memory_order_acquire)) == 0) {
      if (std::chrono::steady_clock::now() >= deadline)
        throw error(errc::timed_out, "open bus", object,
                    fmt::format("the directory was not initialised within {} ms (its creator died?); "
                                "bus::remove() deletes it",
                                init_timeout.count()));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  if (magic != bl::directory_magic) {
    if (magic == layout::channel_magic) corrupt(object, "a shmbus channel, not a bus directory");
    corrupt(object, fmt::format("not a shmbus bus directory (magic {:#018x})", magic));
  }
  // Read each field once; check the copies; use only the copies.
  const std::uint32_t version = load(h.version);
  if (version != bl::directory_version)
    throw error(errc::version_mismatch, "open bus", object,
                fmt::format("directory layout version {}, this library reads {}", version, bl::directory_version));
  const std::uint32_t kind = load(h.kind);
  if (kind != bl::kind_directory) corrupt(object, fmt::format("region kind {} is not a bus directory", kind));
  const std::uint32_t channels = load(h.channel_entries);
  const std::uint32_t participants = load(h.participant_entries);
  if (channels == 0 || channels > bl::max_entries || participants == 0 || participants > bl::max_entries)
    corrupt(object, fmt::format("entry counts {} / {}", channels, participants));
  if (load(h.channel_entry_size) != bl::channel_entry_size ||
      load(h.participant_entry_size) != bl::participant_entry_size)
    corrupt(object, fmt::format("entry sizes {} / {}, expected {} / {}", load(h.channel_entry_size),
                                load(h.participant_entry_size), bl::channel_entry_size,
                                bl::participant_entry_size));
  const geometry g = compute_geometry(channels, participants);
  if (load(h.channel_offset) != g.channel_offset || load(h.participant_offset) != g.participant_offset ||
      load(h.region_size) != g.region_size)
    corrupt(object, "offsets disagree with the entry counts");
  if (g.region_size > r.size())
    corrupt(object, fmt::format("header says {} B, the object has {} B (truncated?)", g.region_size, r.size()));

  directory d;
  d.m_channel_entries = reinterpret_cast<bl::channel_entry*>(r.data() + g.channel_offset);
  d.m_participant_entries = reinterpret_cast<bl::participant_entry*>(r.data() + g.participant_offset);
  d.m_channels = channels;
  d.m_participants = participants;
  d.m_region = std::move(r);  // moving a region keeps its mapping where it is
  return d;
}

// ---- participants --------------------------------------------------------------

bool directory::take_participant(std::uint32_t i, std::uint64_t expected, const process_identity& me,
                                 std::uint64_t now_ns) noexcept {
  auto& e = participant_at(i);
  const std::uint32_t g = bl::generation_of(expected) + 1;
  // acq_rel: acquire orders our writes after whatever the previous owner
  // did; release is harmless.
  if (!shared(e.incarnation)
           .compare_exchange_strong(expected, bl::incarnation(bl::participant_active, g), std::memory_order_acq_rel,
                                    std::memory_order_relaxed))
    return false;
  shared(e.pid).store(me.pid, std::memory_order_relaxed);
  shared(e.start_time).store(me.start_time, std::memory_order_relaxed);
  shared(e.joined_ns).store(now_ns, std::memory_order_relaxed);
  // release: a reader that acquires identity_generation == g sees the
  // identity above (the identity rule, directory.hpp).
  shared(e.identity_generation).store(g, std::memory_order_release);
  return true;
}

std::optional<directory::membership> directory::join(const process_identity& me, std::uint64_t now_ns) noexcept {
  // First a free entry ...
  for (std::uint32_t i = 0; i < m_participants; ++i) {
    std::uint64_t w = load(participant_at(i).incarnation, std::memory_order_acquire);
    while (bl::state_of(w) == bl::participant_free) {
      if (take_participant(i, w, me, now_ns)) return membership{i, bl::generation_of(w) + 1};
      w = load(participant_at(i).incarnation, std::memory_order_acquire);
    }
  }
  // ... else the entry of a dead process, taken over in one CAS: the
  // generation names the incarnation judged dead, so two reclaimers cannot
  // both win, and a newcomer that took the entry meanwhile is safe.
  for (std::uint32_t i = 0; i < m_participants; ++i) {
    const auto rec = read_participant(i);
    if (rec && !is_alive(rec->id) && take_participant(i, rec->incarnation, me, now_ns))
      return membership{i, bl::generation_of(rec->incarnation) + 1};
  }
  return std::nullopt;
}

void directory::leave(const membership& m) noexcept {
  if (m.index >= m_participants) return;
  std::uint64_t expected = bl::incarnation(bl::participant_active, m.generation);
  // release: our last reads of the directory happen before the entry is free.
  shared(participant_at(m.index).incarnation)
      .compare_exchange_strong(expected, bl::incarnation(bl::participant_free, m.generation),
                               std::memory_order_release, std::memory_order_relaxed);
}

std::optional<participant_record> directory::read_participant(std::uint32_t i) const noexcept {
  if (i >= m_participants) return std::nullopt;
  const auto& e = participant_at(i);
  for (int attempt = 0; attempt < 16; ++attempt) {
    const std::uint64_t w = load(e.incarnation, std::memory_order_acquire);
    if (bl::state_of(w) != bl::participant_active) return std::nullopt;
    // acquire: pairs with the owner's release of identity_generation.
    if (load(e.identity_generation, std::memory_order_acquire) != bl::generation_of(w))
      return std::nullopt;  // joining: the identity is not written yet
    participant_record r;
    r.index = i;
    r.incarnation = w;
    r.id = process_identity(load(e.pid, acquire), load(e.start_time, acquire));
    r.joined_ns = load(e.joined_ns, acquire);
    // The acquire loads above keep the re-load after them: if the word is
    // unchanged, no new owner wrote the identity meanwhile.
    if (load(e.incarnation, std::memory_order_relaxed) != w) continue;
    if (r.id.pid <= 0) return std::nullopt;  // written, but not a process: ignore it
    return r;
  }
  return std::nullopt;
}

std::uint32_t directory::free_dead_participants() noexcept {
  std::uint32_t freed = 0;
  for (std::uint32_t i = 0; i < m_participants; ++i) {
    const auto rec = read_participant(i);
    if (!rec || is_alive(rec->id)) continue;
    std::uint64_t expected = rec->incarnation;
    if (shared(participant_at(i).incarnation)
            .compare_exchange_strong(expected,
                                     bl::incarnation(bl::participant_free, bl::generation_of(rec->incarnation)),
                                     std::memory_order_acq_rel, std::memory_order_relaxed))
      ++freed;
  }
  return freed;
}

// ---- channels --------------------------------------------------------------------

std::optional<channel_record> directory::read_channel(std::uint32_t i) const {
  if (i >= m_channels) return std::nullopt;
  const auto& e = channel_at(i);
  for (int attempt = 0; attempt < 16; ++attempt) {
    // seq_cst: the load half of the duplicate check (file comment).
    const std::uint64_t w = load(e.incarnation, std::memory_order_seq_cst);
    if (bl::state_of(w) == bl::channel_free) return std::nullopt;
    const std::uint32_t owner_generation = load(e.owner_generation, std::memory_order_acquire);
    // Acquire loads, so that the re-load of the state word below stays
    // after every one of them (a seqlock without a fence, which
    // ThreadSanitizer does not model; on x86-64 they are plain loads).
    const std::int32_t pid = load(e.owner_pid, acquire);
    const std::uint64_t start = load(e.owner_start_time, acquire);
    char name[bl::name_bytes];
    for (std::size_t k = 0; k < bl::name_bytes / 8; ++k) {
      const std::uint64_t word = load(e.name[k], acquire);
      std::memcpy(name + 8 * k, &word, 8);
    }
    channel_record r;
    r.index = i;
    r.incarnation = w;
    r.created_ns = load(e.created_ns, acquire);
    r.description.type_size = load(e.type_size, acquire);
    r.description.type_align = load(e.type_align, acquire);
    r.description.type_hash = load(e.type_hash, acquire);
    r.description.capacity = load(e.capacity, acquire);
    r.description.max_message = load(e.max_message, acquire);
    r.description.policy = load(e.policy, acquire);
    if (load(e.incarnation, std::memory_order_relaxed) != w) continue;
    if (owner_generation == bl::generation_of(w) && pid > 0) r.owner = process_identity(pid, start);
    const std::size_t length = ::strnlen(name, sizeof name);
    if (length < sizeof name) {
      r.name.assign(name, length);
      r.valid_name = valid_bus_name(r.name);
    }
    if (!r.valid_name) r.name.clear();
    return r;
  }
  return std::nullopt;
}

std::optional<channel_record> directory::find_channel(std::string_view name) const {
  for (std::uint32_t i = 0; i < m_channels; ++i) {
    auto r = read_channel(i);
    if (r && r->state() == bl::channel_active && r->valid_name && r->name == name) return r;
  }
  return std::nullopt;
}

directory::record_status directory::record_channel(std::string_view name, const channel_description& d,
                                                   const process_identity& me, std::uint64_t now_ns) {
  if (find_channel(name)) return record_status::present;
  for (std::uint32_t i = 0; i < m_channels; ++i) {
    auto& e = channel_at(i);
    std::uint64_t w = load(e.incarnation, std::memory_order_acquire);
    while (bl::state_of(w) == bl::channel_free) {
      const std::uint32_t g = bl::generation_of(w) + 1;
      if (!shared(e.incarnation)
               .compare_exchange_weak(w, bl::incarnation(bl::channel_creating, g), std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        continue;  // w now holds the current word
      shared(e.owner_pid).store(me.pid, std::memory_order_relaxed);
      shared(e.owner_start_time).store(me.start_time, std::memory_order_relaxed);
      // release: the identity rule (directory.hpp).
      shared(e.owner_generation).store(g, std::memory_order_release);
      shared(e.created_ns).store(now_ns, std::memory_order_relaxed);
      encode_name(e, name);
      shared(e.type_size).store(d.type_size, std::memory_order_relaxed);
      shared(e.type_align).store(d.type_align, std::memory_order_relaxed);
      shared(e.type_hash).store(d.type_hash, std::memory_order_relaxed);
      shared(e.capacity).store(d.capacity, std::memory_order_relaxed);
      shared(e.max_message).store(d.max_message, std::memory_order_relaxed);
      shared(e.policy).store(d.policy, std::memory_order_relaxed);
      // seq_cst: releases the fields to readers, and is the store half of
      // the duplicate check (file comment).
      const std::uint64_t mine = bl::incarnation(bl::channel_active, g);
      shared(e.incarnation).store(mine, std::memory_order_seq_cst);
      remove_duplicates(i, mine, name);
      return record_status::recorded;
    }
  }
  return record_status::full;
}

void directory::remove_duplicates(std::uint32_t mine, std::uint64_t my_incarnation, std::string_view name) {
  for (std::uint32_t j = 0; j < m_channels; ++j) {
    if (j == mine) continue;
    const auto r = read_channel(j);
    if (!r || r->state() != bl::channel_active || !r->valid_name || r->name != name) continue;
    if (j > mine) {
      free_channel(*r);
    } else {
      channel_record self;
      self.index = mine;
      self.incarnation = my_incarnation;
      free_channel(self);
      return;
    }
  }
}

bool directory::free_channel(const channel_record& r) noexcept {
  if (r.index >= m_channels) return false;
  std::uint64_t expected = r.incarnation;
  return shared(channel_at(r.index).incarnation)
      .compare_exchange_strong(expected, bl::incarnation(bl::channel_free, bl::generation_of(r.incarnation)),
                               std::memory_order_acq_rel, std::memory_order_relaxed);
}

std::uint32_t directory::free_stale_channels(const std::function<bool(const channel_record&)>& stale) {
  std::uint32_t freed = 0;
  for (std::uint32_t i = 0; i < m_channels; ++i) {
    const auto r = read_channel(i);
    if (!r) continue;
    bool broken = false;
    switch (r->state()) {
      case bl::channel_creating:
        // Only a recorder known to be dead: one still writing is left be.
        broken = r->owner && !is_alive(*r->owner);
        break;
      case bl::channel_active:
        broken = !r->valid_name || stale(*r);
        break;
      default:
        broken = true;  // a state no version-1 writer stores
        break;
    }
    if (broken && free_channel(*r)) ++freed;
  }
  return freed;
}

}  // namespace shmbus::detail
