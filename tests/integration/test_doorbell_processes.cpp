// Doorbell exchange between real processes: a served eventfd fetched over
// the abstract Unix socket, signalled, and the owner's task woken; the
// credential checks, the squatter checks, and clients and servers that
// misbehave.
//
// Other processes are tests/support/doorbell_helper (fork+exec) or forked
// children. Synchronisation is by pipes, pidfds and waitpid; timeouts only
// bound how long a broken build can hang.
#include <shmbus/detail/doorbell.hpp>
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/timeout.hpp>
#include <shmbus/when_all.hpp>

#include <catch2/catch.hpp>

#include "child_process.hpp"
#include "notify/doorbell_socket.hpp"
#include "notify/process_doorbells.hpp"
#include "notify/process_instance.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using shmbus::task;
using shmbus::unique_fd;
using shmbus::detail::doorbell_errc;
using shmbus::detail::doorbell_server;
using shmbus::detail::fetch_doorbell;
using shmbus::detail::process_identity;
namespace wire = shmbus::detail::doorbell_wire;
using namespace std::chrono_literals;

namespace {

using shmbus::test::pipe_pair;

constexpr auto guard_timeout = 10s;  // only a broken build ever waits this long

// ---- small system helpers ----------------------------------------------

/// Reads exactly `size` bytes, failing the test after guard_timeout; false
/// at end of file.
bool read_exact(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  const auto deadline = std::chrono::steady_clock::now() + guard_timeout;
  while (size > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(std::max<long>(left.count(), 0)));
    REQUIRE(ready >= 0);
    if (ready == 0) FAIL("no data within the guard timeout");
    const ssize_t n = ::read(fd, p, size);
    REQUIRE(n >= 0);
    if (n == 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

int reap(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return exit_code(status);
}

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    ++n;
  return n;
}

sockaddr_un abstract_address(const std::string& name, socklen_t& length) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  REQUIRE(name.size() + 1 < sizeof address.sun_path);
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return address;
}

/// A raw client socket connected to `name` (SOCK_SEQPACKET, blocking, with
/// a receive timeout so that a broken server fails the test).
unique_fd connect_raw(const std::string& name) {
  unique_fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  timeval tv{10, 0};
  REQUIRE(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  socklen_t length = 0;
  const sockaddr_un address = abstract_address(name, length);
  REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
  return fd;
}

/// A raw listening socket bound to `name`, never accepting.
unique_fd listen_raw(const std::string& name, int backlog = 8) {
  unique_fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  socklen_t length = 0;
  const sockaddr_un address = abstract_address(name, length);
  REQUIRE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
  REQUIRE(::listen(fd.get(), backlog) == 0);
  return fd;
}

/// A received reply and the descriptors that came with it.
struct raw_reply {
  ssize_t length = -1;
  unsigned char bytes[64] = {};
  std::vector<unique_fd> fds;
};

raw_reply receive_raw(int fd) {
  raw_reply r;
  iovec iov{r.bytes, sizeof r.bytes};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  // A socket call with a timeout returns EINTR on any interruption, even
  // the task-work notification of an io_uring being torn down.
  do r.length = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (r.length < 0 && errno == EINTR);
  INFO("recvmsg: " << (r.length < 0 ? std::strerror(errno) : "ok"));
  CHECK(r.length >= 0);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (std::size_t i = 0; i + sizeof(int) <= c->cmsg_len - CMSG_LEN(0); i += sizeof(int)) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i, sizeof received);
      r.fds.emplace_back(received);
    }
  }
  return r;
}

/// Sends `bytes` as one message, with `fd_to_pass` as SCM_RIGHTS if >= 0.
void send_raw(int fd, const void* bytes, std::size_t size, int fd_to_pass = -1) {
  const ssize_t sent = shmbus::detail::send_with_fds(
      fd, std::span(static_cast<const std::byte*>(bytes), size),
      fd_to_pass >= 0 ? std::span<const int>(&fd_to_pass, 1) : std::span<const int>(), MSG_NOSIGNAL);
  REQUIRE(sent == static_cast<ssize_t>(size));
}

/// The 16 request bytes, spelled out as docs/NOTIFY.md describes them.
std::array<unsigned char, 16> request_bytes(std::uint64_t id, std::uint16_t version = 1) {
  std::array<unsigned char, 16> b{'S', 'B', 'R', 'Q', static_cast<unsigned char>(version & 0xff),
                                  static_cast<unsigned char>(version >> 8), 0, 0};
  for (int i = 0; i < 8; ++i) b[8 + static_cast<std::size_t>(i)] = static_cast<unsigned char>(id >> (8 * i));
  return b;
}

