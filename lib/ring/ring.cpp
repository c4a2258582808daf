#include "ring/ring.hpp"

#include "core/cas128.hpp"
#include "core/process_barrier.hpp"

#include "core/sanitizers.hpp"

#include <shmbus/error.hpp>
#include <shmbus/region.hpp>

#include <fmt/format.h>
#include <sched.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <ctime>

namespace shmbus::detail {
namespace {

static_assert(std::endian::native == std::endian::little, "the channel layout is little-endian");
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);

using ring_detail::shared;

[[noreturn]] void corrupt(std::string_view object, std::string_view what) {
  throw error(errc::region_corrupt, "open channel", object, what);
}

std::uint64_t random_salt() {
  std::uint64_t salt = 0;
  while (salt == 0) {
    if (::getrandom(&salt, sizeof salt, 0) != static_cast<ssize_t>(sizeof salt))
      salt = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) * 0x9e3779b97f4a7c15ull;
  }
  return salt;
}

std::uint64_t page_round(std::uint64_t n) {
  const std::uint64_t page = region::page_size();
  return (n + page - 1) / page * page;
}

struct geometry {
  std::uint64_t publisher_offset;
  std::uint64_t subscriber_offset;
  std::uint64_t ring_offset;
  std::uint64_t region_size;
};

geometry compute_geometry(std::uint64_t capacity, std::uint32_t publishers, std::uint32_t subscribers) {
  geometry g{};
  g.publisher_offset = layout::header_size;
  g.subscriber_offset = g.publisher_offset + std::uint64_t{publishers} * layout::publisher_slot_size;
  g.ring_offset = page_round(g.subscriber_offset + std::uint64_t{subscribers} * layout::subscriber_slot_size);
  g.region_size = g.ring_offset + capacity;
  return g;
}

}  // namespace

std::size_t ring_region_size(const ring_options& o, std::string_view object) {
  auto bad = [&](std::string detail) { throw error(errc::bad_size, "create channel", object, detail); };
  if (o.capacity < layout::min_capacity || o.capacity > layout::max_capacity || !std::has_single_bit(o.capacity))
    bad(fmt::format("ring capacity {} is not a power of two in [{}, 2^40]", o.capacity, layout::min_capacity));
  if (o.capacity % region::page_size() != 0)
    bad(fmt::format("ring capacity {} is not a multiple of the page size", o.capacity));
  // A frame must fit in a quarter of the ring, so that a padding frame and a
  // message always fit together and several messages are in flight at once.
  if (o.max_message == 0 || layout::frame_size(o.max_message) > o.capacity / 4)
    bad(fmt::format("max message {} B does not fit a quarter of a {} B ring", o.max_message, o.capacity));
  if (o.publisher_slots == 0 || o.publisher_slots > layout::max_publishers)
    bad(fmt::format("{} publisher slots (1..{})", o.publisher_slots, layout::max_publishers));
  if (o.subscriber_slots == 0 || o.subscriber_slots > layout::max_subscribers)
    bad(fmt::format("{} subscriber slots (1..{})", o.subscriber_slots, layout::max_subscribers));
  if (o.policy != layout::policy_block && o.policy != layout::policy_overwrite)
    bad(fmt::format("unknown policy {}", o.policy));
  return compute_geometry(o.capacity, o.publisher_slots, o.subscriber_slots).region_size;
}

void ring_initialize(std::span<std::byte> region, const ring_options& o, std::string_view object) {
  const std::size_t size = ring_region_size(o, object);
  if (region.size() < size)
    throw error(errc::bad_size, "create channel", object,
                fmt::format("region of {} B, the channel needs {} B", region.size(), size));
  const geometry g = compute_geometry(o.capacity, o.publisher_slots, o.subscriber_slots);
  auto& h = *reinterpret_cast<layout::channel_header*>(region.data());
  h.version = layout::channel_version;
  h.kind = layout::kind_channel;
  h.region_size = g.region_size;
  h.ring_offset = g.ring_offset;
  h.ring_capacity = o.capacity;
  h.max_message = o.max_message;
  h.policy = o.policy;
  h.publisher_slots = o.publisher_slots;
  h.subscriber_slots = o.subscriber_slots;
  h.publisher_slot_offset = static_cast<std::uint32_t>(g.publisher_offset);
  h.subscriber_slot_offset = static_cast<std::uint32_t>(g.subscriber_offset);
  h.type_size = o.type.size;
  h.type_align = o.type.align;
  h.type_hash = o.type.hash;
  std::memset(h.type_name, 0, sizeof h.type_name);
  // (An empty string_view may hold a null pointer: memcpy must not see it.)
  if (!o.type.name.empty())
    std::memcpy(h.type_name, o.type.name.data(), std::min(o.type.name.size(), sizeof h.type_name - 1));
  h.commit_salt = random_salt();
  h.created_ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  h.creator_pid = static_cast<std::uint32_t>(::getpid());
  auto* publishers = reinterpret_cast<layout::publisher_slot*>(region.data() + g.publisher_offset);
  for (std::uint32_t i = 0; i < o.publisher_slots; ++i) publishers[i].intent_position = ~std::uint64_t{0};
  // release: every field above is visible to whoever acquires the magic.
  shared(h.magic).store(layout::channel_magic, std::memory_order_release);
}

