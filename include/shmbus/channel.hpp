// channel: typed and untyped publish/subscribe over one shared region.
//
// A channel is a ring of frames in a region (docs/LAYOUT.md); any number
// of publishers and subscribers, in any processes, attach to it. Every
// subscriber sees every message (broadcast), in publication order per
// publisher.
//
//   publisher                                  subscriber
//   ---------                                  ----------
//   claim room (16-byte CAS on the tail)       read the frame at its cursor
//   write the payload in place                 (zero copy: a view into the ring,
//   commit (seq_cst store of the commit word)   valid until its next read)
//   load parked_subscribers: 0 → done          nothing? spin for options.spin
//     else ring those subscribers' eventfds     (looks options.spin_backoff
//     (write(2), fetched once per subscriber)   apart), then park: set its
//                                               parked bit, re-read, sleep on
//                                               its eventfd
//
// Waiting: co_await publish() suspends only under the block policy while
// the slowest live subscriber is a full ring behind; co_await next() only
// when nothing is there. Both wait on the scheduler running the calling
// thread (scheduler::current()). Their try_ twins never wait, never throw.
//
// Liveness: a parked subscriber wakes at least every liveness_check to
// repair the claim of a publisher that died before committing; a held-back
// publisher reclaims the slots of dead subscribers at the same pace.
// Deaths are decided by pid + start time, never by missed heartbeats.
//
// Thread-safety: one handle (publisher or subscriber) is used by one thread
// at a time; several handles on one channel may live in several threads and
// processes.
#pragma once

#include <shmbus/detail/claim_ticket.hpp>
#include <shmbus/detail/frame_cache.hpp>
#include <shmbus/detail/fresh_copy.hpp>
#include <shmbus/error.hpp>
#include <shmbus/export.hpp>
#include <shmbus/region.hpp>
#include <shmbus/task.hpp>

#include <range/v3/view/facade.hpp>
#include <range/v3/view/take_while.hpp>
#include <range/v3/view/transform.hpp>

#include <chrono>
#include <concepts>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace shmbus {

/// What publishers do when the slowest subscriber is a full ring behind.
enum class overflow_policy : std::uint32_t {
  block = 0,      ///< wait for room: nothing is ever lost
  overwrite = 1,  ///< never wait: a lagging subscriber is told how many it missed
};

/// The shape of a channel, fixed when it is created.
struct channel_options {
  std::uint64_t capacity = std::uint64_t{1} << 20;  ///< ring bytes, a power of two (4 KiB .. 1 TiB)
  std::uint32_t max_message = 4096;  ///< largest payload (byte channels; typed ones use sizeof(T))
  overflow_policy policy = overflow_policy::block;
  std::uint32_t max_publishers = 16;   ///< publisher slots, 1..64
  std::uint32_t max_subscribers = 16;  ///< subscriber slots, 1..64
};

/// What a channel carries: its size, alignment and name are checked when a
/// channel is opened. size 0 means variable-length bytes.
struct payload_type {
  std::uint32_t size = 0;
  std::uint32_t align = 0;
  std::string_view name;
};

namespace detail {
template <class T>
constexpr std::string_view pretty_type_name() noexcept {
  // g++: "... [with T = tick; ...]"; clang: "... [T = tick]".
  constexpr std::string_view f = __PRETTY_FUNCTION__;
  constexpr std::size_t start = f.find("T = ") + 4;
  constexpr std::size_t end = f.find_first_of(";]", start);
  return f.substr(start, end - start);
}
}  // namespace detail

/// The name a channel records for T: `T::shmbus_type_name` when T declares
/// one (recommended for types shared between programs built by different
/// compilers), otherwise the type's name as the compiler spells it.
template <class T>
constexpr std::string_view type_name_of() noexcept {
  if constexpr (requires { { T::shmbus_type_name } -> std::convertible_to<std::string_view>; })
    return T::shmbus_type_name;
  else
    return detail::pretty_type_name<T>();
}

/// Payloads that typed channels accept.
template <class T>
concept channel_payload = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && alignof(T) <= 32 &&
                          sizeof(T) <= (std::size_t{1} << 30);

