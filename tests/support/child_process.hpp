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

}  // namespace shmbus::test
