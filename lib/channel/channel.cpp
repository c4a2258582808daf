// Channels: the ring (lib/ring) plus waiting, parking and doorbells.
//
// Invariants (docs/CHANNELS.md has the reasoning):
//   - a subscriber parks only after storing its doorbell id in its slot, and
//     sleeps only after setting its parked bit (seq_cst) and reading the ring
//     again (seq_cst load of the commit word); a publisher stores the commit
//     word seq_cst and then loads the parked word. So either the subscriber
//     sees the message or the publisher sees the bit: no lost wake-up.
//   - the publisher that clears a parked bit rings that doorbell: one
//     write(2) per park, however many messages follow.
//   - block policy: the subscriber stores its position seq_cst and then
//     loads waiting_publishers; a held-back publisher sets its bit seq_cst
//     and then tries to claim again. Same handshake, other direction.
//   - every sleep is bounded by liveness_check, so dead peers (a claim never
//     committed, a subscriber that stopped reading) are dealt with even when
//     nobody rings.
//   - a delivered message stays readable until the next read: the
//     subscriber publishes its position past it only when it reads again.
#include <shmbus/channel.hpp>

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/scheduler.hpp>

#include "core/cpu_relax.hpp"
#include "core/time_after.hpp"
#include "notify/process_doorbells.hpp"
#include "ring/ring.hpp"

#include <fmt/format.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <thread>

// The slow-path coroutines below take their frames from a frame_cache
// (task_promise_base's operator new with a frame_cache& argument) and give
// them back through the promise's one operator delete, which reads the
// frame's prefix to tell where it came from. g++ at -O0 pairs the two by
// signature and warns; the pairing is right by construction.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace shmbus {
namespace detail {

struct channel_state {
  region backing;
  ring frames;
  std::string name;
  std::atomic<bool> prefaulted{false};

  /// Maps every page of the region into this process's page tables (once).
  /// Best effort: kernels before 5.14 lack MADV_POPULATE_WRITE, and then
  /// the first lap faults its pages in as before.
  /// Regions above prefault_limit are left alone: making a huge ring
  /// resident at once could exhaust memory.
  static constexpr std::size_t prefault_limit = std::size_t{64} << 20;
  void prefault() noexcept {
    if (prefaulted.exchange(true, std::memory_order_relaxed)) return;
#ifdef MADV_POPULATE_WRITE
    if (backing.size() <= prefault_limit) ::madvise(backing.data(), backing.size(), MADV_POPULATE_WRITE);
#endif
  }
};

namespace {

bool alive(std::int32_t pid, std::uint64_t start_time) noexcept {
  return is_alive(process_identity(pid, start_time));
}

scheduler& current_scheduler(const char* operation, const std::string& object) {
  scheduler* s = scheduler::current();
  if (s == nullptr)
    throw error(errc::not_supported, operation, object, "must wait, and no scheduler runs on this thread");
  return *s;
}

ahead_mode ahead_mode_of(prefetch_ahead_mode mode) noexcept {
  switch (mode) {
    case prefetch_ahead_mode::always: return ahead_mode::always;
    case prefetch_ahead_mode::never: return ahead_mode::never;
    case prefetch_ahead_mode::when_streaming: break;
  }
  return ahead_mode::when_streaming;
}

doorbell_cache::owner owner_of(const ring::slot_owner& o) noexcept {
  return {o.incarnation, process_identity(o.pid, o.start_time), o.doorbell_id};
}

/// Rings the doorbell of every slot in `bits`; `owner(i)` reads slot i.
template <class OwnerOf>
void ring_each(std::uint64_t bits, doorbell_cache& bells, OwnerOf owner) noexcept {
  while (bits != 0) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(bits));
    bits &= bits - 1;
    bells.ring(i, owner_of(owner(i)));
  }
}

/// A doorbell of ours, served to other processes while it lives.
struct own_doorbell {
  event_fd bell;
  std::uint64_t id = 0;
  own_doorbell() : id(process_doorbells::instance().add(bell)) {}
  own_doorbell(const own_doorbell&) = delete;
  own_doorbell& operator=(const own_doorbell&) = delete;
  ~own_doorbell() { process_doorbells::instance().remove(id); }
};

}  // namespace