std::uint16_t reply_status(const raw_reply& r) {
  REQUIRE(r.length == 16);
  CHECK(std::memcmp(r.bytes, "SBRP", 4) == 0);
  CHECK(r.bytes[4] == 1);
  CHECK(r.bytes[5] == 0);
  return static_cast<std::uint16_t>(r.bytes[6] | (r.bytes[7] << 8));
}

/// The error a call throws: its code and message (empty code: no throw).
template <class F>
std::pair<std::error_code, std::string> error_of(F&& f) {
  try {
    f();
  } catch (const shmbus::error& e) {
    return {e.code(), e.what()};
  }
  return {};
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- the helper program, serving ---------------------------------------

const char* helper_path() {
  const char* helper = std::getenv("SHMBUS_DOORBELL_HELPER");
  REQUIRE(helper != nullptr);
  return helper;
}

/// doorbell_helper serve ID: a separate program serving one doorbell.
class served_helper {
 public:
  explicit served_helper(std::uint64_t id) {
    const char* helper = helper_path();
    const std::string id_arg = std::to_string(id);
    char* const argv[] = {const_cast<char*>(helper), const_cast<char*>("serve"), const_cast<char*>(id_arg.c_str()),
                          const_cast<char*>("10"),   const_cast<char*>("11"),    nullptr};
    posix_spawn_file_actions_t actions;
    REQUIRE(::posix_spawn_file_actions_init(&actions) == 0);
    ::posix_spawn_file_actions_adddup2(&actions, m_report.write_end.get(), 10);
    ::posix_spawn_file_actions_adddup2(&actions, m_control.read_end.get(), 11);
    const int spawned = ::posix_spawn(&m_pid, helper, &actions, nullptr, argv, environ);
    ::posix_spawn_file_actions_destroy(&actions);
    REQUIRE(spawned == 0);
    m_report.write_end.reset();
    m_control.read_end.reset();
    char ready = 0;
    REQUIRE(read_exact(m_report.read_end.get(), &ready, 1));
    REQUIRE(ready == 'R');
    const auto identity = process_identity::of(m_pid);
    REQUIRE(identity.has_value());
    m_identity = *identity;
  }
  served_helper(const served_helper&) = delete;
  served_helper& operator=(const served_helper&) = delete;
  ~served_helper() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      ::waitpid(m_pid, nullptr, 0);
    }
  }

  pid_t pid() const noexcept { return m_pid; }
  const process_identity& identity() const noexcept { return m_identity; }
  std::string name() const { return shmbus::detail::doorbell_socket_name(m_identity); }

  /// The count the helper's task read from its eventfd, on its next wake-up.
  std::uint64_t next_wakeup() {
    std::uint64_t value = 0;
    REQUIRE(read_exact(m_report.read_end.get(), &value, sizeof value));
    return value;
  }

  /// Stops the helper; returns its exit code and server statistics.
  std::pair<int, doorbell_server::statistics> stop() {
    m_control.write_end.reset();
    std::array<std::uint64_t, 6> c{};
    const bool got = read_exact(m_report.read_end.get(), c.data(), sizeof c);
    const int code = reap(std::exchange(m_pid, -1));
    REQUIRE(got);
    return {code, {c[0], c[1], c[2], c[3], c[4], c[5]}};
  }

  /// Kills the helper (SIGKILL) and reaps it.
  void kill() {
    REQUIRE(::kill(m_pid, SIGKILL) == 0);
    CHECK(reap(std::exchange(m_pid, -1)) == 128 + SIGKILL);
  }

 private:
  pipe_pair m_report;
  pipe_pair m_control;
  pid_t m_pid = -1;
  process_identity m_identity;
};

// ---- serving in this process --------------------------------------------

/// Waits for `pid` to exit (a pidfd polled by the scheduler), then reaps it.
task<int> child_exit(shmbus::scheduler& s, pid_t pid) {
  unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) throw std::runtime_error("pidfd_open failed");
  auto readable = [&]() -> task<void> { co_await shmbus::async_poll(s, pidfd.get()); };
  co_await shmbus::with_timeout(s, guard_timeout, readable());
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) throw std::runtime_error("waitpid failed");
  co_return exit_code(status);
}

