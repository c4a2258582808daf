#include <shmbus/detail/doorbell.hpp>

#include <shmbus/error.hpp>

#include "core/syscall.hpp"
#include "notify/doorbell_socket.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

namespace shmbus::detail {
namespace {

using clock = std::chrono::steady_clock;

/// At most this many descriptors are accepted in one reply (one is valid);
/// the kernel closes any beyond what the control buffer holds.
constexpr std::size_t max_received_fds = 8;

}  // namespace

/// One fetch: what every error message names, the shared deadline, and
/// the socket once connected.
class doorbell_request::steps {
 public:
  steps(const process_identity& owner, std::uint64_t id, std::chrono::milliseconds timeout)
      : m_owner(owner),
        m_id(id),
        m_timeout(timeout),
        m_deadline(clock::now() + timeout),
        m_name(doorbell_socket_name(owner)),
        m_shown(printable(m_name)) {}

  [[noreturn]] void fail(doorbell_errc code, std::string_view why) const {
    throw error(make_error_code(code), "fetch_doorbell", m_shown,
                fmt::format("doorbell {} of pid {}: {}", m_id, m_owner.pid, why));
  }
  [[noreturn]] void fail_errno(int err, std::string_view operation) const {
    throw_errno(err, operation, m_shown, fmt::format("doorbell {} of pid {}", m_id, m_owner.pid));
  }
  [[noreturn]] void fail_timeout(std::string_view waiting_for) const {
    throw error(errc::timed_out, "fetch_doorbell", m_shown,
                fmt::format("doorbell {} of pid {}: no {} within {} ms", m_id, m_owner.pid, waiting_for,
                            m_timeout.count()));
  }

  /// Makes the non-blocking socket and takes the exchange as far as it goes.
  void start();
  /// Takes the exchange as far as it can go without waiting: connects,
  /// checks the server, sends the request. True once the request is sent;
  /// false while the owner's listen backlog (or its socket's queue) is
  /// full. Throws on a fault, and errc::timed_out past the deadline.
  bool advance();
  /// The reply if it has come (never blocks); throws once the deadline
  /// has passed without one.
  std::optional<event_fd> try_receive();

  /// The socket to poll for the reply; -1 until the request is sent.
  int reply_socket() const noexcept { return m_stage == stage::sent ? m_socket.get() : -1; }
  clock::time_point deadline() const noexcept { return m_deadline; }

 private:
  enum class stage : std::uint8_t { connecting, sending, sent };

  bool try_connect() const;
  void check_server() const;
  bool try_send_request() const;
  /// false, or errc::timed_out once the deadline has passed.
  bool not_yet(std::string_view waiting_for) const {
    if (clock::now() >= m_deadline) fail_timeout(waiting_for);
    return false;
  }

  process_identity m_owner;
  std::uint64_t m_id;
  std::chrono::milliseconds m_timeout;
  clock::time_point m_deadline;
  std::string m_name;
  std::string m_shown;
  unique_fd m_socket;
  stage m_stage = stage::connecting;
};

void doorbell_request::steps::start() {
  if (m_owner.pid <= 0) fail(doorbell_errc::owner_dead, "not a process id");
  m_socket.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!m_socket) fail_errno(errno, "socket");
  (void)advance();
}

bool doorbell_request::steps::advance() {
  if (m_stage == stage::connecting) {
    if (!try_connect()) return not_yet("connection (the server's backlog is full)");
    check_server();
    m_stage = stage::sending;
  }
  if (m_stage == stage::sending) {
    if (!try_send_request()) return not_yet("room to send the request");
    m_stage = stage::sent;
  }
  return true;
}

/* Connecting, without waiting. No listener on the name (ECONNREFUSED)
 * means the owner is dead or does not serve doorbells; is_alive tells
 * which. A full backlog (EAGAIN: the owner has not accepted its earlier
 * clients) leaves the socket unconnected, to be tried again later. */
