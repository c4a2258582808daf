#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include <catch2/catch.hpp>

#include "counted.hpp"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

using shmbus::task;
using shmbus::test::counted;

namespace {

task<int> answer() { co_return 42; }
task<void> nothing() { co_return; }

// Address of a local in the innermost frame, to observe stack depth.
task<std::uintptr_t> stack_probe() {
  volatile char marker = 0;
  co_return reinterpret_cast<std::uintptr_t>(&marker);
}

}  // namespace

TEST_CASE("a task does not start until it is awaited", "[task]") {
  bool started = false;
  auto body = [&]() -> task<int> {
    started = true;
    co_return 1;
  };
  shmbus::scheduler s;
  auto t = body();
  CHECK_FALSE(started);
  CHECK(s.run(std::move(t)) == 1);
  CHECK(started);
}

TEST_CASE("tasks return values, move-only ones included", "[task]") {
  shmbus::scheduler s;
  CHECK(s.run(answer()) == 42);
  auto make = []() -> task<std::unique_ptr<std::string>> { co_return std::make_unique<std::string>("hi"); };
  auto p = s.run(make());
  REQUIRE(p);
  CHECK(*p == "hi");
  s.run(nothing());
}

TEST_CASE("an awaited lvalue task yields a reference to its result", "[task]") {
  shmbus::scheduler s;
  auto outer = []() -> task<std::string> {
    auto inner = []() -> task<std::string> { co_return "kept"; }();
    std::string& ref = co_await inner;
    ref += "!";
    co_return co_await inner;  // the same, modified, result
  };
  CHECK(s.run(outer()) == "kept!");
}

TEST_CASE("exceptions cross three levels of co_await", "[task]") {
  shmbus::scheduler s;
  auto level3 = []() -> task<int> {
    throw std::runtime_error("deep");
    co_return 0;
  };
  auto level2 = [&]() -> task<int> { co_return co_await level3() + 1; };
  auto level1 = [&]() -> task<int> { co_return co_await level2() + 1; };
  CHECK_THROWS_WITH(s.run(level1()), "deep");
}

TEST_CASE("awaiting an empty task throws broken_promise", "[task]") {
  shmbus::scheduler s;
  auto body = []() -> task<int> {
    task<int> empty;
    co_return co_await empty;
  };
  try {
    s.run(body());
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::broken_promise);
  }
}

TEST_CASE("destroying a task that never ran frees its frame and what it holds", "[task]") {
  counted::reset();
  {
    auto body = [](counted c) -> task<void> {
      (void)c;
      co_return;
    };
    auto t = body(counted{});
    CHECK(counted::alive() == 1);  // the parameter copy lives in the frame
  }
  CHECK(counted::alive() == 0);
}

TEST_CASE("a million sequential awaits of ready tasks do not grow the stack", "[task]") {
  shmbus::scheduler s;
  auto loop = []() -> task<std::uintptr_t> {
    const std::uintptr_t first = co_await stack_probe();
    std::uintptr_t deepest = first;
    for (int i = 0; i < 1'000'000; ++i) {
      const std::uintptr_t here = co_await stack_probe();
      if (here < deepest) deepest = here;  // the stack grows downwards
      co_await nothing();
    }
    co_return first - deepest;
  };
  CHECK(s.run(loop()) == 0);
}

TEST_CASE("a task resumed later by the scheduler resumes its awaiter", "[task]") {
  shmbus::scheduler s;
  auto child = [&]() -> task<int> {
    co_await s.schedule();  // suspends for real: the parent must wait
    co_return 7;
  };
  auto parent = [&]() -> task<int> {
    int sum = 0;
    for (int i = 0; i < 1000; ++i) sum += co_await child();
    co_return sum;
  };
  CHECK(s.run(parent()) == 7000);
}