/// Runs `server` on `s` while `body` runs; stops the server when the body
/// ends (also by an exception, which is rethrown).
template <class T>
T serve_while(shmbus::scheduler& s, doorbell_server& server, task<T> body) {
  std::stop_source stop;
  auto guarded = [&](task<T> inner) -> task<T> {
    struct stop_on_exit {
      std::stop_source& m_stop;
      ~stop_on_exit() { m_stop.request_stop(); }
    } guard{stop};
    co_return co_await std::move(inner);
  };
  auto both = shmbus::when_all(server.serve(s).with_stop_token(stop.get_token()), guarded(std::move(body)));
  if constexpr (std::is_void_v<T>) {
    s.run(std::move(both));
  } else {
    return std::get<1>(s.run(std::move(both)));
  }
}

/// Forks a child that runs `fn` (returning one result byte) and writes the
/// byte on a pipe; returns the child's pid and the pipe's read end.
template <class F>
std::pair<pid_t, unique_fd> fork_child(F&& fn) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    char result = 'E';
    try {
      result = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(::write(fds[1], &result, 1) == 1 ? 0 : 1);
  }
  ::close(fds[1]);
  return {child, unique_fd(fds[0])};
}

/// Reads the forked child's result byte without blocking the scheduler.
task<char> child_result(shmbus::scheduler& s, int fd) {
  char result = 0;
  auto read_one = [&]() -> task<std::size_t> {
    co_return co_await shmbus::async_read(s, fd, std::as_writable_bytes(std::span(&result, 1)));
  };
  const std::size_t n = co_await shmbus::with_timeout(s, guard_timeout, read_one());
  co_return n == 1 ? result : '?';
}

}  // namespace

// ==========================================================================

TEST_CASE("a fetched doorbell wakes the owner's task in another process", "[doorbell][process]") {
  served_helper helper(42);

  auto bell = fetch_doorbell(helper.identity(), 42);
  bell.signal(5);
  CHECK(helper.next_wakeup() == 5);

  // A second subscriber fetches the same doorbell: the same eventfd.
  auto again = fetch_doorbell(helper.identity(), 42);
  again.signal(6);
  CHECK(helper.next_wakeup() == 6);

  SECTION("an unknown id is its own error, and the server goes on") {
    const auto [code, message] = error_of([&] { (void)fetch_doorbell(helper.identity(), 43); });
    CHECK(code == doorbell_errc::unknown_id);
    CHECK(code == std::errc::no_such_file_or_directory);
    CHECK(contains(message, shmbus::detail::printable(helper.name())));
    CHECK(contains(message, "doorbell 43 of pid " + std::to_string(helper.pid())));
    fetch_doorbell(helper.identity(), 42).signal(8);
    CHECK(helper.next_wakeup() == 8);
  }

  const auto [code, stats] = helper.stop();
  CHECK(code == 0);
  CHECK(stats.served >= 2);
  CHECK(stats.refused == 0);
  CHECK(stats.bad_request == 0);
}

TEST_CASE("the wire format is as documented", "[doorbell][process]") {
  served_helper helper(0x0102030405060708ull);
  auto conn = connect_raw(helper.name());
  const auto request = request_bytes(0x0102030405060708ull);
  send_raw(conn.get(), request.data(), request.size());
  const raw_reply reply = receive_raw(conn.get());
  CHECK(reply_status(reply) == 0);
  const unsigned char id_bytes[8] = {8, 7, 6, 5, 4, 3, 2, 1};
  CHECK(std::memcmp(reply.bytes + 8, id_bytes, 8) == 0);
  REQUIRE(reply.fds.size() == 1);
  CHECK((::fcntl(reply.fds[0].get(), F_GETFD) & FD_CLOEXEC) != 0);
  auto bell = shmbus::event_fd::adopt(unique_fd(::dup(reply.fds[0].get())));
  bell.signal(3);
  CHECK(helper.next_wakeup() == 3);

  // unknown id: status 1, the id echoed, no descriptor
  auto conn2 = connect_raw(helper.name());
  const auto unknown = request_bytes(99);
  send_raw(conn2.get(), unknown.data(), unknown.size());
  const raw_reply reply2 = receive_raw(conn2.get());
  CHECK(reply_status(reply2) == 1);
  CHECK(reply2.bytes[8] == 99);
  CHECK(reply2.fds.empty());
  CHECK(helper.stop().first == 0);
}