ring ring::attach(std::span<std::byte> region, std::string_view object, const type_fingerprint* expected) {
  if (region.size() < layout::header_size)
    corrupt(object, fmt::format("{} B is smaller than a channel header", region.size()));
  auto& h = *reinterpret_cast<layout::channel_header*>(region.data());
  // acquire: pairs with the creator's release of the magic.
  const std::uint64_t magic = shared(h.magic).load(std::memory_order_acquire);
  if (magic != layout::channel_magic) corrupt(object, "not a shmbus channel (bad magic, or not initialised yet)");
  if (h.version != layout::channel_version)
    throw error(errc::version_mismatch, "open channel", object,
                fmt::format("layout version {}, this library reads {}", h.version, layout::channel_version));
  if (h.kind != layout::kind_channel) corrupt(object, fmt::format("region kind {} is not a channel", h.kind));

  // Copy the geometry once, check it is self-consistent and fits the
  // mapping, and use only the copies from here on.
  const std::uint64_t capacity = h.ring_capacity;
  const std::uint32_t publishers = h.publisher_slots;
  const std::uint32_t subscribers = h.subscriber_slots;
  const std::uint32_t max_message = h.max_message;
  const std::uint32_t policy = h.policy;
  if (capacity < layout::min_capacity || capacity > layout::max_capacity || !std::has_single_bit(capacity))
    corrupt(object, fmt::format("ring capacity {}", capacity));
  if (publishers == 0 || publishers > layout::max_publishers || subscribers == 0 ||
      subscribers > layout::max_subscribers)
    corrupt(object, fmt::format("slot counts {} / {}", publishers, subscribers));
  if (max_message == 0 || layout::frame_size(max_message) > capacity / 4)
    corrupt(object, fmt::format("max message {} for a ring of {}", max_message, capacity));
  if (policy != layout::policy_block && policy != layout::policy_overwrite)
    corrupt(object, fmt::format("policy {}", policy));
  const geometry g = compute_geometry(capacity, publishers, subscribers);
  if (h.publisher_slot_offset != g.publisher_offset || h.subscriber_slot_offset != g.subscriber_offset ||
      h.ring_offset != g.ring_offset || h.region_size != g.region_size)
    corrupt(object, "offsets disagree with the slot counts and capacity");
  if (g.region_size > region.size())
    corrupt(object, fmt::format("header says {} B, the object has {} B (truncated?)", g.region_size, region.size()));
  const std::uint64_t salt = h.commit_salt;
  if (salt == 0) corrupt(object, "commit salt is zero");

  if (expected != nullptr) {
    const std::string_view stored(h.type_name, strnlen(h.type_name, sizeof h.type_name));
    if (h.type_size != expected->size || h.type_align != expected->align || h.type_hash != expected->hash)
      throw error(errc::type_mismatch, "open channel", object,
                  fmt::format("channel carries '{}' (size {}, align {}), expected '{}' (size {}, align {})", stored,
                              h.type_size, h.type_align, expected->name, expected->size, expected->align));
  }

  ring r;
  r.m_header = &h;
  r.m_publishers = reinterpret_cast<layout::publisher_slot*>(region.data() + g.publisher_offset);
  r.m_subscribers = reinterpret_cast<layout::subscriber_slot*>(region.data() + g.subscriber_offset);
  r.m_ring = region.data() + g.ring_offset;
  r.m_capacity = capacity;
  r.m_mask = capacity - 1;
  r.m_segment_shift = layout::resync_segment_shift(capacity);
  // Every 256 KiB, or four times a lap in a smaller ring; never more often
  // than segments end, so that the test rides on after_segment_boundary.
  const auto ring_shift = static_cast<unsigned>(std::countr_zero(capacity));
  r.m_streaming_check_shift = std::max(r.m_segment_shift, std::min(18u, ring_shift - 2));
  r.m_salt = salt;
  r.m_max_message = max_message;
  r.m_policy = policy;
  r.m_publisher_slots = publishers;
  r.m_subscriber_slots = subscribers;
  return r;
}