template <channel_payload T>
constexpr payload_type payload_type_of() noexcept {
  return {static_cast<std::uint32_t>(sizeof(T)), static_cast<std::uint32_t>(alignof(T)), type_name_of<T>()};
}

namespace detail {
struct channel_state;
struct publisher_core;
struct subscriber_core;
}  // namespace detail

/// A mapped, validated channel region. Copies share it; publishers and
/// subscribers keep it mapped while they live.
class SHMBUS_API channel {
 public:
  /// Bytes a region needs for these options; throws errc::bad_size naming `name`.
  static std::size_t region_size(const channel_options& options, const payload_type& type, std::string_view name = {});
  /// Writes a new channel into `r` (zero-filled, at least region_size()
  /// bytes, not yet visible to anyone who might attach concurrently except
  /// through the magic, which is stored last).
  static channel create(region r, const channel_options& options, const payload_type& type,
                        std::string_view name = {});
  /// Attaches to a channel another handle created. If the header is still
  /// being written (magic not yet stored), waits up to `init_timeout` for
  /// it. Throws errc::region_corrupt, version_mismatch, type_mismatch (when
  /// `expected` is given and differs), timed_out.
  static channel attach(region r, const payload_type* expected, std::string_view name = {},
                        std::chrono::milliseconds init_timeout = std::chrono::seconds(1));
  /// A private channel in a new memfd (share it by passing the fd).
  static channel create_memfd(std::string_view name, const channel_options& options, const payload_type& type);

  channel() noexcept = default;

  const std::string& name() const noexcept;
  std::uint64_t capacity() const noexcept;
  std::uint32_t max_message() const noexcept;
  overflow_policy policy() const noexcept;
  payload_type type() const noexcept;  ///< views into the shared header
  const region& backing() const noexcept;
  explicit operator bool() const noexcept { return m_state != nullptr; }

  /// A snapshot of the channel's counters, for tools.
  struct statistics {
    std::uint64_t tail_position = 0;
    std::uint64_t published = 0;  ///< data frames claimed so far (tail sequence)
    std::uint32_t publishers = 0;
    std::uint32_t subscribers = 0;
    std::uint32_t parked = 0;
  };
  statistics stats() const noexcept;

  std::shared_ptr<detail::channel_state> state() const noexcept { return m_state; }

 private:
  explicit channel(std::shared_ptr<detail::channel_state> s) noexcept : m_state(std::move(s)) {}
  std::shared_ptr<detail::channel_state> m_state;
};

/// How a non-waiting publish went.
enum class publish_status : std::uint8_t {
  ok,           ///< committed
  would_block,  ///< block policy: no room until the slowest subscriber reads
  too_large,    ///< longer than the channel's max_message
  /// the channel's claim word breaks the layout (some process wrote it
  /// without following docs/LAYOUT.md): nothing was published, and nothing
  /// will be until the channel is made again
  corrupt,
};

/// When a publisher asks for the cache lines ahead of its claims
/// (publisher_options::prefetch_ahead).
enum class prefetch_ahead_mode : std::uint8_t {
  /// While some subscriber has two or more messages of the channel not yet
  /// released (a stream, not a ping-pong or a request and its reply), as
  /// looked at every 256 KiB of the ring (four times a lap in a smaller
  /// one): on at the first look that finds it, off after four that don't.
  when_streaming,
  always,
  never,
};

struct publisher_options {
  /// While held back, how often to check whether the subscribers holding
  /// us back are still alive (dead ones' slots are reclaimed). Also the
  /// longest a held-back publisher sleeps between two looks at the ring.
  std::chrono::milliseconds liveness_check{100};
  /// Fill this process's page tables for the whole channel when the handle
  /// is made (once per channel per process), so that the first lap through
  /// the ring takes no page fault per page (1-5 µs each). Channels larger
  /// than 64 MiB are never prefaulted (they would become resident at once).
  bool prefault = true;
  /// For small messages (payloads up to 96 bytes): whether each claim also
  /// asks for the cache lines a kilobyte past it, which later claims will
  /// write, so that they are on their way from the subscriber's core
  /// before the stores reach them. Where the two cores are far apart (a
  /// line crossing in 200 ns or more) a 64-byte stream runs 2-3x faster; a
  /// message nobody streams behind pays 5-15 ns more latency. By default
  /// only while streaming (docs/CHANNELS.md, "Asking a kilobyte ahead").
  prefetch_ahead_mode prefetch_ahead = prefetch_ahead_mode::when_streaming;
};

