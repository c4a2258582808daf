#include <shmbus/scheduler.hpp>
#include <shmbus/timeout.hpp>
#include <shmbus/when_all.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using shmbus::task;

TEST_CASE("when_all of different types returns a tuple", "[when_all]") {
  shmbus::scheduler s;
  auto number = [&]() -> task<int> {
    co_await s.sleep_for(2ms);
    co_return 3;
  };
  auto text = [&]() -> task<std::string> {
    co_await s.schedule();
    co_return "three";
  };
  auto nothing = []() -> task<void> { co_return; };
  auto [n, t, v] = s.run(shmbus::when_all(number(), text(), nothing()));
  CHECK(n == 3);
  CHECK(t == "three");
  CHECK(v == std::monostate{});
}

TEST_CASE("when_all over ten thousand tasks", "[when_all]") {
  shmbus::scheduler s;
  auto child = [&](int v) -> task<int> {
    if (v % 2 == 0) co_await s.schedule();  // half finish later, half at once
    co_return v;
  };
  std::vector<task<int>> tasks;
  for (int i = 0; i < 10'000; ++i) tasks.push_back(child(i));
  auto results = s.run(shmbus::when_all(std::move(tasks)));
  REQUIRE(results.size() == 10'000);
  long long sum = 0;
  for (int i = 0; i < 10'000; ++i) {
    CHECK(results[static_cast<std::size_t>(i)] == i);
    sum += results[static_cast<std::size_t>(i)];
  }
  CHECK(sum == 49'995'000);

  int done = 0;
  auto void_child = [&]() -> task<void> {
    co_await s.sleep_for(0ns);
    ++done;
  };
  std::vector<task<void>> voids;
  for (int i = 0; i < 100; ++i) voids.push_back(void_child());
  s.run(shmbus::when_all(std::move(voids)));
  CHECK(done == 100);
  CHECK(s.run(shmbus::when_all(std::vector<task<int>>{})).empty());
}

TEST_CASE("when_all waits for every child, then rethrows the first failure", "[when_all]") {
  shmbus::scheduler s;
  int finished = 0;
  auto ok = [&]() -> task<int> {
    co_await s.sleep_for(3ms);
    ++finished;
    co_return 1;
  };
  auto bad = [&](const char* what) -> task<int> {
    co_await s.schedule();
    ++finished;
    throw std::runtime_error(what);
  };
  CHECK_THROWS_WITH(s.run(shmbus::when_all(ok(), bad("first"), bad("second"), ok())), "first");
  CHECK(finished == 4);
}

TEST_CASE("children of when_all inherit the awaiter's stop token", "[when_all][cancel]") {
  shmbus::scheduler s;
  std::stop_source stop;
  int cancelled = 0;
  auto sleeper = [&]() -> task<void> {
    try {
      co_await s.sleep_for(1h);
    } catch (const shmbus::error& e) {
      if (e.code() == shmbus::errc::cancelled) ++cancelled;
    }
  };
  auto stopper = [&]() -> task<void> {
    co_await s.sleep_for(1ms);
    stop.request_stop();
  };
  s.run(shmbus::when_all(sleeper(), sleeper(), stopper()).with_stop_token(stop.get_token()));
  CHECK(cancelled == 2);
}

TEST_CASE("with_timeout stops a slow task and reports timed_out", "[timeout]") {
  shmbus::scheduler s;
  auto slow = [&]() -> task<int> {
    co_await s.sleep_for(1h);
    co_return 1;
  };
  try {
    s.run(shmbus::with_timeout(s, 5ms, slow()));
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::timed_out);
  }
}

TEST_CASE("with_timeout returns the result of a task that finishes in time", "[timeout]") {
  shmbus::scheduler s;
  auto quick = [&]() -> task<int> {
    co_await s.sleep_for(1ms);
    co_return 9;
  };
  CHECK(s.run(shmbus::with_timeout(s, 1h, quick())) == 9);
  // The timer was cancelled, not left behind: nothing but the loop's own
  // wake-up read is in flight once the task is done.
  CHECK(s.in_flight() <= 2);
}

TEST_CASE("stopping the awaiter of with_timeout is a cancellation, not a timeout", "[timeout][cancel]") {
  shmbus::scheduler s;
  std::stop_source stop;
  auto slow = [&]() -> task<void> { co_await s.sleep_for(1h); };
  auto stopper = [&]() -> task<void> {
    co_await s.schedule();
    stop.request_stop();
  };
  s.spawn(stopper());
  try {
    s.run(shmbus::with_timeout(s, 1h, slow()).with_stop_token(stop.get_token()));
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::cancelled);
  }
}