std::uint64_t ring::slowest_subscriber() noexcept {
  const std::uint64_t active = shared(m_header->active_subscribers).load(std::memory_order_acquire);
  std::uint64_t slowest = tail_position();
  for (std::uint64_t bits = active; bits != 0; bits &= bits - 1) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(bits));
    if (i >= m_subscriber_slots) break;  // a stray bit in shared memory: ignore it
    const std::uint64_t p = shared(m_subscribers[i].position).load(std::memory_order_acquire);
    if (p < slowest) slowest = p;
  }
  m_active_cache = active;
  return slowest;
}

namespace {

// A slot's {state, generation} pair as one 8-byte word (state in the low
// half: little-endian, state at offset 0, generation at 4).
template <class Slot>
std::atomic_ref<std::uint64_t> slot_word(Slot& slot) noexcept {
  static_assert(offsetof(Slot, state) == 0 && offsetof(Slot, generation) == 4);
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(&slot));
}
constexpr std::uint64_t make_word(std::uint32_t state, std::uint32_t generation) noexcept {
  return (std::uint64_t{generation} << 32) | state;
}
constexpr std::uint32_t state_of(std::uint64_t word) noexcept { return static_cast<std::uint32_t>(word); }
constexpr std::uint32_t generation_of(std::uint64_t word) noexcept { return static_cast<std::uint32_t>(word >> 32); }

template <class Slot>
bool take_slot(Slot& slot, std::int32_t pid, std::uint64_t start_time) noexcept {
  std::uint64_t word = slot_word(slot).load(std::memory_order_acquire);
  if (state_of(word) != layout::slot_free) return false;
  // Only the CAS winner writes the owner fields. A reclaimer that reads
  // them before they are written sees the previous owner's identity, which
  // is dead: the generation check in begin_reclaim keeps it from acting.
  if (!slot_word(slot).compare_exchange_strong(word, make_word(layout::slot_active, generation_of(word) + 1),
                                               std::memory_order_acq_rel))
    return false;
  shared(slot.pid).store(pid, std::memory_order_relaxed);
  shared(slot.start_time).store(start_time, std::memory_order_release);
  return true;
}

/// Moves a slot of a dead owner from active to reclaiming, naming the
/// incarnation (generation) that was found dead. Only one caller wins.
template <class Slot>
bool begin_reclaim(Slot& slot, ring::liveness_check alive, std::uint64_t& word) noexcept {
  word = slot_word(slot).load(std::memory_order_acquire);
  if (state_of(word) != layout::slot_active) return false;
  const std::int32_t pid = shared(slot.pid).load(std::memory_order_relaxed);
  const std::uint64_t start = shared(slot.start_time).load(std::memory_order_acquire);
  if (alive(pid, start)) return false;
  // The slot may have been freed and taken again since `word` was read: the
  // generation in the CAS makes sure the one we judged dead is the one we free.
  if (slot_word(slot).load(std::memory_order_acquire) != word) return false;
  return slot_word(slot).compare_exchange_strong(word, make_word(layout::slot_reclaiming, generation_of(word)),
                                                 std::memory_order_acq_rel);
}