class byte_publisher;

/// Room in the ring, lent to a publisher: fill data(), then commit().
/// Dropped without commit, the room is skipped by readers (an aborted frame).
class SHMBUS_API byte_loan {
 public:
  byte_loan() noexcept = default;
  byte_loan(byte_loan&& other) noexcept
      : m_owner(std::exchange(other.m_owner, nullptr)), m_claim(other.m_claim) {}
  byte_loan& operator=(byte_loan&& other) noexcept;
  ~byte_loan();

  explicit operator bool() const noexcept { return m_owner != nullptr; }
  std::span<std::byte> data() const noexcept { return {m_claim.payload, m_claim.length}; }
  /// Publishes the message; the loan becomes empty.
  void commit() noexcept;

 private:
  friend class byte_publisher;
  byte_loan(detail::publisher_core* owner, const detail::claim_ticket& c) noexcept : m_owner(owner), m_claim(c) {}
  detail::publisher_core* m_owner = nullptr;
  detail::claim_ticket m_claim;
};

namespace detail {

/// Awaitable shared by publish() and loan(): tries to claim at once; if
/// there is no room, runs the slow path (a coroutine whose frame is
/// recycled by the publisher) until the claim succeeds, then finishes.
template <class Finish>
class claim_awaitable {
 public:
  claim_awaitable(byte_publisher& p, std::uint32_t length, Finish finish) noexcept
      : m_publisher(&p), m_length(length), m_finish(std::move(finish)) {}
  bool await_ready() noexcept;
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    m_slow = slow_path();
    return m_slow.operator co_await().await_suspend(h);
  }
  decltype(auto) await_resume();

 private:
  task<void> slow_path();
  byte_publisher* m_publisher;
  std::uint32_t m_length;
  Finish m_finish;
  publish_status m_status = publish_status::would_block;
  claim_ticket m_claim;
  task<void> m_slow;
};

}  // namespace detail

/// Publishes variable-length messages (0 .. max_message bytes). Move-only.
class SHMBUS_API byte_publisher {
 public:
  /// Takes a publisher slot. Throws errc::would_block (named) when all
  /// slots are taken.
  explicit byte_publisher(channel ch, publisher_options options = {});
  byte_publisher(byte_publisher&&) noexcept;
  byte_publisher& operator=(byte_publisher&&) noexcept;
  ~byte_publisher();

  /// Copies `bytes` into the ring and commits. Never waits, never throws.
  publish_status try_publish(std::span<const std::byte> bytes) noexcept;
  /// Same, waiting for room under the block policy. Resumes at once when
  /// there is room. Throws errc::bad_size (too long), errc::region_corrupt
  /// (publish_status::corrupt), errc::cancelled.
  [[nodiscard]] auto publish(std::span<const std::byte> bytes) noexcept {
    struct copy_and_commit {
      std::span<const std::byte> m_bytes;
      publish_status try_at_once(byte_publisher& p) const noexcept { return p.try_publish(m_bytes); }
      void operator()(byte_publisher& p, const detail::claim_ticket& c) const noexcept {
        if (!m_bytes.empty()) std::memcpy(c.payload, m_bytes.data(), m_bytes.size());
        p.commit(c);
      }
    };
    return detail::claim_awaitable<copy_and_commit>(*this, static_cast<std::uint32_t>(
                                                               std::min<std::size_t>(bytes.size(), UINT32_MAX)),
                                                    copy_and_commit{bytes});
  }
  /// Lends `length` bytes of the ring; empty when there is no room now (or
  /// `length` is too large: see max_message(); or the channel is corrupt,
  /// which try_publish and loan() tell apart). Never throws.
  byte_loan try_loan(std::uint32_t length) noexcept;
  /// Lends `length` bytes, waiting for room. Throws like publish().
  [[nodiscard]] auto loan(std::uint32_t length) noexcept {
    struct make_loan {
      byte_loan operator()(byte_publisher& p, const detail::claim_ticket& c) const noexcept { return p.lend(c); }
    };
    return detail::claim_awaitable<make_loan>(*this, length, make_loan{});
  }