TEST_CASE("garbage clients are dropped and do not disturb the server", "[doorbell][process]") {
  served_helper helper(7);
  fetch_doorbell(helper.identity(), 7).signal(1);  // the helper's loop has started
  CHECK(helper.next_wakeup() == 1);
  const std::size_t fds_at_start = open_fds(helper.pid());
  std::mt19937_64 random(20240611);
  auto random_bytes = [&](std::size_t n) {
    std::vector<unsigned char> v(n);
    for (auto& b : v) b = static_cast<unsigned char>(random());
    return v;
  };

  // Connect and hang up at once, without a word.
  for (int i = 0; i < 5; ++i) (void)connect_raw(helper.name());

  // Short, long and random messages, then hang up without reading.
  for (std::size_t size : {1, 7, 15, 17, 64, 65, 4096, 60000}) {
    auto conn = connect_raw(helper.name());
    const auto bytes = random_bytes(size);
    send_raw(conn.get(), bytes.data(), bytes.size());
  }
  for (int i = 0; i < 100; ++i) {
    auto conn = connect_raw(helper.name());
    const auto bytes = random_bytes(1 + random() % 40);
    send_raw(conn.get(), bytes.data(), bytes.size());
  }

  // Well-sized but wrong: each answered bad_request.
  auto expect_bad_request = [&](std::array<unsigned char, 16> bytes) {
    auto conn = connect_raw(helper.name());
    send_raw(conn.get(), bytes.data(), bytes.size());
    const raw_reply r = receive_raw(conn.get());
    CHECK(reply_status(r) == static_cast<std::uint16_t>(wire::status::bad_request));
    CHECK(r.fds.empty());
  };
  auto bad_magic = request_bytes(7);
  bad_magic[0] = 'X';
  expect_bad_request(bad_magic);
  expect_bad_request(request_bytes(7, 2));  // a future version
  auto bad_reserved = request_bytes(7);
  bad_reserved[6] = 1;
  expect_bad_request(bad_reserved);

  // A client that sends a descriptor along: the server must not keep it.
  for (int i = 0; i < 10; ++i) {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    auto conn = connect_raw(helper.name());
    const auto request = request_bytes(7);
    send_raw(conn.get(), request.data(), request.size(), p[0]);
    const raw_reply r = receive_raw(conn.get());
    CHECK(reply_status(r) == 0);
    CHECK(r.fds.size() == 1);
    ::close(p[0]);
    ::close(p[1]);
  }
  // Back to the descriptors the helper had at start. Clients that hung up
  // right after connecting may still be held for a turn or two by the tasks
  // waiting for their request; each fetch makes the helper's loop turn.
  std::size_t fds_now = 0;
  for (int i = 0; i < 50 && (fds_now = open_fds(helper.pid())) > fds_at_start; ++i) {
    fetch_doorbell(helper.identity(), 7).signal(1);
    CHECK(helper.next_wakeup() == 1);
  }
  CHECK(fds_now == fds_at_start);

  // A silent client is waited for by a task of its own: others are served.
  {
    auto silent = connect_raw(helper.name());
    auto silent2 = connect_raw(helper.name());
    fetch_doorbell(helper.identity(), 7).signal(2);
    CHECK(helper.next_wakeup() == 2);
  }

  // And a normal client after all that.
  fetch_doorbell(helper.identity(), 7).signal(9);
  CHECK(helper.next_wakeup() == 9);

  const auto [code, stats] = helper.stop();
  CHECK(code == 0);
  CHECK(stats.bad_request >= 3 + 8);
  CHECK(stats.served >= 13);
  CHECK(stats.dropped >= 5);
}

TEST_CASE("a silent client is dropped after the request timeout", "[doorbell][process]") {
  shmbus::scheduler s;
  doorbell_server::options options;
  options.request_timeout = 100ms;
  options.max_pending = 2;
  doorbell_server server(std::move(options));
  shmbus::event_fd bell;
  server.add(1, bell);

  auto silent = connect_raw(server.name());
  auto silent2 = connect_raw(server.name());
  auto silent3 = connect_raw(server.name());  // over max_pending: waits in the backlog
  auto body = [&]() -> task<void> {
    // Each silent client sees end of file: 1 and 2 after 100 ms, 3 (only
    // accepted then) after 200 ms.
    for (int fd : {silent.get(), silent2.get(), silent3.get()}) {
      std::byte b{};
      auto read_one = [&]() -> task<std::size_t> {
        co_return co_await shmbus::async_read(s, fd, std::span(&b, 1));
      };
      CHECK(co_await shmbus::with_timeout(s, guard_timeout, read_one()) == 0);
    }
  };
  const auto start = std::chrono::steady_clock::now();
  serve_while(s, server, body());
  CHECK(std::chrono::steady_clock::now() - start >= 190ms);
  CHECK(server.stats().dropped == 3);
  CHECK(server.stats().accepted == 3);
}