template <class Slot>
void finish_reclaim(Slot& slot, std::uint64_t word) noexcept {
  slot_word(slot).store(make_word(layout::slot_free, generation_of(word)), std::memory_order_release);
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

std::uint32_t ring::reclaim_dead_subscribers(liveness_check alive) noexcept {
  std::uint32_t reclaimed = 0;
  for (std::uint32_t i = 0; i < m_subscriber_slots; ++i) {
    std::uint64_t word = 0;
    if (!begin_reclaim(m_subscribers[i], alive, word)) continue;
    // While the slot is 'reclaiming' nobody can take it, so clearing its bit
    // cannot clear the bit of a newer subscriber in the same slot.
    shared(m_header->active_subscribers).fetch_and(~(std::uint64_t{1} << i), std::memory_order_seq_cst);
    shared(m_header->parked_subscribers).fetch_and(~(std::uint64_t{1} << i), std::memory_order_seq_cst);
    finish_reclaim(m_subscribers[i], word);
    ++reclaimed;
  }
  if (reclaimed > 0) m_active_cache = ~std::uint64_t{0};  // force a rescan
  return reclaimed;
}

bool ring::drop_stale_intent(layout::publisher_slot& slot) noexcept {
  auto intent = shared(slot.intent_position);
  std::uint64_t p = intent.load(std::memory_order_acquire);
  if (p == ~std::uint64_t{0}) return true;
  // The owner is dead, so its intent no longer changes (but for a
  // repairer's CAS) and the tail read after it is past any claim it made:
  // the claim word only moves forward.
  const std::uint64_t tail = tail_position();
  const std::uint64_t need = shared(slot.intent_length).load(std::memory_order_relaxed);
  bool stale = p >= tail ||              // it died before its claim
               tail - p > m_capacity ||  // claimed or not, the ring has moved a lap past it
               // no claim has this shape
               !layout::frame_aligned(p) || !layout::frame_aligned(need) ||
               need < layout::frame_header_size;
  if (!stale) {
    // Its data frame, where try_claim would have put it: committed means
    // it died after its commit (or lost the position to a claim that was
    // committed); nobody is stuck on it.
    const std::uint64_t room = m_capacity - (p & m_mask);
    const std::uint64_t data = need <= room ? p : p + room;
    stale = load_commit(data) == (data ^ m_salt);
  }
  // Otherwise a claim in progress: readers stop at it, and try_repair
  // rewrites it and clears the intent. A repairer's CAS may also beat ours.
  if (!stale) return false;
  return intent.compare_exchange_strong(p, ~std::uint64_t{0}, std::memory_order_acq_rel) || p == ~std::uint64_t{0};
}

std::uint32_t ring::reclaim_dead_publishers(liveness_check alive) noexcept {
  std::uint32_t reclaimed = 0;
  for (std::uint32_t i = 0; i < m_publisher_slots; ++i) {
    layout::publisher_slot& slot = m_publishers[i];
    std::uint64_t word = 0;
    if (!begin_reclaim(slot, alive, word)) continue;
    // A claim in progress must be repaired (try_repair) before its intent
    // may disappear with the slot; an intent that names no such claim (the
    // owner died just before its claim or just after its commit) must not
    // keep the slot, and the others claiming by CAS, for good. Nobody else
    // changes a slot while it is 'reclaiming', so putting the word back
    // returns it as it was.
    if (!drop_stale_intent(slot)) {
      slot_word(slot).store(word, std::memory_order_release);
      continue;
    }
    const std::uint64_t bit = std::uint64_t{1} << i;
    shared(m_header->waiting_publishers).fetch_and(~bit, std::memory_order_seq_cst);
    shared(m_header->unfenced_publishers).fetch_and(~bit, std::memory_order_seq_cst);
    shared(m_header->active_publishers).fetch_and(~bit, std::memory_order_seq_cst);
    finish_reclaim(slot, word);
    ++reclaimed;
  }
  return reclaimed;
}

bool ring::refresh_room(std::uint64_t end) noexcept {
  for (;;) {
    m_limit_cache = slowest_subscriber() + m_capacity;
    if (end <= m_limit_cache) return true;
    // Held back: if that is a dead subscriber's doing, free its slot (at
    // most every m_liveness_interval_ns: it costs system calls).
    if (m_alive == nullptr) return false;
    const std::uint64_t now = monotonic_ns();
    if (now - m_last_liveness_check_ns < m_liveness_interval_ns) return false;
    m_last_liveness_check_ns = now;
    if (reclaim_dead_subscribers(m_alive) == 0) return false;
  }
}

bool ring::claim_reaches(std::uint64_t start, std::uint64_t position) const noexcept {
  if (start > position || position - start >= m_capacity) return false;  // NONE never reaches
  return start == position || start + (m_capacity - (start & m_mask)) == position;
}

bool ring::is_claim_boundary(std::uint64_t end, std::uint64_t tail) const noexcept {
  if (end > tail) return false;
  if (end == tail || load_commit(end) == (end ^ m_salt)) return true;
  // Every intent names a value the claim word once held: where a claim began.
  for (std::uint32_t i = 0; i < m_publisher_slots; ++i)
    if (shared(m_publishers[i].intent_position).load(std::memory_order_acquire) == end) return true;
  return false;
}

ring::repair_status ring::try_repair(std::uint64_t position, liveness_check alive) noexcept {
  if (!layout::frame_aligned(position)) return repair_status::not_stalled;
  if (load_commit(position) == (position ^ m_salt)) return repair_status::not_stalled;
  const std::uint64_t tail = tail_position();
  if (position >= tail || tail - position > m_capacity) return repair_status::not_stalled;

  // The claim: a publisher slot whose intent starts at this position, or
  // whose padding frame was committed and whose data frame, at the start of
  // the next lap (this position), was not. Dead slots may also hold stale
  // intents for the same place: their CAS lost the race for it, or never
  // ran. Every claim starts where the one before ended, so the real claim
  // ends at the first claim boundary after this position, and a stale
  // intent's end is either inside the real claim (never a boundary) or at
  // a later boundary. So among the dead intents that reach this position,
  // the one whose end is the nearest boundary names the claim.
  std::uint64_t dead = 0;  // slots with such an intent
  for (std::uint32_t i = 0; i < m_publisher_slots; ++i) {
    layout::publisher_slot& slot = m_publishers[i];
    if (!claim_reaches(shared(slot.intent_position).load(std::memory_order_acquire), position)) continue;
    const std::uint64_t word = slot_word(slot).load(std::memory_order_acquire);
    const std::int32_t pid = shared(slot.pid).load(std::memory_order_relaxed);
    const std::uint64_t started = shared(slot.start_time).load(std::memory_order_acquire);
    if (state_of(word) == layout::slot_active && alive(pid, started)) return repair_status::writer_alive;
    dead |= std::uint64_t{1} << i;
  }
  // Read after the intents: a claim that moved the tail past a boundary had
  // stored its intent (naming that boundary) before, and clears it only
  // after committing there, so the boundary shows one way or the other.
  const std::uint64_t now_tail = tail_position();
  std::uint32_t owner = m_publisher_slots;
  std::uint64_t claim_start = 0;
  std::uint64_t claim_end = ~std::uint64_t{0};
  for (std::uint64_t rest = dead; rest != 0; rest &= rest - 1) {
    layout::publisher_slot& slot = m_publishers[std::countr_zero(rest)];
    const std::uint64_t start = shared(slot.intent_position).load(std::memory_order_acquire);
    if (!claim_reaches(start, position)) continue;
    const std::uint64_t room = m_capacity - (start & m_mask);
    const std::uint64_t l = shared(slot.intent_length).load(std::memory_order_relaxed);
    const std::uint64_t end = start + l;
    const bool shaped = l >= layout::frame_header_size && layout::frame_aligned(l) && end > position &&
                        (l <= room || l - room <= layout::frame_size(m_max_message));
    // Nearest end first; at the same end, the start nearer this position
    // (a claim that began here rules out one that wrapped over it).
    if (!shaped || end > claim_end || (end == claim_end && start <= claim_start)) continue;
    if (!is_claim_boundary(end, now_tail)) continue;
    owner = static_cast<std::uint32_t>(std::countr_zero(rest));
    claim_start = start;
    claim_end = end;
  }
  if (owner == m_publisher_slots) return repair_status::unknown;
  const std::uint64_t sequence = shared(m_publishers[owner].intent_sequence).load(std::memory_order_relaxed);

  // Only one repairer proceeds: the one that clears the intent.
  std::uint64_t expected = claim_start;
  if (!shared(m_publishers[owner].intent_position)
           .compare_exchange_strong(expected, ~std::uint64_t{0}, std::memory_order_acq_rel))
    return repair_status::unknown;
  // The other dead intents that reach this position name claims that were
  // never made: clear them, or their slots could never be reclaimed.
  const std::uint64_t stale = dead & ~(std::uint64_t{1} << owner);
  for (std::uint64_t rest = stale; rest != 0; rest &= rest - 1) {
    auto intent = shared(m_publishers[std::countr_zero(rest)].intent_position);
    std::uint64_t start = intent.load(std::memory_order_acquire);
    if (claim_reaches(start, position))
      intent.compare_exchange_strong(start, ~std::uint64_t{0}, std::memory_order_acq_rel);
  }
  // The dead publisher's intent may be stale itself: it died before its
  // CAS (or after a failed one), and another publisher claimed this
  // position and committed it, clearing its own intent, while we looked.
  // That one stores its intent before its claim and clears it after its
  // commit, so now (after the locked CAS) either its intent is still there
  // or its commit is visible. Clearing the stale intent was right either way.
  for (std::uint32_t i = 0; i < m_publisher_slots; ++i) {
    if (i == owner || ((stale >> i) & 1u) != 0) continue;
    if (claim_reaches(shared(m_publishers[i].intent_position).load(std::memory_order_acquire), position))
      return repair_status::unknown;
  }
  if (load_commit(position) == (position ^ m_salt)) return repair_status::not_stalled;

  // Write what is missing from `position` to the end of the claim.
  const std::uint64_t room = m_capacity - (position & m_mask);
  std::uint64_t at = position;
  std::uint64_t length = claim_end - position;
  if (length > room) {
    write_frame_header(at, static_cast<std::uint32_t>(room - layout::frame_header_size), layout::frame_padding,
                       sequence, owner);
    store_commit(at);
    at += room;
    length -= room;
  }
  write_frame_header(at, static_cast<std::uint32_t>(length - layout::frame_header_size), layout::frame_aborted,
                     sequence, owner);
  store_commit(at);
  return repair_status::repaired;
}

int ring::register_publisher(std::int32_t pid, std::uint64_t start_time) noexcept {
  for (std::uint32_t i = 0; i < m_publisher_slots; ++i) {
    layout::publisher_slot& slot = m_publishers[i];
    if (!take_slot(slot, pid, start_time)) continue;
    // The counters are this incarnation's, not a previous owner's.
    shared(slot.published).store(0, std::memory_order_relaxed);
    shared(slot.intent_position).store(~std::uint64_t{0}, std::memory_order_release);
    m_light_barriers = enable_light_barriers();
    m_lone_claims = m_light_barriers && store128_is_atomic();
    shared(slot.flags).store(m_lone_claims ? layout::publisher_lone_claims : 0, std::memory_order_relaxed);
    const std::uint64_t bit = std::uint64_t{1} << i;
    // seq_cst: from here on, a publisher that claims alone sees this bit
    // in its next claim, or (light barrier) we wait its claim out below.
    const std::uint64_t others = shared(m_header->active_publishers).fetch_or(bit, std::memory_order_seq_cst) & ~bit;
    std::uint64_t light = 0;
    for (std::uint64_t rest = others; rest != 0; rest &= rest - 1) {
      const auto j = static_cast<std::uint32_t>(std::countr_zero(rest));
      if (j < m_publisher_slots && (shared(m_publishers[j].flags).load(std::memory_order_relaxed) &
                                    layout::publisher_lone_claims) != 0)
        light |= std::uint64_t{1} << j;
    }
    if (light == 0) return static_cast<int>(i);
    if (!heavy_barrier()) {
      unregister_publisher(i);
      return -2;
    }
    const std::uint64_t deadline = monotonic_ns() + lone_claim_settle_ns;
    for (; light != 0; light &= light - 1) {
      if (!wait_for_lone_claim(static_cast<std::uint32_t>(std::countr_zero(light)), deadline)) {
        unregister_publisher(i);
        return -3;
      }
    }
    return static_cast<int>(i);
  }
  return -1;
}

bool ring::wait_for_lone_claim(std::uint32_t other, std::uint64_t deadline_ns) noexcept {
  // After the heavy barrier, `other` claims with the CAS from its next
  // claim on. One it began before, its intent stored, may still be about to
  // store the claim word without the CAS, and only while the claim word
  // still reads as the intent's position (it re-reads it just before). So
  // wait until the claim word moved, or the intent changed (the claim was
  // committed, refused, or retried after the barrier), or its process died.
  layout::publisher_slot& slot = m_publishers[other];
  std::uint64_t position = shared(slot.intent_position).load(std::memory_order_acquire);
  if (position == ~std::uint64_t{0}) return true;
  auto settled = [&] {
    return shared(slot.intent_position).load(std::memory_order_acquire) != position ||
           tail_position() != position;
  };
  for (std::uint32_t turn = 0; !settled(); ++turn) {
    if (turn < 1024) continue;
    // Preempted (or stopped) between its re-read and its store: yield to
    // it. If it died there, its intent names a claim never made: clear it,
    // or a repairer could one day take it for the claim of the publisher
    // that claims that position next. If it stays stopped, or the intent
    // is one no publisher wrote, the caller gives up its slot at the
    // deadline: claiming beside such a claim could be overwritten by it.
    const slot_owner o = publisher_owner(other);
    if (m_alive != nullptr && !m_alive(o.pid, o.start_time)) {
      shared(slot.intent_position).compare_exchange_strong(position, ~std::uint64_t{0}, std::memory_order_acq_rel);
      return true;
    }
    if (monotonic_ns() >= deadline_ns) return false;
    ::sched_yield();
  }
  return true;
}

void ring::enter_unfenced(std::uint32_t publisher_index) noexcept {
  // seq_cst: a subscriber that parks after this reads the bit and runs the
  // heavy barrier; one that parked before is found by our next load of
  // parked_subscribers, which this orders after it.
  shared(m_header->unfenced_publishers).fetch_or(std::uint64_t{1} << publisher_index, std::memory_order_seq_cst);
  m_unfenced = true;
}

void ring::leave_unfenced(std::uint32_t publisher_index) noexcept {
  // seq_cst (a locked instruction): every unfenced commit before it is
  // visible before the bit clears, so a subscriber that no longer sees the
  // bit sees those commits.
  shared(m_header->unfenced_publishers).fetch_and(~(std::uint64_t{1} << publisher_index), std::memory_order_seq_cst);
  m_unfenced = false;
  m_quiet_commits = 0;
}

void ring::unregister_publisher(std::uint32_t index) noexcept {
  const std::uint64_t bit = std::uint64_t{1} << index;
  if (m_unfenced) leave_unfenced(index);
  shared(m_header->active_publishers).fetch_and(~bit, std::memory_order_seq_cst);
  auto word = slot_word(m_publishers[index]);
  word.store(make_word(layout::slot_free, generation_of(word.load(std::memory_order_relaxed))),
             std::memory_order_release);
}

int ring::register_subscriber(std::int32_t pid, std::uint64_t start_time, bool from_oldest,
                              ring_cursor& cursor) noexcept {
  for (std::uint32_t i = 0; i < m_subscriber_slots; ++i) {
    layout::subscriber_slot& slot = m_subscribers[i];
    if (!take_slot(slot, pid, start_time)) continue;
    count_delivered(i, 0, 0);  // this incarnation's counters, not a previous owner's
    cursor = from_oldest ? oldest() : newest();
    publish_position(i, cursor);
    // seq_cst: either a publisher's next claim sees this bit and respects
    // our position, or its claim precedes our second read of the tail below
    // and then lies entirely ahead of where we start reading.
    shared(m_header->active_subscribers).fetch_or(std::uint64_t{1} << i, std::memory_order_seq_cst);
    if (!from_oldest) {
      cursor = newest();
      publish_position(i, cursor);
    }
    m_unlappable_reader = m_policy == layout::policy_block;
    return static_cast<int>(i);
  }
  return -1;
}

void ring::unregister_subscriber(std::uint32_t index) noexcept {
  m_unlappable_reader = false;
  shared(m_header->active_subscribers).fetch_and(~(std::uint64_t{1} << index), std::memory_order_seq_cst);
  auto word = slot_word(m_subscribers[index]);
  word.store(make_word(layout::slot_free, generation_of(word.load(std::memory_order_relaxed))),
             std::memory_order_release);
}

bool ring::park_subscriber(std::uint32_t index) noexcept {
  shared(m_header->parked_subscribers).fetch_or(std::uint64_t{1} << index, std::memory_order_seq_cst);
  // A publisher that commits without a fence may have its latest commit
  // still on its way and have read no parked bit: the heavy barrier settles
  // it one way or the other before the caller re-reads the ring.
  if (shared(m_header->unfenced_publishers).load(std::memory_order_seq_cst) == 0) return true;
  return heavy_barrier();
}
void ring::unpark_subscriber(std::uint32_t index) noexcept {
  shared(m_header->parked_subscribers).fetch_and(~(std::uint64_t{1} << index), std::memory_order_relaxed);
}
void ring::park_publisher(std::uint32_t index) noexcept {
  shared(m_header->waiting_publishers).fetch_or(std::uint64_t{1} << index, std::memory_order_seq_cst);
}
void ring::unpark_publisher(std::uint32_t index) noexcept {
  shared(m_header->waiting_publishers).fetch_and(~(std::uint64_t{1} << index), std::memory_order_relaxed);
}

ring_cursor ring::newest() const noexcept {
  // The two halves are read separately; every claim changes both with one
  // 16-byte write (a CAS, or a lone publisher's atomic store), and the
  // sequence only grows, so reading it again unchanged proves the position
  // belongs with it.
  for (;;) {
    const std::uint64_t s = tail_sequence();
    const std::uint64_t p = tail_position();
    if (tail_sequence() == s) return {p, s};
  }
}

ring_cursor ring::oldest() const noexcept {
  const ring_cursor tail = newest();
  if (tail.position <= m_capacity) return {0, 0};
  return {resync_position(tail.position), ring_cursor::unknown_sequence};
}

claim_status ring::publish_copy_claimed(std::span<const std::byte> bytes, std::uint32_t publisher_index) noexcept {
  claim c;  // publish_copy checked the length and tried try_lone_claim
  const claim_status st = try_claim_general(static_cast<std::uint32_t>(bytes.size()), publisher_index, c);
  if (st != claim_status::ok) return st;
  if (!bytes.empty()) std::memcpy(c.payload, bytes.data(), bytes.size());
  commit(c, publisher_index);
  return st;
}

void ring::after_segment_boundary(std::uint64_t claim_position, std::uint64_t frame_position, std::uint64_t end,
                                  std::uint64_t sequence) noexcept {
  note_resync_hints(claim_position, frame_position, end);
  if (!m_ahead_when_streaming || !passes_boundary(claim_position, end, m_streaming_check_shift)) return;
  // On at the first check that finds a stream, off only after several in
  // a row that find none: a subscriber only a little behind (a slowed
  // publisher's, a few frames in flight) may be caught up at one check.
  if (subscribers_stream_behind(sequence)) {
    m_prefetch_ahead = true;
    m_checks_without_stream = 0;
  } else if (++m_checks_without_stream >= checks_to_stop_ahead) {
    m_prefetch_ahead = false;
  }
}

bool ring::subscribers_stream_behind(std::uint64_t sequence) const noexcept {
  const std::uint64_t active = shared(m_header->active_subscribers).load(std::memory_order_relaxed);
  for (std::uint64_t bits = active; bits != 0; bits &= bits - 1) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(bits));
    if (i >= m_subscriber_slots) break;  // a stray bit in shared memory: ignore it
    // The sequence the subscriber expects next, as it last released. One
    // that does not know it yet (ring_cursor::unknown_sequence), or a value
    // past ours (garbage), says nothing.
    const std::uint64_t next = shared(m_subscribers[i].sequence).load(std::memory_order_relaxed);
    if (next < sequence && sequence - next >= 2) return true;
  }
  return false;
}