  std::uint32_t max_message() const noexcept;
  const channel& get_channel() const noexcept;
  /// The slot this publisher holds (index into the channel's table).
  std::uint32_t slot() const noexcept;

  // ---- the parts the awaitables are made of ---------------------------------
  publish_status try_claim(std::uint32_t length, detail::claim_ticket& out) noexcept;
  void commit(const detail::claim_ticket& c) noexcept;
  byte_loan lend(const detail::claim_ticket& c) noexcept { return byte_loan(m_core.get(), c); }
  /// Waits until a claim of `length` succeeds (block policy).
  static task<void> claim_when_room(detail::frame_cache& frames, byte_publisher& self, std::uint32_t length,
                                    detail::claim_ticket& out);
  detail::frame_cache& frames() noexcept;

 private:
  std::unique_ptr<detail::publisher_core> m_core;
};

namespace detail {

/// What publish() and loan() say when the claim word breaks the layout.
inline constexpr std::string_view corrupt_claim_word = "the claim word is not at a frame boundary";

/// A Finish that can also do the whole operation in one call when there is
/// room (publish: claim, copy and commit without leaving the library).
template <class Finish>
concept finishes_at_once = requires(const Finish& f, byte_publisher& p) {
  { f.try_at_once(p) } -> std::same_as<publish_status>;
};

template <class Finish>
bool claim_awaitable<Finish>::await_ready() noexcept {
  if constexpr (finishes_at_once<Finish>) {
    m_status = m_finish.try_at_once(*m_publisher);
  } else {
    m_status = m_publisher->try_claim(m_length, m_claim);
  }
  return m_status != publish_status::would_block;
}

template <class Finish>
task<void> claim_awaitable<Finish>::slow_path() {
  return byte_publisher::claim_when_room(m_publisher->frames(), *m_publisher, m_length, m_claim);
}

template <class Finish>
decltype(auto) claim_awaitable<Finish>::await_resume() {
  if constexpr (finishes_at_once<Finish>) {
    if (!m_slow.valid() && m_status == publish_status::ok) return;  // try_at_once did it all
  }
  if (m_slow.valid())
    m_slow.operator co_await().await_resume();
  else if (m_status == publish_status::too_large)
    throw error(errc::bad_size, "publish", m_publisher->get_channel().name(),
                "message of " + std::to_string(m_length) + " bytes is longer than the channel's maximum of " +
                    std::to_string(m_publisher->max_message()));
  else if (m_status == publish_status::corrupt)
    throw error(errc::region_corrupt, "publish", m_publisher->get_channel().name(), corrupt_claim_word);
  return m_finish(*m_publisher, m_claim);
}

}  // namespace detail

/// How a non-waiting read went.
enum class receive_status : std::uint8_t {
  ok,       ///< a message
  empty,    ///< nothing new (or the next message is not committed yet)
  corrupt,  ///< the ring holds a frame that breaks the layout: this subscriber cannot go on
};

/// A received message. The bytes are a view into the ring (block policy)
/// or into the subscriber's own buffer (overwrite policy, where the ring's
/// bytes may be overwritten while read); either way valid until the
/// subscriber's next read.
struct byte_message {
  std::span<const std::byte> data;
  std::uint64_t sequence = 0;  ///< the channel-wide sequence number
  std::uint64_t missed = 0;    ///< messages overwritten just before this one (overwrite policy)
  receive_status status = receive_status::empty;
  explicit operator bool() const noexcept { return status == receive_status::ok; }
};

/// Where a new subscriber starts.
enum class start_at : std::uint8_t {
  newest,  ///< with the next message published
  oldest,  ///< with the oldest message still in the ring
};

