#include <shmbus/detail/doorbell.hpp>

#include <shmbus/error.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/timeout.hpp>

#include "core/syscall.hpp"
#include "notify/doorbell_socket.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <unordered_map>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59  // Linux 4.13
#endif

namespace shmbus::detail {

/// Everything serve() and its per-client tasks touch. Shared (not owned by
/// doorbell_server) so that a serve loop or a client task that outlives the
/// server object never refers to freed memory.
struct doorbell_server_state {
  process_identity m_identity;
  std::string m_printable_name;
  unique_fd m_listener;
  std::uint32_t m_uid = 0;
  std::vector<std::uint32_t> m_allowed_gids;  // sorted
  std::chrono::milliseconds m_request_timeout{};
  std::size_t m_max_pending = 0;

  // The table: id -> our own duplicate of the eventfd. The mutex is also
  // held while a descriptor is being sent, so remove() cannot close it
  // under sendmsg (which would send whatever reused the number).
  mutable std::mutex m_mutex;
  std::unordered_map<std::uint64_t, unique_fd> m_table;

  std::atomic<bool> m_serving{false};
  std::atomic<std::size_t> m_pending{0};  // clients waited for by answer_later

  // Statistics; relaxed: counters, not synchronisation.
  std::atomic<std::uint64_t> m_accepted{0}, m_served{0}, m_unknown_id{0}, m_refused{0}, m_bad_request{0},
      m_dropped{0};

  static void bump(std::atomic<std::uint64_t>& c) noexcept { c.fetch_add(1, std::memory_order_relaxed); }
};

namespace {

using doorbell_wire::status;
using state_ptr = std::shared_ptr<doorbell_server_state>;

/// Sends one reply (and `fd` when >= 0) without ever blocking. A reply is
/// 16 bytes on a fresh connection whose send buffer is empty, so it fits;
/// if the client is already gone (EPIPE, ECONNRESET) there is nobody to tell.
bool send_reply(int conn, status st, std::uint64_t id, int fd) noexcept {
  const doorbell_wire::reply reply{doorbell_wire::reply_magic, doorbell_wire::version,
                                   static_cast<std::uint16_t>(st), id};
  const ssize_t r = send_with_fds(conn, std::as_bytes(std::span(&reply, 1)),
                                  fd >= 0 ? std::span<const int>(&fd, 1) : std::span<const int>(),
                                  MSG_DONTWAIT | MSG_NOSIGNAL);
  return r == static_cast<ssize_t>(sizeof reply);
}

/* Who may fetch a doorbell: the kernel's record of the client at connect()
 * (SO_PEERCRED: its effective uid and gid then) must show our effective
 * uid, or a group listed in options::allowed_gids, as its effective gid or
 * one of its supplementary groups (SO_PEERGROUPS). Nothing the client sends
 * is believed. */
bool authorized(const doorbell_server_state& st, int conn) noexcept {
  ucred cred{};
  socklen_t length = sizeof cred;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0 || length != sizeof cred) return false;
  if (cred.uid == st.m_uid) return true;
  if (st.m_allowed_gids.empty()) return false;
  const auto allowed = [&](gid_t g) {
    return std::binary_search(st.m_allowed_gids.begin(), st.m_allowed_gids.end(), static_cast<std::uint32_t>(g));
  };
  if (allowed(cred.gid)) return true;
  // Supplementary groups. A fixed buffer bounds the work: a client in more
  // than 256 groups gets ERANGE here and is refused unless its uid or
  // effective gid qualifies.
  gid_t groups[256];
  socklen_t groups_length = sizeof groups;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERGROUPS, groups, &groups_length) != 0) return false;
  const std::size_t count = std::min<std::size_t>(groups_length / sizeof(gid_t), std::size(groups));
  return std::any_of(groups, groups + count, allowed);
}

enum class outcome : std::uint8_t { answered, again };

/* One request, read without blocking, and its answer. SOCK_SEQPACKET keeps
 * message boundaries: a well-formed request is exactly one 16-byte message,
 * so there is no partial state to keep between reads. Anything else
 * (shorter, longer -- MSG_TRUNC --, wrong magic, version or reserved word)
 * gets bad_request. No control buffer is given to recvmsg, so descriptors a
 * client sends along are discarded by the kernel, never installed here.
 * Then the client's credentials, then the table. */