void ring::note_resync_hints(std::uint64_t claim_position, std::uint64_t frame_position, std::uint64_t end) noexcept {
  const std::uint64_t segment = std::uint64_t{1} << m_segment_shift;
  // Not (..., end]: the boundary at `end` is the one a ring earlier than
  // the oldest byte a reader can resume at, and shares its entry.
  for (std::uint64_t b = (claim_position + segment - 1) & ~(segment - 1); b < end; b += segment) {
    // The frames of this claim start at claim_position (padding, if any)
    // and frame_position; the next claim's starts at `end`.
    const std::uint64_t first = b == claim_position ? b : b <= frame_position ? frame_position : end;
    shared(m_header->resync_hints[(b & m_mask) >> m_segment_shift]).store(first, std::memory_order_release);
  }
}

std::uint64_t ring::resync_position(std::uint64_t tail) const noexcept {
  // Bytes from tail - capacity on have not been claimed again. Lap
  // boundaries are always frame starts; a hint may name an earlier one.
  const std::uint64_t oldest = tail - m_capacity;
  const std::uint64_t lap_boundary = (oldest + m_mask) & ~m_mask;
  const std::uint64_t segment = std::uint64_t{1} << m_segment_shift;
  for (std::uint64_t b = (oldest + segment - 1) & ~(segment - 1); b < lap_boundary; b += segment) {
    const std::uint64_t h =
        shared(m_header->resync_hints[(b & m_mask) >> m_segment_shift]).load(std::memory_order_acquire);
    // A hint of another lap, or one that does not name a committed frame
    // (overwritten, in progress, or garbage), is passed over.
    if (h < b || h >= lap_boundary || !layout::frame_aligned(h)) continue;
    if (load_commit(h) == (h ^ m_salt)) return h;
  }
  return lap_boundary;
}

}  // namespace shmbus::detail