TEST_CASE("another process fetches a doorbell this process serves", "[doorbell][process]") {
  shmbus::scheduler s;
  doorbell_server server;
  shmbus::event_fd bell;
  server.add(42, bell);
  const auto me = process_identity::self();
  CHECK(server.identity() == me);
  CHECK(server.name() == shmbus::detail::doorbell_socket_name(me));

  auto spawn_fetch = [&](std::uint64_t id, std::uint64_t value) {
    const char* helper = helper_path();
    const std::string pid = std::to_string(me.pid), start = std::to_string(me.start_time),
                      id_arg = std::to_string(id), value_arg = std::to_string(value);
    char* const argv[] = {const_cast<char*>(helper),         const_cast<char*>("fetch"),
                          const_cast<char*>(pid.c_str()),    const_cast<char*>(start.c_str()),
                          const_cast<char*>(id_arg.c_str()), const_cast<char*>(value_arg.c_str()),
                          nullptr};
    pid_t child = -1;
    REQUIRE(::posix_spawn(&child, helper, nullptr, nullptr, argv, environ) == 0);
    return child;
  };
  const pid_t good = spawn_fetch(42, 7);
  const pid_t unknown = spawn_fetch(43, 1);

  std::uint64_t woken = 0;
  int good_exit = -1, unknown_exit = -1;
  auto body = [&]() -> task<void> {
    auto wait_bell = [&]() -> task<void> { woken = co_await bell.wait(s); };
    auto wait_good = [&]() -> task<void> { good_exit = co_await child_exit(s, good); };
    auto wait_unknown = [&]() -> task<void> { unknown_exit = co_await child_exit(s, unknown); };
    co_await shmbus::when_all(shmbus::with_timeout(s, guard_timeout, wait_bell()), wait_good(), wait_unknown());
  };
  serve_while(s, server, body());
  CHECK(woken == 7);
  CHECK(good_exit == 0);
  CHECK(unknown_exit == 10 + static_cast<int>(doorbell_errc::unknown_id));
  CHECK(server.stats().served == 1);
  CHECK(server.stats().unknown_id == 1);
}

TEST_CASE("credentials: another uid is refused, an allowed group is served", "[doorbell][process]") {
  shmbus::scheduler s;
  doorbell_server::options options;
  options.allowed_gids = {4242, 4243};
  doorbell_server server(std::move(options));
  shmbus::event_fd bell;
  server.add(42, bell);
  const auto me = process_identity::self();

  struct identity_change {
    gid_t gid;
    std::vector<gid_t> groups;
    char expected;  // 'O' served, 'R' refused
  };
  identity_change change{65534, {}, 'R'};
  SECTION("uid and gid 65534: refused") { change = {65534, {}, 'R'}; }
  SECTION("uid 65534 with allowed effective gid 4242: served") { change = {4242, {}, 'O'}; }
  SECTION("uid 65534 with allowed supplementary group 4243: served") { change = {65534, {4243}, 'O'}; }

  auto [child, result_fd] = fork_child([&]() -> char {
    if (::setgroups(change.groups.size(), change.groups.data()) != 0 || ::setgid(change.gid) != 0 ||
        ::setuid(65534) != 0)
      return errno == EPERM ? 'S' : 'E';
    try {
      fetch_doorbell(me, 42).signal(3);
      return 'O';
    } catch (const shmbus::error& e) {
      if (e.code() == doorbell_errc::refused && contains(e.what(), "uid 65534")) return 'R';
      std::fprintf(stderr, "child: %s\n", e.what());
      return 'E';
    }
  });
  const char result = serve_while(s, server, child_result(s, result_fd.get()));
  CHECK(reap(child) == 0);
  if (result == 'S') {
    WARN("setuid/setgid refused (not root): credential checks not exercised");
    return;
  }
  CHECK(result == change.expected);
  if (change.expected == 'O') {
    CHECK(bell.try_consume() == std::optional<std::uint64_t>{3});
    CHECK(server.stats().served == 1);
  } else {
    CHECK_FALSE(bell.try_consume().has_value());
    CHECK(server.stats().refused == 1);
    CHECK(server.stats().served == 0);
  }
}