struct publisher_core {
  std::shared_ptr<channel_state> channel;
  shmbus::channel handle;
  ring frames;  // a copy: its caches are this publisher's
  std::uint32_t index = 0;
  publisher_options options;
  doorbell_cache subscriber_bells;
  std::unique_ptr<own_doorbell> bell;  // made when first held back
  frame_cache coroutine_frames;

  publisher_core(shmbus::channel ch, std::shared_ptr<channel_state> st, const publisher_options& o)
      : channel(std::move(st)),
        handle(std::move(ch)),
        frames(channel->frames),
        options(o),
        subscriber_bells(frames.subscriber_slots()) {
    const process_identity me = process_identity::self();
    frames.set_liveness(&alive, options.liveness_check);
    frames.set_prefetch_ahead(ahead_mode_of(options.prefetch_ahead));
    // A dead publisher's slot would keep this one claiming by CAS (and
    // joining by heavy barrier) for good: free such slots first.
    frames.reclaim_dead_publishers(&alive);
    const int slot = frames.register_publisher(me.pid, me.start_time);
    if (slot == -2)
      throw error(errc::not_supported, "publisher", channel->name,
                  "membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) was refused, and another publisher relies on it");
    if (slot == -3)
      throw error(errc::timed_out, "publisher", channel->name,
                  fmt::format("another publisher's claim did not finish within {} s (is its process stopped?)",
                              ring::lone_claim_settle_ns / 1'000'000'000));
    if (slot < 0)
      throw error(errc::would_block, "publisher", channel->name,
                  fmt::format("all {} publisher slots are taken", frames.publisher_slots()));
    index = static_cast<std::uint32_t>(slot);
    if (options.prefault) channel->prefault();
  }
  ~publisher_core() { frames.unregister_publisher(index); }

  void wake_subscribers() noexcept {
    ring_each(frames.take_parked_subscribers(index), subscriber_bells,
              [this](std::uint32_t i) { return frames.subscriber_owner(i); });
  }
};

struct subscriber_core {
  std::shared_ptr<channel_state> channel;
  shmbus::channel handle;
  ring frames;
  std::uint32_t index = 0;
  subscriber_options options;
  ring_cursor cursor;
  std::uint64_t published_position = 0;  // the slot's position, as last published
  std::uint64_t release_batch = 0;
  std::uint64_t received = 0;
  std::uint64_t missed = 0;
  own_doorbell bell;
  doorbell_cache publisher_bells;
  frame_cache coroutine_frames;
  // Overwrite policy: messages are copied out of the ring, into `copy`
  // (aligned like a payload in the ring).
  std::unique_ptr<std::byte[]> copy_storage;
  std::byte* copy = nullptr;
  // A claim the cursor is stuck behind: where, and since when.
  std::uint64_t stall_position = ~std::uint64_t{0};
  std::chrono::steady_clock::time_point stall_since{};

  subscriber_core(shmbus::channel ch, std::shared_ptr<channel_state> st, const subscriber_options& o)
      : channel(std::move(st)),
        handle(std::move(ch)),
        frames(channel->frames),
        options(o),
        publisher_bells(frames.publisher_slots()) {
    if (frames.policy() == layout::policy_overwrite) {
      const std::size_t size = std::size_t{frames.max_message()} + layout::frame_alignment;
      copy_storage = std::make_unique<std::byte[]>(size);
      void* p = copy_storage.get();
      std::size_t space = size;
      copy = static_cast<std::byte*>(std::align(layout::frame_alignment, frames.max_message(), p, space));
    }
    const process_identity me = process_identity::self();
    const int slot = frames.register_subscriber(me.pid, me.start_time, o.start == start_at::oldest, cursor);
    if (slot < 0)
      throw error(errc::would_block, "subscriber", channel->name,
                  fmt::format("all {} subscriber slots are taken", frames.subscriber_slots()));
    index = static_cast<std::uint32_t>(slot);
    published_position = cursor.position;
    // A quarter ring: publishers held back get room in large steps, and a
    // subscriber that keeps reading never holds back more than that much
    // unpublished.
    release_batch = std::max<std::uint64_t>(frames.capacity() / 4, layout::frame_alignment);
    frames.set_subscriber_doorbell(index, bell.id);
    if (options.prefault) channel->prefault();
  }
  ~subscriber_core() {
    frames.unpark_subscriber(index);
    frames.unregister_subscriber(index);
    wake_publishers();  // we no longer hold anyone back
  }

  void wake_publishers() noexcept {
    ring_each(frames.take_waiting_publishers(), publisher_bells,
              [this](std::uint32_t i) { return frames.publisher_owner(i); });
  }

  // ---- reading --------------------------------------------------------------
  //
  // The slot's position tells publishers what this subscriber has released.
  // A delivered message is released by the next read; the position is
  // published lazily, when it has moved `release_batch` bytes since it was
  // last published or when a read finds nothing new (then everything read
  // is released). So a busy subscriber writes its slot (a seq_cst store and
  // a look at waiting_publishers) once per batch, not once per message,
  // and publishers re-read it as rarely; an idle or parked one has always
  // released all it read. Counters for tools go out with the position.

  [[gnu::noinline]] void publish_released(const ring_cursor& released) noexcept {
    published_position = released.position;
    frames.publish_position(index, released, frames.policy() == layout::policy_block);
    frames.count_delivered(index, received, missed);
    wake_publishers();
  }
  void release_all() noexcept {
    if (cursor.position != published_position) publish_released(cursor);
  }

  byte_message read() noexcept {
    if (copy != nullptr) return read_copy();
    ring::frame f;
    std::uint64_t lost = 0;
    const read_status st = frames.try_read(cursor, f, lost);
    if (st != read_status::ok) [[unlikely]]
      return nothing_read(st);
    return deliver(f, lost, f.payload);
  }

  /// Moves past `f`, delivered as `data`. Everything before `f` is released
  /// now (the previous message included); `f` stays readable until the
  /// next read.
  byte_message deliver(const ring::frame& f, std::uint64_t lost, std::span<const std::byte> data) noexcept {
    if (f.position - published_position >= release_batch) [[unlikely]]
      publish_released({f.position, f.sequence});
    ring::advance(cursor, f);
    ++received;
    missed += lost;
    return {data, f.sequence, lost, receive_status::ok};
  }

  [[gnu::noinline]] byte_message nothing_read(read_status st) noexcept {
    release_all();
    if (st == read_status::corrupt) return {{}, 0, 0, receive_status::corrupt};
    return {};
  }

  /// read() under the overwrite policy: the payload is copied out, then
  /// checked not to have been overwritten meanwhile (a spoiled copy is
  /// retried; the next try then reports the lag). A few tries bound the work.
  [[gnu::noinline]] byte_message read_copy() noexcept {
    for (int attempt = 0; attempt < 4; ++attempt) {
      ring::frame f;
      std::uint64_t lost = 0;
      const read_status st = frames.try_read(cursor, f, lost);
      if (st != read_status::ok) return nothing_read(st);
      if (!f.payload.empty()) std::memcpy(copy, f.payload.data(), f.payload.size());
      if (!frames.still_valid(f)) continue;
      return deliver(f, lost, {copy, f.payload.size()});
    }
    return {};
  }

  /// Spins on the commit word at the cursor for up to options.spin; true
  /// with the result in `out` when a read found a message (or corruption).
  bool spin_for_message(byte_message& out) noexcept {
    if (options.spin.count() <= 0) return false;
    const auto until = time_after(std::chrono::steady_clock::now(), options.spin);
    if (options.spin_backoff.count() > 0) return spin_with_backoff(out, until);
    for (;;) {
      // One load per turn; a full read when the frame is committed, and
      // every 64 turns (a lapped reader's position never reads committed).
      frames.spin_on_commit(cursor.position, 64);
      out = read();
      if (out.status != receive_status::empty) return true;
      if (std::chrono::steady_clock::now() >= until) return false;
    }
  }

  /// spin_for_message with options.spin_backoff between looks. The caller
  /// has just found nothing, so it waits first. Waiting polls the clock,
  /// not the ring: the frame lines stay with the publisher meanwhile.
  [[gnu::noinline]] bool spin_with_backoff(byte_message& out, std::chrono::steady_clock::time_point until) noexcept {
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= until) return false;
      const auto look_at = std::min(time_after(now, options.spin_backoff), until);
      while (std::chrono::steady_clock::now() < look_at) cpu_relax();
      out = read();
      if (out.status != receive_status::empty) return true;
    }
  }

