// process_identity: pid + start time, liveness without heartbeats.
//
// Children are synchronised with pipes and waitpid/waitid, never with sleeps.
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>

#include <catch2/catch.hpp>

#include "child_process.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using shmbus::detail::is_alive;
using shmbus::detail::parse_proc_stat;
using shmbus::detail::process_identity;

namespace {

using shmbus::test::pipe_pair;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> split(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> tokens;
  for (std::string t; in >> t;) tokens.push_back(t);
  return tokens;
}

/// Field 22 of a stat line, counted from the END of the line: independent
/// of how the comm field is parsed. `fields` is the kernel's field count,
/// taken from a line whose comm has no spaces.
std::uint64_t start_time_from_end(const std::string& line, std::size_t fields) {
  const auto tokens = split(line);
  REQUIRE(tokens.size() >= fields);
  return std::stoull(tokens[tokens.size() - (fields - 22) - 1]);
}

std::size_t kernel_stat_fields() { return split(read_file("/proc/self/stat")).size(); }

/// Forks a child that blocks reading `p` until end of file, then exits 0.
pid_t fork_blocked_child(pipe_pair& p) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(p.write_end.get());
    char byte;
    while (::read(p.read_end.get(), &byte, 1) > 0) {
    }
    ::_exit(0);
  }
  p.read_end.reset();
  return child;
}

int reap(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Blocks until `pid` has exited, leaving it a zombie (not reaped).
void wait_until_zombie(pid_t pid) {
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0);
}

}  // namespace

TEST_CASE("process_identity is a 16-byte trivially copyable record", "[process_identity]") {
  STATIC_REQUIRE(std::is_trivially_copyable_v<process_identity>);
  STATIC_REQUIRE(sizeof(process_identity) == 16);
  const process_identity a(42, 7);
  unsigned char bytes[16];
  std::memcpy(bytes, &a, sizeof bytes);
  std::int32_t pid = 0;
  std::uint32_t reserved = 1;
  std::uint64_t start = 0;
  std::memcpy(&pid, bytes + 0, 4);
  std::memcpy(&reserved, bytes + 4, 4);
  std::memcpy(&start, bytes + 8, 8);
  CHECK(pid == 42);
  CHECK(reserved == 0);
  CHECK(start == 7);
  CHECK(a == process_identity(42, 7));
  CHECK_FALSE(a == process_identity(42, 8));
  CHECK_FALSE(a == process_identity(43, 7));
}

TEST_CASE("self() is getpid() and the start time in /proc/self/stat", "[process_identity]") {
  const auto me = process_identity::self();
  CHECK(me.pid == ::getpid());
  const auto tokens = split(read_file("/proc/self/stat"));  // our comm has no spaces
  REQUIRE(tokens.size() >= 22);
  CHECK(me.start_time == std::stoull(tokens[21]));
  CHECK(me.start_time > 0);
  CHECK(is_alive(me));
  CHECK(process_identity::of(::getpid()) == me);
}

TEST_CASE("a different start time is another process", "[process_identity]") {
  const auto me = process_identity::self();
  CHECK_FALSE(is_alive(process_identity(me.pid, me.start_time + 1)));
  CHECK_FALSE(is_alive(process_identity(me.pid, me.start_time - 1)));
  CHECK_FALSE(is_alive(process_identity(me.pid, 0)));
}

TEST_CASE("pids that name no process", "[process_identity]") {
  CHECK_FALSE(is_alive(process_identity(0, 1)));   // kill(0, 0) would be our group
  CHECK_FALSE(is_alive(process_identity(-1, 1)));  // kill(-1, 0) would be everyone
  CHECK_FALSE(process_identity::of(0).has_value());
  CHECK_FALSE(process_identity::of(-5).has_value());
  const long pid_max = std::stol(read_file("/proc/sys/kernel/pid_max"));
  REQUIRE(pid_max < 0x7fffffff);
  const auto beyond = static_cast<std::int32_t>(pid_max);  // pids are < pid_max
  CHECK_FALSE(is_alive(process_identity(beyond, 1)));
  CHECK_FALSE(process_identity::of(beyond).has_value());
}

