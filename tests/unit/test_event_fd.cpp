#include <shmbus/event_fd.hpp>
#include <shmbus/scheduler.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <stop_token>
#include <string>

using shmbus::task;

namespace {
bool scheduler_is_current(const shmbus::scheduler& s) { return shmbus::scheduler::current() == &s; }
}  // namespace

TEST_CASE("signal then wait yields the accumulated count", "[event_fd]") {
  shmbus::scheduler s;
  shmbus::event_fd e;
  e.signal(2);
  e.signal(3);
  CHECK(s.run([&]() -> task<std::uint64_t> { co_return co_await e.wait(s); }()) == 5);
  CHECK_FALSE(e.try_consume().has_value());
  e.signal();
  CHECK(e.try_consume() == std::optional<std::uint64_t>{1});
}

TEST_CASE("a waiting task is woken by a signal from another task", "[event_fd]") {
  shmbus::scheduler s;
  shmbus::event_fd e;
  auto signaller = [&]() -> task<void> {
    co_await s.schedule();  // runs after the waiter has suspended
    e.signal(7);
  };
  s.spawn(signaller());
  CHECK(s.run([&]() -> task<std::uint64_t> { co_return co_await e.wait(s); }()) == 7);
}

TEST_CASE("adopt accepts an eventfd and refuses anything else", "[event_fd]") {
  shmbus::event_fd original(4);
  auto copy = shmbus::event_fd::adopt(original.duplicate());
  CHECK(copy.try_consume() == std::optional<std::uint64_t>{4});

  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  ::close(fds[1]);
  const int pipe_fd = fds[0];
  try {
    (void)shmbus::event_fd::adopt(shmbus::unique_fd(pipe_fd));
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::not_supported);
    CHECK(std::string(e.what()).find("eventfd " + std::to_string(pipe_fd)) != std::string::npos);
  }
  CHECK_THROWS_AS(shmbus::event_fd::adopt(shmbus::unique_fd()), shmbus::error);
  CHECK_THROWS_AS(shmbus::event_fd(1ull << 40), shmbus::error);
}

TEST_CASE("wait_for resumes with the count, or with nothing when the time runs out", "[event_fd]") {
  using namespace std::chrono_literals;
  shmbus::scheduler s;
  shmbus::event_fd e;
  auto body = [&]() -> task<void> {
    CHECK(scheduler_is_current(s));
    const auto nothing = co_await e.wait_for(s, 1ms);
    CHECK_FALSE(nothing.has_value());
    e.signal(3);
    const auto three = co_await e.wait_for(s, 10s);
    REQUIRE(three.has_value());
    CHECK(*three == 3);
  };
  CHECK(shmbus::scheduler::current() == nullptr);
  s.run(body());
  CHECK(shmbus::scheduler::current() == nullptr);
}

TEST_CASE("wait_for is cancelled by its stop token, not mistaken for a timeout", "[event_fd]") {
  using namespace std::chrono_literals;
  shmbus::scheduler s;
  shmbus::event_fd e;
  std::stop_source stop;
  auto waiter = [&]() -> task<void> { (void)co_await e.wait_for(s, 10s); };
  auto stopper = [&]() -> task<void> {
    co_await s.schedule();
    stop.request_stop();
  };
  s.spawn(stopper());
  try {
    s.run(waiter().with_stop_token(stop.get_token()));
    FAIL("the wait was not cancelled");
  } catch (const shmbus::error& err) {
    CHECK(err.code() == shmbus::errc::cancelled);
  }
  auto already = [&]() -> task<void> { (void)co_await e.wait_for(s, 10s); };
  CHECK_THROWS_AS(s.run(already().with_stop_token(stop.get_token())), shmbus::error);
}