  /// Called after a bounded sleep found nothing: if the cursor is stuck
  /// behind a claim for longer than liveness_check, repair it if its
  /// writer is dead (a live writer, even a stopped one, is waited for).
  void check_stall() noexcept {
    const std::uint64_t p = cursor.position;
    if (frames.tail_position() <= p) {
      stall_position = ~std::uint64_t{0};
      // A publisher that died without fences would make every park pay a
      // heavy barrier until its slot is freed.
      if (frames.has_unfenced_publishers()) frames.reclaim_dead_publishers(&alive);
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (stall_position != p) {
      stall_position = p;
      stall_since = now;
      return;
    }
    if (now - stall_since >= options.liveness_check) {
      frames.try_repair(p, &alive);
      stall_since = now;
    }
  }
};

}  // namespace detail

// ---- channel -------------------------------------------------------------------

namespace {

detail::ring_options ring_options_for(const channel_options& o, const payload_type& type) {
  detail::ring_options r;
  r.capacity = o.capacity;
  r.max_message = type.size != 0 ? type.size : o.max_message;
  r.policy = static_cast<std::uint32_t>(o.policy);
  r.publisher_slots = o.max_publishers;
  r.subscriber_slots = o.max_subscribers;
  r.type = {type.size, type.align, type.size != 0 ? detail::fnv1a_64(type.name) : 0, type.name};
  return r;
}

detail::type_fingerprint fingerprint_of(const payload_type& t) {
  return {t.size, t.align, t.size != 0 ? detail::fnv1a_64(t.name) : 0, t.name};
}

std::string shown_name(std::string_view name, const region& r) {
  if (!name.empty()) return std::string(name);
  return fmt::format("channel in a {}-byte region", r.size());
}

}  // namespace

