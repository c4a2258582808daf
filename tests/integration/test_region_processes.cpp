// Every region backend shared between two real processes.
//
// The anonymous and System V private backends reach a forked child; the
// named ones, and memfds (inherited through exec, or sent over a Unix
// socket), reach a separate program, tests/support/region_helper.cpp, found
// through $SHMBUS_REGION_HELPER. Both sides run the same exchange:
//
//   test                              peer
//   write pattern A to the 1st half
//   start the peer ------------------> check size and pattern A
//                                      write pattern B to the 2nd half
//   read notify  <-------------------- write notify
//   check pattern B
//   write pattern C to the 1st half
//   write wake ----------------------> read wake
//                                      check pattern C, exit 0
//   waitpid: exit status 0
//
// The pipes order every access; nothing sleeps and nothing is timed.
#include <shmbus/region.hpp>

#include <catch2/catch.hpp>

#include "child_process.hpp"
#include "region_patterns.hpp"
#include "notify/doorbell_socket.hpp"
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

using shmbus::region;
using shmbus::test::pipe_pair;

namespace {

using shmbus::test::fill;
using shmbus::test::holds;
using shmbus::test::pattern_a;
using shmbus::test::pattern_b;
using shmbus::test::pattern_c;

namespace fs = std::filesystem;

const std::size_t page = region::page_size();

std::string unique_name(std::string_view tag) {
  static int counter = 0;
  return fmt::format("/shmbus-itest-{}-{}-{}", ::getpid(), tag, counter++);
}

// Lets `fd` survive exec; called in the forked child only, so the parent's
// other children never inherit it.
void keep_across_exec(int fd) { ::fcntl(fd, F_SETFD, 0); }

// The peer's side of the exchange, for forked children.
int peer(const region& r, int notify, int wait) {
  const std::size_t half = r.size() / 2;
  if (!holds(r.bytes().first(half), pattern_a)) return 3;
  fill(r.bytes().subspan(half), pattern_b);
  const char byte = 'b';
  if (::write(notify, &byte, 1) != 1) return 5;
  char got = 0;
  if (::read(wait, &got, 1) != 1) return 6;
  if (!holds(r.bytes().first(half), pattern_c)) return 4;
  return 0;
}

// Starts the peer with the child's ends of the two pipes; returns its pid.
using starter = std::function<pid_t(int notify, int wait)>;

// Runs the exchange above against `r`; `after_start` runs once the peer is
// started (to send it a descriptor, say).
void swap_patterns(region& r, const starter& start, const std::function<void()>& after_start = {}) {
  REQUIRE(r.size() >= 2 * page);
  const std::size_t half = r.size() / 2;
  fill(r.bytes().first(half), pattern_a);
  pipe_pair notify;
  pipe_pair wake;
  std::fflush(nullptr);
  const pid_t pid = start(notify.write_end.get(), wake.read_end.get());
  REQUIRE(pid > 0);
  notify.write_end.reset();
  wake.read_end.reset();
  if (after_start) after_start();

  char byte = 0;
  ssize_t n = 0;
  do n = ::read(notify.read_end.get(), &byte, 1);
  while (n == -1 && errno == EINTR);
  if (n == 1) {
    CHECK(holds(r.bytes().subspan(half), pattern_b));
    fill(r.bytes().first(half), pattern_c);
    CHECK(::write(wake.write_end.get(), "c", 1) == 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO("peer status " << status);
  CHECK(n == 1);  // the peer got as far as writing pattern B
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

starter fork_peer(const region& r) {
  return [&r](int notify, int wait) {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(peer(r, notify, wait));
    return pid;
  };
}

const char* helper_path() {
  const char* path = std::getenv("SHMBUS_REGION_HELPER");
  if (path == nullptr) FAIL("SHMBUS_REGION_HELPER is not set (meson test sets it)");
  return path;
}

// fork+exec of region_helper <how> <object> <size> <notify> <wait>;
// `inherit` names descriptors (besides the pipes) that must survive exec.
starter exec_peer(std::string how, std::string object, std::size_t size, std::vector<int> inherit = {}) {
  return [=](int notify, int wait) {
    const std::string helper = helper_path();
    std::vector<std::string> args = {helper, how, object, std::to_string(size), std::to_string(notify),
                                     std::to_string(wait)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      keep_across_exec(notify);
      keep_across_exec(wait);
      for (int fd : inherit) keep_across_exec(fd);
      ::execv(argv[0], argv.data());
      std::fprintf(stderr, "execv %s: %s\n", argv[0], std::strerror(errno));
      ::_exit(127);
    }
    return pid;
  };
}

// The sending half of SCM_RIGHTS: one byte of payload carries one fd.
void send_fd(int socket, int fd) {
  const std::byte byte{'f'};
  REQUIRE(shmbus::detail::send_with_fds(socket, std::span(&byte, 1), std::span(&fd, 1), MSG_NOSIGNAL) == 1);
}

}  // namespace

TEST_CASE("anonymous: a parent and its forked child share the pages", "[region]") {
  auto r = region::create_anonymous(3 * page);
  swap_patterns(r, fork_peer(r));
}

TEST_CASE("sysv private, removed at once as nginx does: still shared with a forked child", "[region]") {
  auto r = region::create_sysv(region::private_key, 4 * page);
  const int id = r.sysv_id();
  r.destroy();  // IPC_RMID: gone once the last process detaches
  swap_patterns(r, fork_peer(r));
  shmid_ds ds{};
  REQUIRE(::shmctl(id, IPC_STAT, &ds) == 0);
  CHECK(ds.shm_nattch == 1);  // the child's attachment went with it
  r = region();
  CHECK(::shmctl(id, IPC_STAT, &ds) == -1);  // and our detach freed it
}

TEST_CASE("sysv: an exec'd process opens the segment by key, and by shmid", "[region]") {
  const auto key = static_cast<key_t>(0x52000000u | (static_cast<unsigned>(::getpid()) & 0xffffffu));
  auto r = region::create_sysv(key, 2 * page);
  struct remove_at_exit {
    region& r;
    ~remove_at_exit() {
      try {
        r.destroy();
      } catch (...) {
      }
    }
  } remove{r};
  swap_patterns(r, exec_peer("sysv-key", std::to_string(key), r.size()));
  swap_patterns(r, exec_peer("sysv-id", std::to_string(r.sysv_id()), r.size()));
}

TEST_CASE("shm: an exec'd process opens the object by name", "[region]") {
  const std::string name = unique_name("shm");
  auto r = region::create_shm(name, 5 * page);
  struct unlink_at_exit {
    const std::string& name;
    ~unlink_at_exit() {
      try {
        region::unlink_shm(name);
      } catch (...) {
      }
    }
  } unlink{name};
  swap_patterns(r, exec_peer("shm", name, r.size()));
}

TEST_CASE("memfd: an exec'd process adopts an fd it inherited", "[region]") {
  auto r = region::create_memfd("inherited", 2 * page);
  // Made just for this child; the region's own fd stays close-on-exec.
  shmbus::unique_fd passed = r.dup_fd(false);
  swap_patterns(r, exec_peer("memfd-fd", std::to_string(passed.get()), r.size(), {passed.get()}));
}

TEST_CASE("memfd: a sealed fd sent over a Unix socket (SCM_RIGHTS) is adopted by an exec'd process", "[region]") {
  auto r = region::create_memfd("sent", 4 * page, shmbus::memfd_seal::fixed_size);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  shmbus::unique_fd ours(sv[0]);
  shmbus::unique_fd theirs(sv[1]);
  swap_patterns(r, exec_peer("memfd-socket", std::to_string(theirs.get()), r.size(), {theirs.get()}), [&] {
    theirs.reset();
    send_fd(ours.get(), r.fd());
  });
}

TEST_CASE("file: an exec'd process opens the file by path", "[region]") {
  std::string tmpl = (fs::temp_directory_path() / "shmbus-itest-XXXXXX").string();
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  struct remove_at_exit {
    fs::path dir;
    ~remove_at_exit() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove{tmpl};
  const fs::path path = fs::path(tmpl) / "shared.seg";
  auto r = region::open_file(path, 3 * page, shmbus::open_mode::create_only);
  swap_patterns(r, exec_peer("file", path.string(), r.size()));
  // What the helper wrote is in the file: a fresh mapping of the path sees it.
  r.sync();
  auto again = region::open_file(path, 0, shmbus::open_mode::open_only, shmbus::access_mode::read_only);
  CHECK(holds(again.bytes().subspan(again.size() / 2), pattern_b));
}

TEST_CASE("shm: processes racing open_or_create_shm get one object, created once, never short", "[region]") {
  const std::string name = unique_name("race");
  struct unlink_at_exit {
    const std::string& name;
    ~unlink_at_exit() {
      try {
        region::unlink_shm(name);
      } catch (...) {
      }
    }
  } unlink{name};
  constexpr int racers = 8;
  const std::size_t size = 64 * page;  // large enough that fallocate takes a while
  pipe_pair start;
  std::vector<pid_t> pids;
  std::fflush(nullptr);
  for (int i = 0; i < racers; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      start.write_end.reset();
      char byte = 0;
      if (::read(start.read_end.get(), &byte, 1) != 0) ::_exit(20);  // EOF: everyone goes at once
      try {
        auto r = region::open_or_create_shm(name, size);
        if (r.size() != size) ::_exit(21);
        r.data()[static_cast<std::size_t>(i) * page] = std::byte{1};
        ::_exit(r.created() ? 1 : 0);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "racer %d: %s\n", i, e.what());
        ::_exit(22);
      }
    }
    pids.push_back(pid);
  }
  start.write_end.reset();
  int creators = 0;
  for (pid_t pid : pids) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    INFO("racer exit status " << WEXITSTATUS(status));
    CHECK(WEXITSTATUS(status) <= 1);
    creators += WEXITSTATUS(status) == 1 ? 1 : 0;
  }
  CHECK(creators == 1);
  auto r = region::open_shm(name);
  for (int i = 0; i < racers; ++i) CHECK(r.data()[static_cast<std::size_t>(i) * page] == std::byte{1});
}