TEST_CASE("a squatter on the owner's socket name is detected", "[doorbell][process]") {
  const auto me = process_identity::self();

  SECTION("a process with another pid holds the name") {
    pipe_pair ready, hold;
    const pid_t squatter = ::fork();
    REQUIRE(squatter >= 0);
    if (squatter == 0) {
      ::close(ready.read_end.get());
      ::close(hold.write_end.get());
      // Binds OUR name (pid and start time of the parent) and listens.
      int fd = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      const std::string name = shmbus::detail::doorbell_socket_name(me);
      std::memcpy(address.sun_path + 1, name.data(), name.size());
      const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
      if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0 || ::listen(fd, 4) != 0)
        ::_exit(2);
      if (::write(ready.write_end.get(), "R", 1) != 1) ::_exit(3);
      char byte;
      while (::read(hold.read_end.get(), &byte, 1) > 0) {
      }
      ::_exit(0);
    }
    ready.write_end.reset();
    hold.read_end.reset();
    char byte = 0;
    REQUIRE(read_exact(ready.read_end.get(), &byte, 1));

    const auto [code, message] = error_of([&] { (void)fetch_doorbell(me, 1); });
    CHECK(code == doorbell_errc::wrong_server);
    CHECK(contains(message, "held by pid " + std::to_string(squatter)));
    CHECK(contains(message, shmbus::detail::printable(shmbus::detail::doorbell_socket_name(me))));
    hold.write_end.reset();
    CHECK(reap(squatter) == 0);
  }

  SECTION("the owner's pid, but another start time (the pid was reused)") {
    const process_identity gone(me.pid, me.start_time - 1);
    auto listener = listen_raw(shmbus::detail::doorbell_socket_name(gone));
    const auto [code, message] = error_of([&] { (void)fetch_doorbell(gone, 1); });
    CHECK(code == doorbell_errc::owner_dead);
    CHECK(contains(message, "pid was reused"));
  }
}

TEST_CASE("a dead owner is reported at once, never a hang", "[doorbell][process]") {
  SECTION("killed while serving") {
    served_helper helper(42);
    fetch_doorbell(helper.identity(), 42).signal(1);
    CHECK(helper.next_wakeup() == 1);
    const auto identity = helper.identity();
    helper.kill();
    // A deadline of an hour: "at once" means without waiting for it (a
    // fetch that waited would run into the test's own time limit).
    const auto [code, message] = error_of([&] { (void)fetch_doorbell(identity, 42, std::chrono::hours(1)); });
    CHECK(code == doorbell_errc::owner_dead);
    CHECK(code == std::errc::no_such_process);
    CHECK(contains(message, "pid " + std::to_string(identity.pid)));
  }
  SECTION("not a process at all") {
    CHECK(error_of([] { (void)fetch_doorbell(process_identity(0, 1), 1); }).first == doorbell_errc::owner_dead);
    CHECK(error_of([] { (void)fetch_doorbell(process_identity(-1, 1), 1); }).first == doorbell_errc::owner_dead);
  }
  SECTION("alive but serving nothing") {
    const auto [code, message] = error_of([] { (void)fetch_doorbell(process_identity::self(), 1); });
    CHECK(code == doorbell_errc::not_serving);
    CHECK(code == std::errc::connection_refused);
  }
}

TEST_CASE("a server that never answers times out", "[doorbell][process]") {
  const auto me = process_identity::self();
  auto listener = listen_raw(shmbus::detail::doorbell_socket_name(me));  // never accepts
  const auto start = std::chrono::steady_clock::now();
  const auto [code, message] = error_of([&] { (void)fetch_doorbell(me, 1, 200ms); });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(code == shmbus::errc::timed_out);
  CHECK(contains(message, "200 ms"));
  CHECK(elapsed >= 190ms);  // the deadline is not cut short; a fetch past it would hang the test
}

TEST_CASE("an owner that does not answer holds up no other owner's doorbell", "[doorbell][process]") {
  // The cache's fetches go to this process's fetcher thread. Owner A is
  // stopped before its doorbell is first rung: its fetch cannot end before
  // its deadline, set far beyond the guard timeout. Owner B's doorbell,
  // rung next, must still be fetched and rung while A is stopped; and once
  // A goes on, its own fetch, still under way, completes and rings it.
  served_helper stopped(7);
  served_helper running(8);
  shmbus::test::stop_and_wait(stopped.pid());

  shmbus::detail::doorbell_cache cache(2, 60s);
  using owner = shmbus::detail::doorbell_cache::owner;
  CHECK(cache.ring(0, owner{1, stopped.identity(), 7}));  // queued first
  CHECK(cache.ring(1, owner{1, running.identity(), 8}));
  CHECK(running.next_wakeup() == 1);

  REQUIRE(::kill(stopped.pid(), SIGCONT) == 0);
  CHECK(stopped.next_wakeup() == 1);
  // The descriptors are the cache's now: a ring is one write each.
  CHECK(cache.ring(1, owner{1, running.identity(), 8}));
  CHECK(running.next_wakeup() == 1);
  CHECK(cache.ring(0, owner{1, stopped.identity(), 7}));
  CHECK(stopped.next_wakeup() == 1);
  CHECK(stopped.stop().second.served == 1);
  CHECK(running.stop().second.served == 1);
}