TEST_CASE("a child is alive while blocked, dead as a zombie and once reaped", "[process_identity]") {
  pipe_pair p;
  const pid_t child = fork_blocked_child(p);
  const auto id = process_identity::of(child);
  REQUIRE(id.has_value());
  CHECK(id->pid == child);
  CHECK(id->start_time >= process_identity::self().start_time);
  CHECK(is_alive(*id));

  SECTION("stopped (no CPU at all) is still alive") {
    REQUIRE(::kill(child, SIGSTOP) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, WUNTRACED) == child);
    REQUIRE(WIFSTOPPED(status));
    CHECK(is_alive(*id));
    CHECK(process_identity::of(child) == id);
    REQUIRE(::kill(child, SIGCONT) == 0);
  }

  p.write_end.reset();  // the child reads end of file and exits
  wait_until_zombie(child);
  CHECK(read_file("/proc/" + std::to_string(child) + "/stat").find(") Z ") != std::string::npos);
  CHECK_FALSE(is_alive(*id));
  CHECK_FALSE(process_identity::of(child).has_value());

  CHECK(reap(child) == 0);
  CHECK_FALSE(is_alive(*id));
  CHECK_FALSE(process_identity::of(child).has_value());
}

TEST_CASE("a process whose main thread exited while another runs is alive", "[process_identity]") {
  pipe_pair p;
  pipe_pair ready;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(p.write_end.get());
    ::close(ready.read_end.get());
    static int s_read_end;
    static int s_ready;
    s_read_end = p.read_end.get();
    s_ready = ready.write_end.get();
    pthread_t thread;
    auto body = [](void*) -> void* {
      char byte;
      while (::read(s_read_end, &byte, 1) > 0) {
      }
      ::_exit(0);
    };
    if (::pthread_create(&thread, nullptr, body, nullptr) != 0) ::_exit(2);
    ::close(s_ready);  // the parent sees end of file: the thread exists
    // Ends the main thread only. Not pthread_exit: its forced unwinding
    // would run into the test framework's catch blocks.
    ::syscall(SYS_exit, 0);
    ::_exit(3);
  }
  p.read_end.reset();
  ready.write_end.reset();
  char byte;
  REQUIRE(::read(ready.read_end.get(), &byte, 1) == 0);

  const auto id = process_identity::of(child);
  REQUIRE(id.has_value());
  // The leader turns 'Z' asynchronously after pthread_exit; observe that
  // state (bounded) so the check below is the interesting one.
  const std::string path = "/proc/" + std::to_string(child) + "/stat";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool leader_zombie = false;
  while (!leader_zombie && std::chrono::steady_clock::now() < deadline) {
    const auto fields = parse_proc_stat(read_file(path));
    REQUIRE(fields.has_value());
    leader_zombie = fields->state == 'Z';
    if (!leader_zombie) std::this_thread::yield();
  }
  CHECK(leader_zombie);
  CHECK(is_alive(*id));
  CHECK(process_identity::of(child) == id);

  p.write_end.reset();
  CHECK(reap(child) == 0);
  CHECK_FALSE(is_alive(*id));
}