std::size_t channel::region_size(const channel_options& options, const payload_type& type, std::string_view name) {
  return detail::ring_region_size(ring_options_for(options, type), name.empty() ? "channel" : name);
}

channel channel::create(region r, const channel_options& options, const payload_type& type, std::string_view name) {
  auto state = std::make_shared<detail::channel_state>();
  state->name = shown_name(name, r);
  const detail::ring_options ro = ring_options_for(options, type);
  const std::size_t need = detail::ring_region_size(ro, state->name);
  if (r.size() < need)
    throw error(errc::bad_size, "create", state->name,
                fmt::format("the region has {} bytes, the channel needs {}", r.size(), need));
  detail::ring_initialize(r.bytes().first(need), ro, state->name);
  const detail::type_fingerprint fp = fingerprint_of(type);
  state->frames = detail::ring::attach(r.bytes(), state->name, &fp);
  state->backing = std::move(r);
  return channel(std::move(state));
}

channel channel::attach(region r, const payload_type* expected, std::string_view name,
                        std::chrono::milliseconds init_timeout) {
  auto state = std::make_shared<detail::channel_state>();
  state->name = shown_name(name, r);
  // A creator stores the magic last; until then the header may be zeros.
  if (r.size() >= sizeof(std::uint64_t)) {
    const auto deadline = std::chrono::steady_clock::now() + init_timeout;
    auto magic = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(r.data()));
    while (magic.load(std::memory_order_acquire) == 0) {
      if (std::chrono::steady_clock::now() >= deadline)
        throw error(errc::timed_out, "attach", state->name,
                    fmt::format("the header was not initialised within {} ms (creator died?)", init_timeout.count()));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  std::optional<detail::type_fingerprint> fp;
  if (expected != nullptr) fp = fingerprint_of(*expected);
  state->frames = detail::ring::attach(r.bytes(), state->name, fp ? &*fp : nullptr);
  const auto& h = state->frames.header();
  if (h.type_size != 0 && state->frames.max_message() != h.type_size)
    throw error(errc::region_corrupt, "attach", state->name,
                fmt::format("a typed channel's max_message ({}) differs from its type size ({})",
                            state->frames.max_message(), h.type_size));
  state->backing = std::move(r);
  return channel(std::move(state));
}

channel channel::create_memfd(std::string_view name, const channel_options& options, const payload_type& type) {
  region r = region::create_memfd(name, region_size(options, type, name));
  return create(std::move(r), options, type, name);
}

const std::string& channel::name() const noexcept { return m_state->name; }
std::uint64_t channel::capacity() const noexcept { return m_state->frames.capacity(); }
std::uint32_t channel::max_message() const noexcept { return m_state->frames.max_message(); }
overflow_policy channel::policy() const noexcept { return static_cast<overflow_policy>(m_state->frames.policy()); }
const region& channel::backing() const noexcept { return m_state->backing; }

payload_type channel::type() const noexcept {
  const auto& h = m_state->frames.header();
  return {h.type_size, h.type_align, std::string_view(h.type_name, ::strnlen(h.type_name, sizeof h.type_name))};
}

channel::statistics channel::stats() const noexcept {
  const detail::ring& r = m_state->frames;
  statistics s;
  s.tail_position = r.tail_position();
  s.published = r.tail_sequence();
  auto& h = r.header();
  s.subscribers = static_cast<std::uint32_t>(
      std::popcount(std::atomic_ref<std::uint64_t>(h.active_subscribers).load(std::memory_order_relaxed)));
  s.parked = static_cast<std::uint32_t>(
      std::popcount(std::atomic_ref<std::uint64_t>(h.parked_subscribers).load(std::memory_order_relaxed)));
  for (std::uint32_t i = 0; i < r.publisher_slots(); ++i)
    if (static_cast<std::uint32_t>(r.publisher_owner(i).incarnation) == detail::layout::slot_active) ++s.publishers;
  return s;
}

// ---- publishing ------------------------------------------------------------------

byte_publisher::byte_publisher(channel ch, publisher_options options) {
  if (!ch) throw error(errc::bad_name, "publisher", "channel", "the channel handle is empty");
  auto state = ch.state();
  m_core = std::make_unique<detail::publisher_core>(std::move(ch), std::move(state), options);
}
byte_publisher::byte_publisher(byte_publisher&&) noexcept = default;
byte_publisher& byte_publisher::operator=(byte_publisher&&) noexcept = default;
byte_publisher::~byte_publisher() = default;

std::uint32_t byte_publisher::max_message() const noexcept { return m_core->frames.max_message(); }
const channel& byte_publisher::get_channel() const noexcept { return m_core->handle; }
std::uint32_t byte_publisher::slot() const noexcept { return m_core->index; }
detail::frame_cache& byte_publisher::frames() noexcept { return m_core->coroutine_frames; }

namespace {

publish_status status_of(detail::claim_status st) noexcept {
  switch (st) {
    case detail::claim_status::ok: return publish_status::ok;
    case detail::claim_status::would_block: return publish_status::would_block;
    case detail::claim_status::too_large: return publish_status::too_large;
    case detail::claim_status::corrupt: break;
  }
  return publish_status::corrupt;
}

}  // namespace

publish_status byte_publisher::try_claim(std::uint32_t length, detail::claim_ticket& out) noexcept {
  return status_of(m_core->frames.try_claim(length, m_core->index, out));
}

void byte_publisher::commit(const detail::claim_ticket& c) noexcept {
  m_core->frames.commit(c, m_core->index);
  m_core->wake_subscribers();
}

publish_status byte_publisher::try_publish(std::span<const std::byte> bytes) noexcept {
  detail::publisher_core& core = *m_core;
  const publish_status st = status_of(core.frames.publish_copy(bytes, core.index));
  if (st == publish_status::ok) core.wake_subscribers();
  return st;
}

byte_loan byte_publisher::try_loan(std::uint32_t length) noexcept {
  // The ring writes the claim into the loan itself, which is returned in
  // place: no copy of a ticket just stored (detail/fresh_copy.hpp).
  byte_loan loan;
  if (try_claim(length, loan.m_claim) == publish_status::ok) loan.m_owner = m_core.get();
  return loan;
}

task<void> byte_publisher::claim_when_room(detail::frame_cache&, byte_publisher& self, std::uint32_t length,
                                           detail::claim_ticket& out) {
  detail::publisher_core& core = *self.m_core;
  scheduler& s = detail::current_scheduler("publish", core.channel->name);
  if (!core.bell) {
    core.bell = std::make_unique<detail::own_doorbell>();
    core.frames.set_publisher_doorbell(core.index, core.bell->id);
  }
  for (;;) {
    core.frames.park_publisher(core.index);
    const publish_status st = self.try_claim(length, out);
    if (st != publish_status::would_block) {
      core.frames.unpark_publisher(core.index);
      if (st == publish_status::too_large)
        throw error(errc::bad_size, "publish", core.channel->name, "message longer than the channel's maximum");
      if (st == publish_status::corrupt)
        throw error(errc::region_corrupt, "publish", core.channel->name, detail::corrupt_claim_word);
      co_return;
    }
    // Woken by a subscriber that freed room, or after liveness_check to let
    // try_claim reclaim the slots of dead subscribers.
    co_await core.bell->bell.wait_for(s, core.options.liveness_check);
    core.frames.unpark_publisher(core.index);
  }
}

byte_loan& byte_loan::operator=(byte_loan&& other) noexcept {
  if (this != &other) {
    if (m_owner != nullptr) m_owner->frames.abandon(m_claim, m_owner->index);
    m_owner = std::exchange(other.m_owner, nullptr);
    m_claim = other.m_claim;
  }
  return *this;
}

byte_loan::~byte_loan() {
  if (m_owner != nullptr) {
    m_owner->frames.abandon(m_claim, m_owner->index);
    m_owner->wake_subscribers();
  }
}

void byte_loan::commit() noexcept {
  if (m_owner == nullptr) return;
  m_owner->frames.commit(m_claim, m_owner->index);
  m_owner->wake_subscribers();
  m_owner = nullptr;
}

// ---- subscribing -----------------------------------------------------------------

byte_subscriber::byte_subscriber(channel ch, subscriber_options options) {
  if (!ch) throw error(errc::bad_name, "subscriber", "channel", "the channel handle is empty");
  auto state = ch.state();
  m_core = std::make_unique<detail::subscriber_core>(std::move(ch), std::move(state), options);
}
byte_subscriber::byte_subscriber(byte_subscriber&&) noexcept = default;
byte_subscriber& byte_subscriber::operator=(byte_subscriber&&) noexcept = default;
byte_subscriber::~byte_subscriber() = default;

byte_message byte_subscriber::try_next() noexcept { return m_core->read(); }
bool byte_subscriber::spin_for_message(byte_message& out) noexcept { return m_core->spin_for_message(out); }
std::uint64_t byte_subscriber::received() const noexcept { return m_core->received; }
std::uint64_t byte_subscriber::missed() const noexcept { return m_core->missed; }
std::uint32_t byte_subscriber::max_message() const noexcept { return m_core->frames.max_message(); }
const channel& byte_subscriber::get_channel() const noexcept { return m_core->handle; }
std::uint32_t byte_subscriber::slot() const noexcept { return m_core->index; }
detail::frame_cache& byte_subscriber::frames() noexcept { return m_core->coroutine_frames; }

task<void> byte_subscriber::next_when_available(detail::frame_cache&, byte_subscriber& self, byte_message& out) {
  detail::subscriber_core& core = *self.m_core;
  scheduler& s = detail::current_scheduler("next", core.channel->name);
  for (;;) {
    // Not guaranteed a ring only where membarrier is refused to us while a
    // publisher relies on it: then look again every millisecond.
    const bool will_be_rung = core.frames.park_subscriber(core.index);
    out = core.read();
    if (out.status != receive_status::empty) {
      core.frames.unpark_subscriber(core.index);
      co_return;
    }
    std::chrono::nanoseconds bound = core.options.liveness_check;
    if (!will_be_rung) bound = std::min<std::chrono::nanoseconds>(bound, std::chrono::milliseconds(1));
    co_await core.bell.bell.wait_for(s, bound);
    core.frames.unpark_subscriber(core.index);
    out = core.read();
    if (out.status != receive_status::empty) co_return;
    core.check_stall();
  }
}

}  // namespace shmbus
