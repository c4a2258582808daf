// An eventfd signalled by another process wakes a task: once by a forked
// child, once by a separately exec'd program that inherited the descriptor.
#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/when_all.hpp>

#include <catch2/catch.hpp>

#include "child_process.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

using shmbus::task;
using shmbus::test::wait_exit;

namespace {

/// The waiter is suspended in the kernel before the other process is told
/// to signal (through `go`), so the wake-up really crosses processes.
std::uint64_t await_signal_after_go(shmbus::scheduler& s, shmbus::event_fd& e, int go) {
  return s.run([&]() -> task<std::uint64_t> {
    std::uint64_t value = 0;
    auto waiter = [&]() -> task<void> { value = co_await e.wait(s); };
    auto starter = [&]() -> task<void> {
      co_await s.schedule();
      const char byte = 'g';
      co_await shmbus::async_write(s, go, std::as_bytes(std::span(&byte, 1)));
    };
    co_await shmbus::when_all(waiter(), starter());
    co_return value;
  }());
}

}  // namespace

TEST_CASE("a forked child's signal wakes a waiting task", "[event_fd][process]") {
  shmbus::scheduler s;
  shmbus::event_fd e;
  int go[2];
  REQUIRE(::pipe2(go, O_CLOEXEC) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    char byte;
    if (::read(go[0], &byte, 1) != 1) ::_exit(3);
    ::_exit(e.try_signal(11) == 0 ? 0 : 1);
  }
  CHECK(await_signal_after_go(s, e, go[1]) == 11);
  CHECK(wait_exit(child) == 0);
  ::close(go[0]);
  ::close(go[1]);
}

TEST_CASE("an exec'd program's signal wakes a waiting task", "[event_fd][process]") {
  const char* helper = std::getenv("SHMBUS_TEST_HELPER");
  REQUIRE(helper != nullptr);
  shmbus::scheduler s;
  shmbus::event_fd e;
  shmbus::unique_fd inherited = e.duplicate(/*cloexec=*/false);
  int go[2];
  REQUIRE(::pipe2(go, 0) == 0);  // the read end is inherited; the write end closed in the child
  ::fcntl(go[1], F_SETFD, FD_CLOEXEC);

  const std::string event_arg = std::to_string(inherited.get());
  const std::string go_arg = std::to_string(go[0]);
  char* const argv[] = {const_cast<char*>(helper), const_cast<char*>("signal-eventfd"),
                        const_cast<char*>(event_arg.c_str()), const_cast<char*>(go_arg.c_str()),
                        const_cast<char*>("23"), nullptr};
  pid_t child = -1;
  REQUIRE(::posix_spawn(&child, helper, nullptr, nullptr, argv, environ) == 0);
  inherited.reset();
  ::close(go[0]);

  CHECK(await_signal_after_go(s, e, go[1]) == 23);
  CHECK(wait_exit(child) == 0);
  ::close(go[1]);
}