TEST_CASE("malformed replies are rejected and leak no descriptor", "[doorbell][process]") {
  // A forked fake server under its own name: each connection gets the next
  // misbehaviour in this list.
  enum class fake : int { short_reply, ok_without_fd, ok_with_pipe, ok_with_two, bad_magic, bad_version,
                          bad_status, wrong_id, no_reply, count };
  pipe_pair ready;
  const pid_t server = ::fork();
  REQUIRE(server >= 0);
  if (server == 0) {
    ready.read_end.reset();
    const std::string name = shmbus::detail::doorbell_socket_name(process_identity::self());
    int listener = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    if (::bind(listener, reinterpret_cast<const sockaddr*>(&address), length) != 0 || ::listen(listener, 4) != 0)
      ::_exit(2);
    if (::write(ready.write_end.get(), "R", 1) != 1) ::_exit(3);
    shmbus::event_fd e1, e2;
    for (int i = 0; i < static_cast<int>(fake::count); ++i) {
      const int conn = ::accept(listener, nullptr, nullptr);
      if (conn < 0) ::_exit(4);
      wire::request request{};
      if (::recv(conn, &request, sizeof request, 0) != sizeof request) ::_exit(5);
      wire::reply reply{wire::reply_magic, wire::version, 0, request.id};
      std::size_t size = sizeof reply;
      int fds[2] = {e1.native_handle(), e2.native_handle()};
      int nfds = 1;
      int p[2];
      if (::pipe(p) != 0) ::_exit(6);
      switch (static_cast<fake>(i)) {
        case fake::short_reply: size = 8; break;
        case fake::ok_without_fd: nfds = 0; break;
        case fake::ok_with_pipe: fds[0] = p[0]; break;
        case fake::ok_with_two: nfds = 2; break;
        case fake::bad_magic: reply.magic = 0x12345678; break;
        case fake::bad_version: reply.version = 9; break;
        case fake::bad_status: reply.status = 77; break;
        case fake::wrong_id: reply.id += 1; break;
        case fake::no_reply: size = 0; break;
        case fake::count: break;
      }
      if (size > 0) {
        const auto payload = std::span(reinterpret_cast<const std::byte*>(&reply), size);
        const auto attached = std::span<const int>(fds, static_cast<std::size_t>(nfds));
        if (shmbus::detail::send_with_fds(conn, payload, attached, MSG_NOSIGNAL) < 0) ::_exit(7);
      }
      ::close(p[0]);
      ::close(p[1]);
      ::close(conn);
    }
    ::_exit(0);
  }
  ready.write_end.reset();
  char byte = 0;
  REQUIRE(read_exact(ready.read_end.get(), &byte, 1));
  const auto owner = process_identity::of(server);
  REQUIRE(owner.has_value());

  const std::size_t fds_before = open_fds(::getpid());
  const char* const expected[] = {"reply of 8 bytes",   "got 0",        "not an eventfd",
                                  "got 2",              "bad magic",    "protocol version 9",
                                  "unknown status 77",  "reply for doorbell 6", "without replying"};
  for (int i = 0; i < static_cast<int>(fake::count); ++i) {
    INFO("misbehaviour " << i);
    const auto [code, message] = error_of([&] { (void)fetch_doorbell(*owner, 5); });
    CHECK(code == doorbell_errc::bad_reply);
    CHECK(contains(message, expected[i]));
  }
  CHECK(open_fds(::getpid()) == fds_before);
  CHECK(reap(server) == 0);
}