outcome try_answer(doorbell_server_state& st, int conn) noexcept {
  alignas(8) unsigned char buffer[64];
  iovec iov{buffer, sizeof buffer};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  const ssize_t n = retry_on_eintr([&] { return ::recvmsg(conn, &msg, MSG_DONTWAIT); });
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return outcome::again;
  if (n <= 0) {  // gone (0: end of file or an empty message), or an error
    doorbell_server_state::bump(st.m_dropped);
    return outcome::answered;
  }
  doorbell_wire::request request{};
  if (n != static_cast<ssize_t>(sizeof request) || (msg.msg_flags & MSG_TRUNC) != 0) {
    doorbell_server_state::bump(st.m_bad_request);
    send_reply(conn, status::bad_request, 0, -1);
    return outcome::answered;
  }
  std::memcpy(&request, buffer, sizeof request);
  if (request.magic != doorbell_wire::request_magic || request.version != doorbell_wire::version ||
      request.reserved != 0) {
    doorbell_server_state::bump(st.m_bad_request);
    send_reply(conn, status::bad_request, 0, -1);
    return outcome::answered;
  }
  // Credentials are checked only now that the request is read: closing a
  // socket with unread data resets the connection, and the client would
  // see ECONNRESET instead of our answer.
  if (!authorized(st, conn)) {
    doorbell_server_state::bump(st.m_refused);
    send_reply(conn, status::refused, request.id, -1);
    return outcome::answered;
  }
  {
    std::lock_guard lock(st.m_mutex);
    if (auto it = st.m_table.find(request.id); it != st.m_table.end()) {
      if (send_reply(conn, status::ok, request.id, it->second.get())) doorbell_server_state::bump(st.m_served);
      else doorbell_server_state::bump(st.m_dropped);
      return outcome::answered;
    }
  }
  doorbell_server_state::bump(st.m_unknown_id);
  send_reply(conn, status::unknown_id, request.id, -1);
  return outcome::answered;
}

task<unsigned> readable(scheduler& s, int fd) { co_return co_await async_poll(s, fd, POLLIN); }

/// A client whose request had not arrived when it was accepted: wait for it
/// (bounded by request_timeout and by serve()'s stop token), answer, close.
task<void> answer_later(scheduler& s, state_ptr st, unique_fd conn) {
  struct pending_guard {
    doorbell_server_state& m_state;
    ~pending_guard() { m_state.m_pending.fetch_sub(1, std::memory_order_relaxed); }
  } guard{*st};
  bool ready = false;
  try {
    co_await with_timeout(s, st->m_request_timeout, readable(s, conn.get()));
    ready = true;
  } catch (const std::exception&) {
    // timed out, stopped, or out of memory: drop the client
  }
  // A readiness that still reads EAGAIN would be a spurious wake-up; drop
  // rather than loop, the client retries.
  if (!ready || try_answer(*st, conn.get()) == outcome::again) doorbell_server_state::bump(st->m_dropped);
}

/// A freshly accepted client: answer at once if its request is already
/// there (the common case: no allocation, no task), else hand it to
/// answer_later.
void on_accepted(scheduler& s, const state_ptr& st, const std::stop_token& token, unique_fd conn) {
  doorbell_server_state::bump(st->m_accepted);
  if (try_answer(*st, conn.get()) == outcome::answered) return;
  // serve_loop accepts only while pending < max_pending.
  st->m_pending.fetch_add(1, std::memory_order_relaxed);
  try {
    s.spawn(answer_later(s, st, std::move(conn)).with_stop_token(token));
  } catch (const std::exception&) {
    // The task never started, so its guard never ran.
    st->m_pending.fetch_sub(1, std::memory_order_relaxed);
    doorbell_server_state::bump(st->m_dropped);
  }
}

/* The serve loop.
 *
 *   ┌─► while max_pending clients are being waited for: back off 1 ms
 *   │   await POLLIN on the listening socket (io_uring poll; ends on stop)
 *   │   accept4 (non-blocking, close-on-exec) until EAGAIN, at most 64 a
 *   │   turn, and only while fewer than max_pending clients are waited for
 *   │     for each: on_accepted (answer now, or hand to answer_later)
 *   └── out of descriptors (EMFILE...): back off 50 ms
 *
 * Clients not accepted yet wait in the kernel's backlog (and, if it is
 * full, in connect(2) up to their own timeout): a flood of silent clients
 * delays the others by at most request_timeout, and costs us no memory.
 */
