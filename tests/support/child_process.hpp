// Helpers for tests that run real child processes: pipes to hand a byte
// between parent and child (the only synchronisation the tests use), and
// reaping children.
#pragma once

#include <shmbus/fd.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus::test {

/// Both ends of one pipe (close-on-exec), closed on scope exit.
struct pipe_pair {
  unique_fd read_end;
  unique_fd write_end;

  pipe_pair() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }
  /// Parent side: one byte each way.
  void send(char c) const { REQUIRE(::write(write_end.get(), &c, 1) == 1); }
  char receive() const {
    char c = 0;
    REQUIRE(::read(read_end.get(), &c, 1) == 1);
    return c;
  }
  /// Child side (after fork): no Catch2 macros, a failure ends the child.
  void child_send(char c) const {
    if (::write(write_end.get(), &c, 1) != 1) ::_exit(100);
  }
  char child_receive() const {
    char c = 0;
    if (::read(read_end.get(), &c, 1) != 1) ::_exit(101);
    return c;
  }
};

/// Waits for `pid`; its exit status, or 128 + the signal that killed it.
inline int wait_exit(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Sends `signal` to `pid` and reaps it.
inline void kill_and_reap(pid_t pid, int signal) {
  REQUIRE(::kill(pid, signal) == 0);
  CHECK(wait_exit(pid) == 128 + signal);
}

/// Stops `pid` with SIGSTOP and waits until it is stopped.
inline void stop_and_wait(pid_t pid) {
  REQUIRE(::kill(pid, SIGSTOP) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, WUNTRACED) == pid);
  REQUIRE(WIFSTOPPED(status));
}

/// The path of a program the build passes in an environment variable
/// (tests/meson.build, samples/meson.build).
inline std::string program_from_env(const char* variable) {
  const char* p = std::getenv(variable);
  REQUIRE(p != nullptr);
  return p;
}

/// A helper program run as a child process, its stdin and stdout piped to
/// the test: lines out, lines in. Reaped (SIGKILL first) if still running
/// when destroyed.
class helper_process {
 public:
  explicit helper_process(std::vector<std::string> argv) {
    pipe_pair in, out;
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      ::dup2(in.read_end.get(), 0);
      ::dup2(out.write_end.get(), 1);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    m_stdin = std::move(in.write_end);
    m_stdout = std::move(out.read_end);
  }
  helper_process(const helper_process&) = delete;
  helper_process& operator=(const helper_process&) = delete;
  ~helper_process() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      int status = 0;
      ::waitpid(m_pid, &status, 0);
    }
  }

  pid_t pid() const noexcept { return m_pid; }
  /// The next line the helper printed, without its newline ("" at EOF).
  std::string read_line() {
    std::string line;
    char c = 0;
    while (::read(m_stdout.get(), &c, 1) == 1 && c != '\n') line += c;
    return line;
  }
  void write_line(std::string_view line) {
    std::string l(line);
    l += '\n';
    REQUIRE(::write(m_stdin.get(), l.data(), l.size()) == static_cast<ssize_t>(l.size()));
  }
  void close_stdin() { m_stdin.reset(); }
  /// Waits for the exit; its status, or 128 + the signal that killed it.
  int wait() {
    const int r = wait_exit(m_pid);
    m_pid = -1;
    return r;
  }
  void kill(int signal) {
    kill_and_reap(m_pid, signal);
    m_pid = -1;
  }

 private:
  pid_t m_pid = -1;
  unique_fd m_stdin;
  unique_fd m_stdout;
};

}  // namespace shmbus::test