namespace shmbus::detail {
namespace {

template <class Slot>
ring::slot_owner owner_of(Slot& slot) noexcept {
  ring::slot_owner o;
  o.incarnation = slot_word(slot).load(std::memory_order_acquire);
  o.pid = shared(slot.pid).load(std::memory_order_relaxed);
  o.start_time = shared(slot.start_time).load(std::memory_order_relaxed);
  o.doorbell_id = shared(slot.doorbell_id).load(std::memory_order_acquire);
  return o;
}

}  // namespace

// An index may come from a bit in shared memory (parked_subscribers,
// waiting_publishers): one past the slots names no slot, and no owner.
ring::slot_owner ring::subscriber_owner(std::uint32_t index) const noexcept {
  return index < m_subscriber_slots ? owner_of(m_subscribers[index]) : slot_owner{};
}
ring::slot_owner ring::publisher_owner(std::uint32_t index) const noexcept {
  return index < m_publisher_slots ? owner_of(m_publishers[index]) : slot_owner{};
}

void ring::set_subscriber_doorbell(std::uint32_t index, std::uint64_t id) noexcept {
  shared(m_subscribers[index].doorbell_id).store(id, std::memory_order_release);
}
void ring::set_publisher_doorbell(std::uint32_t index, std::uint64_t id) noexcept {
  shared(m_publishers[index].doorbell_id).store(id, std::memory_order_release);
}

}  // namespace shmbus::detail