TEST_CASE("an owner whose listen backlog is full holds up no other owner's doorbell", "[doorbell][process]") {
  // This process plays an owner that never accepts, its backlog (0: room
  // for one) taken by a silent client, so that a connect(2) to it would
  // wait. The fetch of its doorbell, asked for first, must not hold up the
  // next one's.
  const auto me = process_identity::self();
  auto listener = listen_raw(shmbus::detail::doorbell_socket_name(me), 0);
  auto filler = connect_raw(shmbus::detail::doorbell_socket_name(me));
  served_helper running(8);

  shmbus::detail::doorbell_cache cache(2, 60s);
  using owner = shmbus::detail::doorbell_cache::owner;
  const owner full{1, me, 1};
  CHECK(cache.ring(0, full));  // queued first: waits for room
  CHECK(cache.ring(1, owner{1, running.identity(), 8}));
  CHECK(running.next_wakeup() == 1);

  // Gone: the fetch still trying to connect now fails (not serving), and
  // the cache says so, until then it answers that the fetch is on its way.
  listener.reset();
  filler.reset();
  const auto deadline = std::chrono::steady_clock::now() + guard_timeout;
  while (cache.ring(0, full) && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  CHECK_FALSE(cache.ring(0, full));
}

namespace fork_window {

// A per-process instance whose making, in the test's process, waits until
// the test's fork() has begun: the fork lands while the maker holds the
// holder's mutex, unless fork() waits for it.
std::int32_t test_pid = 0;
std::atomic<bool> inside{false};
std::atomic<bool> released{false};
std::atomic<bool> made{false};
std::atomic<bool> armed{false};
std::atomic<int> made_when_forked{-1};

struct slow_to_make {
  std::int32_t pid = static_cast<std::int32_t>(::getpid());
  slow_to_make() {
    if (pid != test_pid) return;  // the child's own is made at once
    inside = true;
    inside.notify_all();
    released.wait(false);
    made = true;
  }
};

// Prepare handlers run in the reverse order of their registration:
// release_maker first, then the holder's (which waits for the maker to
// finish), then look.
void release_maker() noexcept {
  if (!armed) return;
  released = true;
  released.notify_all();
}
void look() noexcept {
  if (armed) made_when_forked = made ? 1 : 0;
}

}  // namespace fork_window

TEST_CASE("a fork while another thread makes a per-process instance leaves the child able to make its own",
          "[doorbell][process]") {
  using namespace fork_window;
  using shmbus::detail::instance_holder;
  using shmbus::detail::this_process_instance;
  test_pid = static_cast<std::int32_t>(::getpid());
  REQUIRE(::pthread_atfork(&look, nullptr, nullptr) == 0);
  (void)instance_holder<slow_to_make>::get();
  REQUIRE(::pthread_atfork(&release_maker, nullptr, nullptr) == 0);

  std::thread maker([] { (void)this_process_instance<slow_to_make>(); });
  inside.wait(false);
  armed = true;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    (void)this_process_instance<slow_to_make>();  // waits forever if the mutex came locked
    ::_exit(0);
  }
  armed = false;
  maker.join();
  CHECK(made_when_forked == 1);

  unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));
  REQUIRE(pidfd);
  pollfd pfd{pidfd.get(), POLLIN, 0};
  const bool exited = ::poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(guard_timeout).count())) == 1;
  if (!exited) ::kill(child, SIGKILL);
  CHECK(reap(child) == 0);
  CHECK(exited);
}

TEST_CASE("one doorbell server per process; add, remove, serve rules", "[doorbell]") {
  doorbell_server server;
  shmbus::event_fd a, b;
  server.add(1, a);
  server.add(2, b);
  CHECK(server.size() == 2);
  CHECK(server.contains(1));
  CHECK_THROWS_AS(server.add(1, b), shmbus::error);
  CHECK(server.remove(1));
  CHECK_FALSE(server.remove(1));
  CHECK_FALSE(server.contains(1));
  CHECK(server.size() == 1);

  const auto [code, message] = error_of([] { doorbell_server second; });
  CHECK(code == std::errc::address_in_use);
  CHECK(contains(message, "@" + server.name()));

  doorbell_server::options no_pending;
  no_pending.max_pending = 0;
  CHECK(error_of([&] { doorbell_server bad(no_pending); }).first == shmbus::errc::bad_size);
  doorbell_server::options no_time;
  no_time.request_timeout = 0ms;
  CHECK(error_of([&] { doorbell_server bad(no_time); }).first == shmbus::errc::bad_size);

  shmbus::scheduler s;
  std::stop_source stop;
  bool threw = false;
  auto second = [&]() -> task<void> {
    try {
      co_await server.serve(s);
    } catch (const shmbus::error& e) {
      threw = contains(e.what(), "already being served");
    }
    stop.request_stop();
  };
  s.run(shmbus::when_all(server.serve(s).with_stop_token(stop.get_token()), second()));
  CHECK(threw);
}