struct subscriber_options {
  start_at start = start_at::newest;
  /// How long next() spins on the ring before parking on its eventfd; 0 is
  /// pure event mode (no spinning).
  std::chrono::nanoseconds spin{std::chrono::microseconds(20)};
  /// While spinning, how long to wait after a look at the ring that found
  /// nothing before looking again; 0 or less looks continuously (the
  /// lowest latency). A gap of a few microseconds leaves the lines a
  /// publisher is about to write alone while it writes a batch of frames,
  /// which the subscriber then reads in one go: a stream whose subscriber
  /// keeps up moves faster, each message later by up to one gap. The wait
  /// itself reads the clock only (docs/CHANNELS.md, "Waiting").
  std::chrono::nanoseconds spin_backoff{0};
  /// How often a parked subscriber wakes to check for a publisher that died
  /// between claim and commit (its claim is then skipped).
  std::chrono::milliseconds liveness_check{100};
  /// As publisher_options::prefault.
  bool prefault = true;
};

class byte_subscriber;

namespace detail {

/// Awaitable of next(): reads at once if a message is there, otherwise
/// spins in await_suspend (no frame yet), then parks and sleeps in a
/// recycled coroutine frame.
class next_awaitable {
 public:
  explicit next_awaitable(byte_subscriber& s) noexcept : m_subscriber(&s) {}
  bool await_ready() noexcept;
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h);
  byte_message await_resume();

 private:
  task<void> slow_path();
  byte_subscriber* m_subscriber;
  byte_message m_message;
  task<void> m_slow;
};

/// The range of drain(): input, single pass, ends at the first empty read.
class drain_view : public ranges::view_facade<drain_view, ranges::unknown> {
 public:
  drain_view() = default;
  explicit drain_view(byte_subscriber* s) noexcept : m_subscriber(s) {}

 private:
  friend ranges::range_access;
  struct cursor {
    byte_subscriber* m_subscriber = nullptr;
    byte_message m_current;
    cursor() = default;
    explicit cursor(byte_subscriber* s) noexcept;
    const byte_message& read() const noexcept { return m_current; }
    void next() noexcept;
    bool equal(ranges::default_sentinel_t) const noexcept { return !m_current; }
  };
  cursor begin_cursor() const noexcept { return cursor{m_subscriber}; }
  byte_subscriber* m_subscriber = nullptr;
};

}  // namespace detail

/// Receives every message of a channel. Move-only.
class SHMBUS_API byte_subscriber {
 public:
  /// Takes a subscriber slot and registers its doorbell with this process's
  /// doorbell server. Throws errc::would_block (named) when all slots are
  /// taken.
  explicit byte_subscriber(channel ch, subscriber_options options = {});
  byte_subscriber(byte_subscriber&&) noexcept;
  byte_subscriber& operator=(byte_subscriber&&) noexcept;
  ~byte_subscriber();

  /// The next message, if one is there; releases the previous one. Never
  /// waits, never throws.
  byte_message try_next() noexcept;
  /// The next message, waiting for it. Throws errc::region_corrupt when the
  /// ring breaks the layout, errc::cancelled on stop, errc::not_supported
  /// when it must wait and no scheduler runs on this thread.
  [[nodiscard]] detail::next_awaitable next() noexcept { return detail::next_awaitable(*this); }
  /// Everything available now, one message per element (each valid until
  /// the range moves past it): `for (auto& m : sub.drain()) ...`.
  detail::drain_view drain() noexcept { return detail::drain_view(this); }

  /// Messages delivered, and messages missed (overwrite policy), so far.
  std::uint64_t received() const noexcept;
  std::uint64_t missed() const noexcept;
  std::uint32_t max_message() const noexcept;
  const channel& get_channel() const noexcept;
  std::uint32_t slot() const noexcept;

  // ---- the parts next() is made of -------------------------------------------
  /// Spins for up to options.spin; true when a read found a message (or
  /// corruption), in `out`. Never waits on anything but the ring.
  bool spin_for_message(byte_message& out) noexcept;
  /// Parks until a message comes (no spinning).
  static task<void> next_when_available(detail::frame_cache& frames, byte_subscriber& self, byte_message& out);
  detail::frame_cache& frames() noexcept;

