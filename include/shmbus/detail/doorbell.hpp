// Doorbell exchange: handing eventfds between processes, without a daemon.
//
// An eventfd cannot be opened by path. Each process that owns doorbells
// (the eventfds its subscribers sleep on) runs one doorbell_server: a
// Unix-domain SOCK_SEQPACKET socket in the abstract namespace named after
// the process's identity,
//
//     @shmbus/<pid>/<start_time>          (see doorbell_socket_name)
//
// which anyone who knows the owner's process_identity (stored in shared
// memory) can reach. A client connects, checks with SO_PEERCRED that the
// listening process IS the owner (anyone may bind any abstract name), sends
// {magic, version, id}, and receives {magic, version, status, id} plus, when
// the status is ok, the eventfd as SCM_RIGHTS. The server checks the
// client's credentials (same effective uid, or an allowed group) before
// answering. The exchange happens once per subscriber, never per message.
// docs/NOTIFY.md gives the protocol byte by byte, the checks and the threat
// model.
#pragma once

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/export.hpp>
#include <shmbus/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace shmbus {

class scheduler;

namespace detail {

/// Why a doorbell could not be fetched (besides errc::timed_out and
/// kernel errnos). Category name "shmbus.doorbell"; each maps to the
/// nearest generic condition, e.g. `code == std::errc::no_such_process`.
enum class doorbell_errc : int {
  owner_dead = 1,  ///< the owner does not exist any more (or its pid was reused)  ~ ESRCH
  not_serving,     ///< the owner is alive but nobody listens on its socket name   ~ ECONNREFUSED
  wrong_server,    ///< the socket name is held by a process other than the owner
  refused,         ///< the owner refused our credentials                          ~ EACCES
  unknown_id,      ///< the owner serves no doorbell with that id                  ~ ENOENT
  bad_request,     ///< the owner did not understand our request (version?)        ~ EPROTO
  bad_reply,       ///< the reply was malformed, lacked the eventfd, or was cut    ~ EPROTO
};

/// The category of doorbell_errc.
SHMBUS_API const std::error_category& doorbell_category() noexcept;
/// Makes doorbell_errc usable as a std::error_code (found by ADL).
SHMBUS_API std::error_code make_error_code(doorbell_errc e) noexcept;

/// The exchange's wire format: one SOCK_SEQPACKET message each way, native
/// byte order (both ends are on this host). docs/NOTIFY.md has the diagram.
namespace doorbell_wire {

inline constexpr std::uint32_t request_magic = 0x51524253;  ///< bytes "SBRQ"
inline constexpr std::uint32_t reply_magic = 0x50524253;    ///< bytes "SBRP"
inline constexpr std::uint16_t version = 1;

/// What the client sends: 16 bytes.
struct request {
  std::uint32_t magic;     ///< request_magic
  std::uint16_t version;   ///< version
  std::uint16_t reserved;  ///< zero
  std::uint64_t id;        ///< the doorbell asked for
};

/// The status word of a reply.
enum class status : std::uint16_t {
  ok = 0,           ///< one eventfd follows as SCM_RIGHTS
  unknown_id = 1,   ///< no doorbell with that id
  refused = 2,      ///< the client's credentials are not allowed
  bad_request = 3,  ///< the request was not 16 bytes, or had a bad magic, version or reserved word
};

/// What the server answers: 16 bytes (plus the fd when status is ok).
struct reply {
  std::uint32_t magic;    ///< reply_magic
  std::uint16_t version;  ///< version
  std::uint16_t status;   ///< a doorbell_wire::status
  std::uint64_t id;       ///< the request's id (0 for bad_request)
};

static_assert(sizeof(request) == 16 && std::is_trivially_copyable_v<request>);
static_assert(sizeof(reply) == 16 && std::is_trivially_copyable_v<reply>);

}  // namespace doorbell_wire

/// The abstract socket name of `owner`'s doorbell server, without the
/// leading NUL byte: "shmbus/<pid>/<start_time>" (tools print it "@...").
SHMBUS_API std::string doorbell_socket_name(const process_identity& owner);

struct doorbell_server_state;

/// Serves this process's doorbells to other processes.
///
/// One per process: the socket is named after the process's identity, so a
/// second one fails to bind (EADDRINUSE). Every bus and channel of the
/// process registers into the same server; it is served by one coroutine
/// (serve()) on one scheduler, with no thread of its own.
///
/// Thread-safety: add(), remove(), contains() and size() may be called from
/// any thread, concurrently with serve(). serve() runs on one scheduler at a
/// time. Not copyable, not movable.
class SHMBUS_API doorbell_server {
 public:
  struct options {
    /// Groups whose members may fetch doorbells besides processes with our
    /// effective uid: the client's effective gid or any of its
    /// supplementary groups (SO_PEERGROUPS) must be listed.
    std::vector<std::uint32_t> allowed_gids;
    /// How long an accepted client may take to send its request.
    std::chrono::milliseconds request_timeout{1000};
    /// Accepted clients whose request is awaited at once; beyond that, new
    /// clients wait in the listen backlog until one is answered or dropped.
    std::size_t max_pending = 32;
    /// listen(2) backlog.
    int backlog = 64;
  };