bool doorbell_request::steps::try_connect() const {
  const abstract_address address(m_name);
  for (;;) {
    if (::connect(m_socket.get(), address.get(), address.m_length) == 0) return true;
    const int err = errno;
    switch (err) {
      case EINTR: continue;       // still unconnected: try again
      case EISCONN: return true;  // an interrupted attempt completed meanwhile
      case ECONNREFUSED:
      case ENOENT:
        if (!is_alive(m_owner)) fail(doorbell_errc::owner_dead, "the process is gone");
        fail(doorbell_errc::not_serving, "the process is alive but nobody listens on its socket");
      case EAGAIN:
      case EINPROGRESS:
      case EALREADY: return false;
      default: fail_errno(err, "connect");
    }
  }
}

/* Authenticating the server. Anyone may bind any abstract name, so the
 * name proves nothing. SO_PEERCRED gives the pid that called listen() on
 * the socket we reached: it must be the owner's pid, and that pid must
 * still belong to a process started at the owner's start time (otherwise
 * the owner died and a process that reused its pid holds the name). */
void doorbell_request::steps::check_server() const {
  const int fd = m_socket.get();
  ucred cred{};
  socklen_t length = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) fail_errno(errno, "getsockopt(SO_PEERCRED)");
  if (length != sizeof cred) fail(doorbell_errc::bad_reply, "SO_PEERCRED returned a short record");
  if (cred.pid != m_owner.pid)
    fail(doorbell_errc::wrong_server,
         fmt::format("the socket is held by pid {} (uid {}), not by the owner", cred.pid, cred.uid));
  if (!is_alive(m_owner))
    fail(doorbell_errc::owner_dead,
         fmt::format("pid {} no longer has start time {}: the owner is gone and its pid was reused", m_owner.pid,
                     m_owner.start_time));
}

bool doorbell_request::steps::try_send_request() const {
  const doorbell_wire::request request{doorbell_wire::request_magic, doorbell_wire::version, 0, m_id};
  for (;;) {
    const ssize_t n = ::send(m_socket.get(), &request, sizeof request, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(sizeof request)) return true;
    if (n >= 0) fail(doorbell_errc::bad_reply, fmt::format("sent {} of {} bytes", n, sizeof request));
    const int err = errno;
    switch (err) {
      case EINTR: continue;
      case EAGAIN: return false;
      case EPIPE:
      case ECONNRESET: fail(doorbell_errc::bad_reply, "the server closed the connection before the request");
      default: fail_errno(err, "send");
    }
  }
}

/* The reply: exactly one 16-byte message. With status ok it carries exactly
 * one descriptor in one SOL_SOCKET/SCM_RIGHTS control message; anything
 * else is a bad reply. Every descriptor received is owned at once (so
 * extras are closed on every path), and received close-on-exec. */