TEST_CASE("a comm containing ') (' parses after the last ')'", "[process_identity]") {
  const std::size_t fields = kernel_stat_fields();

  SECTION("renamed with prctl(PR_SET_NAME)") {
    pipe_pair go;
    pipe_pair renamed;
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(go.write_end.get());
      ::close(renamed.read_end.get());
      char byte;
      if (::read(go.read_end.get(), &byte, 1) != 1) ::_exit(2);
      if (::prctl(PR_SET_NAME, "we ird) (name", 0, 0, 0) != 0) ::_exit(3);
      if (::write(renamed.write_end.get(), "n", 1) != 1) ::_exit(4);
      while (::read(go.read_end.get(), &byte, 1) > 0) {
      }
      ::_exit(0);
    }
    go.read_end.reset();
    renamed.write_end.reset();
    const auto before = process_identity::of(child);
    REQUIRE(before.has_value());
    REQUIRE(::write(go.write_end.get(), "g", 1) == 1);
    char byte;
    REQUIRE(::read(renamed.read_end.get(), &byte, 1) == 1);

    const std::string dir = "/proc/" + std::to_string(child);
    CHECK(read_file(dir + "/comm") == "we ird) (name\n");
    const auto after = process_identity::of(child);
    REQUIRE(after.has_value());
    CHECK(after == before);
    CHECK(after->start_time == start_time_from_end(read_file(dir + "/stat"), fields));
    CHECK(is_alive(*after));
    go.write_end.reset();
    CHECK(reap(child) == 0);
    CHECK_FALSE(is_alive(*after));
  }

  SECTION("exec'd through a symlink with that name") {
    const char* helper = std::getenv("SHMBUS_DOORBELL_HELPER");
    REQUIRE(helper != nullptr);
    char dir_template[] = "/tmp/shmbus-identity-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::filesystem::path dir(dir_template);
    const auto link = dir / "we ird) (name";
    std::filesystem::create_symlink(helper, link);

    pipe_pair input;
    pipe_pair output;
    posix_spawn_file_actions_t actions;
    REQUIRE(::posix_spawn_file_actions_init(&actions) == 0);
    REQUIRE(::posix_spawn_file_actions_adddup2(&actions, input.read_end.get(), 0) == 0);
    REQUIRE(::posix_spawn_file_actions_adddup2(&actions, output.write_end.get(), 1) == 0);
    const std::string link_path = link.string();
    char* const argv[] = {const_cast<char*>(link_path.c_str()), const_cast<char*>("block"), nullptr};
    pid_t child = -1;
    const int spawned = ::posix_spawn(&child, link_path.c_str(), &actions, nullptr, argv, environ);
    ::posix_spawn_file_actions_destroy(&actions);
    REQUIRE(spawned == 0);
    input.read_end.reset();
    output.write_end.reset();
    // posix_spawn returns when the exec has replaced the memory, which is
    // before the kernel sets the new comm: wait for the program to speak.
    char byte;
    REQUIRE(::read(output.read_end.get(), &byte, 1) == 1);

    const std::string proc = "/proc/" + std::to_string(child);
    CHECK(read_file(proc + "/comm") == "we ird) (name\n");
    const auto id = process_identity::of(child);
    REQUIRE(id.has_value());
    CHECK(id->start_time == start_time_from_end(read_file(proc + "/stat"), fields));
    CHECK(is_alive(*id));

    input.write_end.reset();
    CHECK(reap(child) == 0);
    CHECK_FALSE(is_alive(*id));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("parse_proc_stat reads state and start time after the last ')'", "[process_identity]") {
  // Fields 3..22 after the comm; num_threads (20) is 4, start time (22) 98765.
  const std::string tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 4 0 98765 23 24 25\n";

  auto plain = parse_proc_stat("1234 (cat)" + tail);
  REQUIRE(plain.has_value());
  CHECK(plain->state == 'S');
  CHECK(plain->num_threads == 4);
  CHECK(plain->start_time == 98765);

  for (const std::string comm : {"(a) (b) c)", "()", "())", "(()", "(x) S 1 2 3)", "(new\nline)", "( )"}) {
    INFO(comm);
    const auto f = parse_proc_stat("1 " + comm + tail);
    REQUIRE(f.has_value());
    CHECK(f->state == 'S');
    CHECK(f->start_time == 98765);
  }
  // Exactly 22 fields, no newline.
  CHECK(parse_proc_stat("7 (x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5")->start_time == 5);

  CHECK_FALSE(parse_proc_stat("").has_value());
  CHECK_FALSE(parse_proc_stat("1 cat S 1").has_value());                    // no parentheses
  CHECK_FALSE(parse_proc_stat("1 )cat( S 1 2 3").has_value());              // inverted
  CHECK_FALSE(parse_proc_stat("1 (cat) S 1 2 3 4 5\n").has_value());        // too few fields
  CHECK_FALSE(parse_proc_stat("1 (cat)  S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5").has_value());  // two spaces
  CHECK_FALSE(parse_proc_stat("1 (cat) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5").has_value());  // state
  CHECK_FALSE(parse_proc_stat("1 (cat) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5x").has_value());
  CHECK_FALSE(parse_proc_stat("1 (cat) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 -5").has_value());
  CHECK_FALSE(
      parse_proc_stat("1 (cat) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 99999999999999999999999").has_value());
  CHECK_FALSE(parse_proc_stat("1 (cat) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 x 0 5").has_value());

  // Zombie rules: Z with one thread has exited; Z with more (a leader that
  // called pthread_exit) has not; X has.
  CHECK(parse_proc_stat("1 (z) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5")->exited());
  CHECK_FALSE(parse_proc_stat("1 (z) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 2 0 5")->exited());
  CHECK(parse_proc_stat("1 (z) X 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5")->exited());
  CHECK_FALSE(parse_proc_stat("1 (z) T 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 5")->exited());
}
