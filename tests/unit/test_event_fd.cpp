#include <shmbus/event_fd.hpp>
#include <shmbus/scheduler.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <optional>
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

TEST_CASE("bounded waits share one kernel timer, however many there are", "[event_fd][deadline]") {
  using namespace std::chrono_literals;
  shmbus::scheduler s;
  std::array<shmbus::event_fd, 8> bells;
  int rung = 0;
  auto waiter = [&](const shmbus::event_fd& e) -> task<void> {
    // Awaited in a statement of its own (docs/SCHEDULER.md, g++ 12).
    const auto value = co_await e.wait_for(s, 1h);
    if (value.has_value()) ++rung;
  };
  std::size_t before = 0;
  std::size_t during = 0;
  s.run([&]() -> task<void> {
    co_await s.schedule();
    before = s.in_flight();
    for (const auto& e : bells) s.spawn(waiter(e));
    co_await s.schedule();  // every wait has been submitted
    during = s.in_flight();
    for (const auto& e : bells) e.signal();
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(rung == 8);
  // Eight reads and one timer; a timer per wait would make it sixteen.
  CHECK(during == before + bells.size() + 1);
}

TEST_CASE("a bounded wait ends at its deadline when a later one armed the timer first", "[event_fd][deadline]") {
  using namespace std::chrono_literals;
  shmbus::scheduler s;
  shmbus::event_fd slow;
  shmbus::event_fd quick;
  std::optional<std::uint64_t> slow_result;
  auto slow_waiter = [&]() -> task<void> { slow_result = co_await slow.wait_for(s, 1h); };
  s.spawn(slow_waiter());
  s.run([&]() -> task<void> {
    co_await s.schedule();  // the hour-long wait has armed the timer
    // Had the timer stayed set for the hour, this would not return.
    const auto nothing = co_await quick.wait_for(s, 1ms);
    CHECK_FALSE(nothing.has_value());
    const auto again = co_await quick.wait_for(s, 2ms);  // the timer is re-armed after firing
    CHECK_FALSE(again.has_value());
    slow.signal(4);
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(slow_result == std::optional<std::uint64_t>{4});
}

TEST_CASE("bounded waits parked for room in the completion queue still end at their deadline", "[event_fd][deadline]") {
  using namespace std::chrono_literals;
  // One SQ entry: a CQ of 4. The scheduler's wake-up read and the first two
  // waits fill what requests may use; the later waits, with earlier
  // deadlines, are parked in user space behind them. The timer must be
  // re-armed for those while nothing else can be issued, and the waits in
  // flight end only when the timer expires them.
  shmbus::scheduler s(shmbus::scheduler::options{.entries = 1});
  std::array<shmbus::event_fd, 6> bells;
  int timed_out = 0;
  auto waiter = [&](const shmbus::event_fd& e, std::chrono::milliseconds limit) -> task<void> {
    const auto value = co_await e.wait_for(s, limit);
    if (!value.has_value()) ++timed_out;
  };
  s.run([&]() -> task<void> {
    co_await s.schedule();  // the wake-up read is in flight
    for (std::size_t i = 0; i < bells.size(); ++i) s.spawn(waiter(bells[i], i < 2 ? 50ms : 1ms));
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(timed_out == 6);
}

TEST_CASE("bounded waits that race their deadlines lose no signal", "[event_fd][deadline]") {
  using namespace std::chrono_literals;
  // Waits with deadlines from 0 to 200 us, on bells rung at random moments:
  // reads complete just before, at and after their deadlines, and deadlines
  // arrive out of order (re-arming the timer). A read the kernel completed
  // must report its count even if its deadline's cancel went out; a
  // cancelled one must leave the count in the eventfd.
  shmbus::scheduler s;
  constexpr int bell_count = 8;
  constexpr std::uint64_t signals = 4000;
  std::array<shmbus::event_fd, bell_count> bells;
  std::uint64_t consumed = 0;
  std::uint64_t timed_out = 0;
  bool rung_all = false;
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next_random = [&](std::uint64_t bound) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state % bound;
  };
  auto waiter = [&](const shmbus::event_fd& e) -> task<void> {
    while (!rung_all) {
      const auto value = co_await e.wait_for(s, std::chrono::microseconds(next_random(200)));
      if (value) consumed += *value;
      else ++timed_out;
    }
  };
  auto ringer = [&]() -> task<void> {
    for (std::uint64_t i = 0; i < signals; ++i) {
      bells[next_random(bell_count)].signal();
      if (next_random(4) == 0) co_await s.sleep_for(std::chrono::microseconds(next_random(100)));
      else co_await s.schedule();
    }
    rung_all = true;
  };
  for (const auto& e : bells) s.spawn(waiter(e));
  s.spawn(ringer());
  s.run([&]() -> task<void> {
    while (s.spawned_count() > 0) co_await s.sleep_for(1ms);
  }());
  std::uint64_t left = 0;
  for (const auto& e : bells)
    if (const auto v = e.try_consume()) left += *v;
  // A count lost between a read and its deadline would be missing here.
  CHECK(consumed + left == signals);
  CHECK(consumed > 0);
  CHECK(timed_out > 0);  // the deadlines did fire
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