 private:
  std::unique_ptr<detail::subscriber_core> m_core;
};

namespace detail {

/// A copy of a message that was stored a moment ago, made one field at a
/// time (detail/fresh_copy.hpp).
inline byte_message fresh_copy(const byte_message& m) noexcept {
  const std::byte* data = m.data.data();
  std::size_t size = m.data.size();
  std::uint64_t sequence = m.sequence;
  std::uint64_t missed = m.missed;
  receive_status status = m.status;
  in_registers(data, size, sequence, missed, status);
  return {{data, size}, sequence, missed, status};
}

inline bool next_awaitable::await_ready() noexcept {
  m_message = fresh_copy(m_subscriber->try_next());
  return m_message.status != receive_status::empty;
}

template <class Promise>
bool next_awaitable::await_suspend(std::coroutine_handle<Promise> h) {
  // Spinning here, before any coroutine frame exists, keeps the path from
  // "the message is there" to the caller's next statement short.
  if (m_subscriber->spin_for_message(m_message)) return false;
  m_slow = slow_path();
  return m_slow.operator co_await().await_suspend(h);
}

inline task<void> next_awaitable::slow_path() {
  return byte_subscriber::next_when_available(m_subscriber->frames(), *m_subscriber, m_message);
}

inline byte_message next_awaitable::await_resume() {
  if (m_slow.valid()) m_slow.operator co_await().await_resume();
  if (m_message.status == receive_status::corrupt)
    throw error(errc::region_corrupt, "next", m_subscriber->get_channel().name(),
                "a frame in the ring breaks the layout");
  return fresh_copy(m_message);
}

inline drain_view::cursor::cursor(byte_subscriber* s) noexcept : m_subscriber(s) {
  if (s != nullptr) m_current = s->try_next();
}
inline void drain_view::cursor::next() noexcept { m_current = m_subscriber->try_next(); }

}  // namespace detail

// ---- typed channels ------------------------------------------------------------

namespace detail {

/// `ch` if it carries T (size, alignment, name), else errc::type_mismatch.
template <class T>
channel require_payload(channel ch, const char* operation) {
  const payload_type t = ch.type();
  const payload_type want = payload_type_of<T>();
  if (t.size != want.size || t.align != want.align || t.name != want.name)
    throw error(errc::type_mismatch, operation, ch.name(),
                "the channel carries '" + std::string(t.name) + "', not '" + std::string(want.name) + "'");
  return ch;
}

}  // namespace detail

/// A received T: points into the ring (block policy) or into the
/// subscriber's copy (overwrite policy); valid until the next read.
template <class T>
class sample {
 public:
  sample() noexcept = default;
  explicit sample(const byte_message& m) noexcept
      : m_value(m ? reinterpret_cast<const T*>(m.data.data()) : nullptr),
        m_sequence(m.sequence),
        m_missed(m.missed),
        m_status(m.status) {}

  explicit operator bool() const noexcept { return m_value != nullptr; }
  const T& operator*() const noexcept { return *m_value; }
  const T* operator->() const noexcept { return m_value; }
  const T* get() const noexcept { return m_value; }
  std::uint64_t sequence() const noexcept { return m_sequence; }
  std::uint64_t missed() const noexcept { return m_missed; }
  receive_status status() const noexcept { return m_status; }

 private:
  const T* m_value = nullptr;
  std::uint64_t m_sequence = 0;
  std::uint64_t m_missed = 0;
  receive_status m_status = receive_status::empty;
};

/// A loan of room for one T.
template <class T>
class loan {
 public:
  loan() noexcept = default;
  explicit loan(byte_loan bytes) noexcept : m_bytes(std::move(bytes)) {}
  explicit operator bool() const noexcept { return static_cast<bool>(m_bytes); }
  /// Constructs the T in place (the ring's bytes are its storage).
  template <class... Args>
  T& emplace(Args&&... args) noexcept(std::is_nothrow_constructible_v<T, Args...>) {
    return *::new (static_cast<void*>(m_bytes.data().data())) T(std::forward<Args>(args)...);
  }
  T* get() const noexcept { return std::launder(reinterpret_cast<T*>(m_bytes.data().data())); }
  void commit() noexcept { m_bytes.commit(); }