std::optional<event_fd> doorbell_request::steps::try_receive() {
  if (!advance()) return std::nullopt;
  const int fd = m_socket.get();
  alignas(8) unsigned char buffer[64];
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * max_received_fds)];
  iovec iov{};
  msghdr msg{};
  ssize_t n = -1;
  for (;;) {
    iov = {buffer, sizeof buffer};
    msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n >= 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      if (clock::now() >= m_deadline) fail_timeout("reply");
      return std::nullopt;
    }
    if (err == ECONNRESET) fail(doorbell_errc::bad_reply, "the server reset the connection");
    fail_errno(err, "recvmsg");
  }

  // Take every descriptor first, whatever else is wrong.
  std::vector<unique_fd> fds;
  bool odd_control = false;
  if (msg.msg_controllen > 0) {
    const unsigned char* const control_end = control + msg.msg_controllen;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_len < CMSG_LEN(0)) {
        odd_control = true;
        break;
      }
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
        odd_control = true;
        continue;
      }
      const unsigned char* data = CMSG_DATA(c);
      std::size_t bytes = c->cmsg_len - CMSG_LEN(0);
      if (data + bytes > control_end) {
        odd_control = true;
        bytes = static_cast<std::size_t>(control_end - data);
      }
      if (bytes % sizeof(int) != 0) odd_control = true;
      for (std::size_t i = 0; i + sizeof(int) <= bytes; i += sizeof(int)) {
        int received = -1;
        std::memcpy(&received, data + i, sizeof received);
        if (received >= 0) fds.emplace_back(received);
      }
    }
  }

  if (n == 0) fail(doorbell_errc::bad_reply, "the server closed the connection without replying");
  if ((msg.msg_flags & MSG_CTRUNC) != 0)
    fail(doorbell_errc::bad_reply, fmt::format("more than {} descriptors sent; control data cut", max_received_fds));
  doorbell_wire::reply reply{};
  if ((msg.msg_flags & MSG_TRUNC) != 0 || n != static_cast<ssize_t>(sizeof reply))
    fail(doorbell_errc::bad_reply,
         fmt::format("reply of {}{} bytes, expected {}", (msg.msg_flags & MSG_TRUNC) != 0 ? "over " : "", n,
                     sizeof reply));
  std::memcpy(&reply, buffer, sizeof reply);
  if (reply.magic != doorbell_wire::reply_magic)
    fail(doorbell_errc::bad_reply, fmt::format("bad magic {:#010x}", reply.magic));
  if (reply.version != doorbell_wire::version)
    fail(doorbell_errc::bad_reply,
         fmt::format("protocol version {}, expected {}", reply.version, doorbell_wire::version));

  switch (static_cast<doorbell_wire::status>(reply.status)) {
    case doorbell_wire::status::ok: break;
    case doorbell_wire::status::unknown_id: fail(doorbell_errc::unknown_id, "the owner serves no such doorbell");
    case doorbell_wire::status::refused:
      fail(doorbell_errc::refused,
           fmt::format("the owner refused our credentials (uid {}, gid {})", ::geteuid(), ::getegid()));
    case doorbell_wire::status::bad_request:
      fail(doorbell_errc::bad_request, "the owner did not understand our request");
    default: fail(doorbell_errc::bad_reply, fmt::format("unknown status {}", reply.status));
  }
  if (reply.id != m_id) fail(doorbell_errc::bad_reply, fmt::format("reply for doorbell {}", reply.id));
  if (odd_control || fds.size() != 1)
    fail(doorbell_errc::bad_reply,
         fmt::format("expected one descriptor in one SCM_RIGHTS message, got {}{}", fds.size(),
                     odd_control ? " and other control data" : ""));
  try {
    return event_fd::adopt(std::move(fds.front()));
  } catch (const error& e) {
    if (e.code() != errc::not_supported) throw;
    fail(doorbell_errc::bad_reply, "the descriptor received is not an eventfd");
  }
}

// ---- doorbell_request -------------------------------------------------------

doorbell_request::doorbell_request(const process_identity& owner, std::uint64_t id, std::chrono::milliseconds timeout)
    : m_steps(std::make_unique<steps>(owner, id, timeout)) {
  m_steps->start();
}

doorbell_request::doorbell_request(doorbell_request&&) noexcept = default;
doorbell_request& doorbell_request::operator=(doorbell_request&&) noexcept = default;
doorbell_request::~doorbell_request() = default;

int doorbell_request::native_handle() const noexcept { return m_steps->reply_socket(); }

std::chrono::steady_clock::time_point doorbell_request::deadline() const noexcept { return m_steps->deadline(); }

std::optional<event_fd> doorbell_request::try_receive() { return m_steps->try_receive(); }

event_fd doorbell_request::receive() {
  for (;;) {
    if (std::optional<event_fd> bell = m_steps->try_receive()) return std::move(*bell);
    auto wait = std::chrono::ceil<std::chrono::milliseconds>(m_steps->deadline() - clock::now());
    const int fd = m_steps->reply_socket();
    if (fd < 0) wait = std::min(wait, std::chrono::milliseconds(backlog_retry));  // nothing to poll: try again then
    pollfd pfd{fd, POLLIN, 0};                                                     // fd < 0: poll only waits
    if (::poll(&pfd, 1, static_cast<int>(std::max<std::chrono::milliseconds::rep>(wait.count(), 0))) < 0 &&
        errno != EINTR)
      m_steps->fail_errno(errno, "poll");
  }
}

event_fd fetch_doorbell(const process_identity& owner, std::uint64_t id, std::chrono::milliseconds timeout) {
  return doorbell_request(owner, id, timeout).receive();
}

}  // namespace shmbus::detail