  doorbell_server() : doorbell_server(options{}) {}
  /// Binds and listens on this process's name (non-blocking, close-on-exec).
  /// Clients that connect before serve() runs wait in the backlog. Throws
  /// shmbus::error: std::errc::address_in_use when another server of this
  /// process (or a squatter) holds the name; errc::bad_size for a
  /// request_timeout <= 0 or a max_pending of 0.
  explicit doorbell_server(options opts);
  /// Withdraws every doorbell. A serve() still running keeps the socket
  /// open (answering unknown id) until its stop token is triggered.
  ~doorbell_server();
  doorbell_server(const doorbell_server&) = delete;
  doorbell_server& operator=(const doorbell_server&) = delete;

  /// The process this server speaks for.
  const process_identity& identity() const noexcept { return m_identity; }
  /// The socket name, as doorbell_socket_name(identity()).
  const std::string& name() const noexcept { return m_name; }

  /// Serves `bell` under `id`. The server keeps its own duplicate of the
  /// descriptor, so `bell` may be destroyed. Throws shmbus::error
  /// (std::errc::file_exists) if `id` is taken. Thread-safe.
  void add(std::uint64_t id, const event_fd& bell);
  /// Stops serving `id`; false if it was not served. Thread-safe, noexcept.
  bool remove(std::uint64_t id) noexcept;
  /// Thread-safe.
  bool contains(std::uint64_t id) const noexcept;
  /// Number of doorbells served. Thread-safe.
  std::size_t size() const noexcept;

  /// Accepts and answers clients until the awaiting task's stop token is
  /// triggered; then returns normally (no errc::cancelled). Give it its own
  /// token with `server.serve(s).with_stop_token(t)`, or spawn it (it then
  /// stops with the scheduler). Never blocks the loop: a client that is
  /// slow to send its request is waited for by a task of its own, bounded
  /// by options::request_timeout (then dropped) and max_pending. Throws shmbus::error if
  /// already being served, or when called in a forked child (the name
  /// belongs to the parent). The returned task keeps what it needs alive
  /// even if this server is destroyed first. May suspend.
  [[nodiscard]] task<void> serve(scheduler& s);

  /// Counters since construction, for tests and `shmbus stat`.
  struct statistics {
    std::uint64_t accepted = 0;     ///< connections accepted
    std::uint64_t served = 0;       ///< eventfds sent
    std::uint64_t unknown_id = 0;   ///< answered unknown_id
    std::uint64_t refused = 0;      ///< answered refused
    std::uint64_t bad_request = 0;  ///< answered bad_request
    std::uint64_t dropped = 0;      ///< closed without an answer (silent too long, or gone)
  };
  /// A snapshot of the counters (each read atomically). Thread-safe.
  statistics stats() const noexcept;

 private:
  process_identity m_identity;
  std::string m_name;
  std::shared_ptr<doorbell_server_state> m_state;
};

/// Fetches doorbell `id` from `owner`'s doorbell server. Blocking: it runs
/// once per subscriber; call it off the hot path, and never on the thread
/// that runs the owner's own serve() (it would wait for itself).
///
/// Steps: connect to "@" + doorbell_socket_name(owner); SO_PEERCRED must
/// show owner.pid and that pid must still have owner.start_time; send the
/// request; receive the reply with MSG_CMSG_CLOEXEC, close any extra
/// descriptor, check that the one sent is an eventfd. Every step shares one
/// deadline, `timeout` from now.
///
/// Throws shmbus::error naming the socket and the pid, with code:
/// doorbell_errc::owner_dead, not_serving, wrong_server, refused,
/// unknown_id, bad_request, bad_reply; errc::timed_out when the deadline
/// passed; a system errno for anything else (EMFILE, ...).
SHMBUS_API event_fd fetch_doorbell(const process_identity& owner, std::uint64_t id,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(1));

/// fetch_doorbell in two halves, so that one thread can have many fetches
/// under way and one owner that does not answer (stopped, starved of CPU,
/// its listen backlog full) holds up only its own: nothing here waits.
/// The constructor connects, checks the server and sends the request as
/// far as it can; try_receive goes on from there and takes the reply once
/// native_handle() polls readable. Move-only; errors as fetch_doorbell.
class SHMBUS_API doorbell_request {
 public:
  /// How often a caller tries again while the owner's backlog is full
  /// (there is no descriptor to poll for that), in milliseconds.
  static constexpr int backlog_retry = 10;

  doorbell_request(const process_identity& owner, std::uint64_t id,
                   std::chrono::milliseconds timeout = std::chrono::seconds(1));
  doorbell_request(doorbell_request&&) noexcept;
  doorbell_request& operator=(doorbell_request&&) noexcept;
  ~doorbell_request();

  /// The socket to poll for POLLIN once the request is sent; -1 before
  /// (the owner's backlog was full): call try_receive again after
  /// backlog_retry ms.
  int native_handle() const noexcept;
  /// When try_receive starts throwing errc::timed_out.
  std::chrono::steady_clock::time_point deadline() const noexcept;
  /// Never blocks: the doorbell if the reply has come, std::nullopt while
  /// it has not and the deadline has not passed. Throws as fetch_doorbell.
  std::optional<event_fd> try_receive();
  /// Waits (poll) for the reply until the deadline.
  event_fd receive();

  class steps;  // lib/notify/doorbell_client.cpp

 private:
  std::unique_ptr<steps> m_steps;
};

}  // namespace detail
}  // namespace shmbus

template <>
struct std::is_error_code_enum<shmbus::detail::doorbell_errc> : std::true_type {};