task<void> serve_loop(scheduler& s, state_ptr st) {
  if (::getpid() != st->m_identity.pid)
    throw error(errc::not_supported, "serve", st->m_printable_name,
                fmt::format("the server belongs to pid {}; a forked child must create its own",
                            st->m_identity.pid));
  if (st->m_serving.exchange(true, std::memory_order_acq_rel))
    throw error(errc::not_supported, "serve", st->m_printable_name, "already being served");
  struct serving_guard {
    doorbell_server_state& m_state;
    ~serving_guard() { m_state.m_serving.store(false, std::memory_order_release); }
  } guard{*st};

  const std::stop_token token = co_await get_stop_token();
  const int listener = st->m_listener.get();
  const auto at_limit = [&st] { return st->m_pending.load(std::memory_order_relaxed) >= st->m_max_pending; };
  for (;;) {
    bool stopped = false;
    unsigned events = 0;
    try {
      while (at_limit()) co_await s.sleep_for(std::chrono::milliseconds(1));
      events = co_await async_poll(s, listener, POLLIN);
    } catch (const error& e) {
      if (e.code() != errc::cancelled) throw;
      stopped = true;
    }
    if (stopped) co_return;
    if ((events & (POLLERR | POLLNVAL)) != 0)
      throw error(std::make_error_code(std::errc::io_error), "poll", st->m_printable_name,
                  fmt::format("listening socket reported events {:#x}", events));

    bool starved = false;
    for (int i = 0; i < 64 && !at_limit(); ++i) {
      unique_fd conn(
          retry_on_eintr([&] { return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); }));
      if (conn) {
        on_accepted(s, st, token, std::move(conn));
        continue;
      }
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == ECONNABORTED || err == EPROTO) continue;  // that client gave up
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        starved = true;
        break;
      }
      throw_errno(err, "accept", st->m_printable_name);
    }
    if (starved) {
      try {
        co_await s.sleep_for(std::chrono::milliseconds(50));
      } catch (const error& e) {
        if (e.code() != errc::cancelled) throw;
        stopped = true;
      }
      if (stopped) co_return;
    }
  }
}

}  // namespace

doorbell_server::doorbell_server(options opts)
    : m_identity(process_identity::self()),
      m_name(doorbell_socket_name(m_identity)),
      m_state(std::make_shared<doorbell_server_state>()) {
  auto& st = *m_state;
  st.m_identity = m_identity;
  st.m_printable_name = printable(m_name);
  st.m_uid = ::geteuid();
  st.m_allowed_gids = std::move(opts.allowed_gids);
  std::sort(st.m_allowed_gids.begin(), st.m_allowed_gids.end());
  st.m_request_timeout = opts.request_timeout;
  st.m_max_pending = opts.max_pending;
  if (opts.request_timeout <= std::chrono::milliseconds::zero())
    throw error(errc::bad_size, "doorbell_server", st.m_printable_name, "request_timeout must be positive");
  if (opts.max_pending == 0)
    throw error(errc::bad_size, "doorbell_server", st.m_printable_name, "max_pending must be at least 1");

  st.m_listener.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!st.m_listener) throw_errno("socket", st.m_printable_name);
  const abstract_address address(m_name);
  if (::bind(st.m_listener.get(), address.get(), address.m_length) != 0) {
    const int err = errno;
    if (err == EADDRINUSE)
      throw_errno(err, "bind", st.m_printable_name,
                  "another doorbell server of this process, or a squatter, holds the name");
    throw_errno(err, "bind", st.m_printable_name);
  }
  if (::listen(st.m_listener.get(), opts.backlog) != 0) throw_errno("listen", st.m_printable_name);
}

doorbell_server::~doorbell_server() {
  // The table's descriptors are closed now; a serve loop still running
  // holds the state (and the socket) and answers unknown_id until stopped.
  std::unordered_map<std::uint64_t, unique_fd> table;
  {
    std::lock_guard lock(m_state->m_mutex);
    table.swap(m_state->m_table);
  }
}

void doorbell_server::add(std::uint64_t id, const event_fd& bell) {
  unique_fd copy = bell.duplicate(/*cloexec=*/true);
  std::lock_guard lock(m_state->m_mutex);
  const auto [it, inserted] = m_state->m_table.try_emplace(id, std::move(copy));
  if (!inserted)
    throw error(std::make_error_code(std::errc::file_exists), "add doorbell", m_state->m_printable_name,
                fmt::format("id {} is already served", id));
}

bool doorbell_server::remove(std::uint64_t id) noexcept {
  unique_fd closed_outside_the_lock;
  std::lock_guard lock(m_state->m_mutex);
  auto it = m_state->m_table.find(id);
  if (it == m_state->m_table.end()) return false;
  closed_outside_the_lock = std::move(it->second);
  m_state->m_table.erase(it);
  return true;
}

bool doorbell_server::contains(std::uint64_t id) const noexcept {
  std::lock_guard lock(m_state->m_mutex);
  return m_state->m_table.find(id) != m_state->m_table.end();
}

std::size_t doorbell_server::size() const noexcept {
  std::lock_guard lock(m_state->m_mutex);
  return m_state->m_table.size();
}

task<void> doorbell_server::serve(scheduler& s) { return serve_loop(s, m_state); }

doorbell_server::statistics doorbell_server::stats() const noexcept {
  const auto& st = *m_state;
  constexpr auto relaxed = std::memory_order_relaxed;
  return {st.m_accepted.load(relaxed), st.m_served.load(relaxed),      st.m_unknown_id.load(relaxed),
          st.m_refused.load(relaxed),  st.m_bad_request.load(relaxed), st.m_dropped.load(relaxed)};
}

}  // namespace shmbus::detail