 private:
  byte_loan m_bytes;
};

/// Publishes Ts. The channel's payload type must be payload_type_of<T>().
template <channel_payload T>
class publisher {
 public:
  explicit publisher(channel ch, publisher_options options = {}) : m_bytes(check(std::move(ch)), options) {}

  publish_status try_publish(const T& value) noexcept { return m_bytes.try_publish(as_bytes(value)); }
  [[nodiscard]] auto publish(const T& value) noexcept { return m_bytes.publish(as_bytes(value)); }
  shmbus::loan<T> try_loan() noexcept { return shmbus::loan<T>(m_bytes.try_loan(sizeof(T))); }
  /// Lends room for one T, waiting for it (block policy).
  [[nodiscard]] auto loan() noexcept {
    struct make_loan {
      shmbus::loan<T> operator()(byte_publisher& p, const detail::claim_ticket& c) const noexcept {
        return shmbus::loan<T>(p.lend(c));
      }
    };
    return detail::claim_awaitable<make_loan>(m_bytes, sizeof(T), make_loan{});
  }

  byte_publisher& bytes() noexcept { return m_bytes; }
  const channel& get_channel() const noexcept { return m_bytes.get_channel(); }

 private:
  static std::span<const std::byte> as_bytes(const T& v) noexcept {
    return {reinterpret_cast<const std::byte*>(&v), sizeof(T)};
  }
  static channel check(channel ch) { return detail::require_payload<T>(std::move(ch), "publisher"); }
  byte_publisher m_bytes;
};

/// Receives Ts.
template <channel_payload T>
class subscriber {
  struct next_awaitable {
    detail::next_awaitable m_inner;
    byte_subscriber* m_subscriber;
    bool await_ready() noexcept { return m_inner.await_ready(); }
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> h) {
      return m_inner.await_suspend(h);
    }
    sample<T> await_resume() {
      sample<T> s = typed(m_inner.await_resume());
      if (s.status() == receive_status::corrupt)
        throw error(errc::region_corrupt, "next", m_subscriber->get_channel().name(),
                    "a message has the wrong size for its type");
      return s;
    }
  };

 public:
  explicit subscriber(channel ch, subscriber_options options = {}) : m_bytes(check(std::move(ch)), options) {}

  /// A sample (empty when nothing is there, or a frame of the wrong size:
  /// then status() is corrupt). Never waits, never throws.
  sample<T> try_next() noexcept { return typed(m_bytes.try_next()); }
  /// Waits for the next T. Throws like byte_subscriber::next().
  [[nodiscard]] auto next() noexcept { return next_awaitable{m_bytes.next(), &m_bytes}; }
  /// Everything available now, as a range of const T& (a message of the
  /// wrong size, which only a corrupted ring can hold, ends it).
  auto drain() noexcept {
    return m_bytes.drain() |
           ranges::views::take_while([](const byte_message& m) { return m.data.size() == sizeof(T); }) |
           ranges::views::transform(
               [](const byte_message& m) -> const T& { return *reinterpret_cast<const T*>(m.data.data()); });
  }

  std::uint64_t received() const noexcept { return m_bytes.received(); }
  std::uint64_t missed() const noexcept { return m_bytes.missed(); }
  byte_subscriber& bytes() noexcept { return m_bytes; }
  const channel& get_channel() const noexcept { return m_bytes.get_channel(); }

 private:
  static sample<T> typed(byte_message m) noexcept {
    if (m && m.data.size() != sizeof(T)) m.status = receive_status::corrupt;
    return sample<T>(m);
  }
  static channel check(channel ch) { return detail::require_payload<T>(std::move(ch), "subscriber"); }
  byte_subscriber m_bytes;
};

}  // namespace shmbus
