#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include <catch2/catch.hpp>

#include "child_process.hpp"
#include "counted.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using shmbus::task;
using shmbus::test::counted;
using shmbus::test::pipe_pair;

namespace {

bool is_cancelled(const shmbus::error& e) { return e.code() == shmbus::errc::cancelled; }

}  // namespace

TEST_CASE("run returns the task's value and rethrows its exception", "[scheduler]") {
  shmbus::scheduler s;
  CHECK(s.run([]() -> task<int> { co_return 5; }()) == 5);
  CHECK_THROWS_AS(s.run([]() -> task<void> {
                    throw std::logic_error("x");
                    co_return;
                  }()),
                  std::logic_error);
}

TEST_CASE("spawned tasks run while run() drives another", "[scheduler]") {
  shmbus::scheduler s;
  std::vector<int> order;
  auto worker = [&](int id) -> task<void> {
    co_await s.schedule();
    order.push_back(id);
  };
  for (int i = 0; i < 3; ++i) s.spawn(worker(i));
  CHECK(s.spawned_count() == 3);
  s.run([&]() -> task<void> {
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(order == std::vector<int>{0, 1, 2});
}

TEST_CASE("an exception escaping a spawned task reaches the handler", "[scheduler]") {
  shmbus::scheduler s;
  std::vector<std::string> seen;
  s.set_exception_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      seen.emplace_back(x.what());
    }
  });
  s.spawn([]() -> task<void> {
    throw std::runtime_error("lost?");
    co_return;
  }());
  s.run([&]() -> task<void> {
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(seen == std::vector<std::string>{"lost?"});
}

TEST_CASE("timers fire in deadline order", "[scheduler][timer]") {
  shmbus::scheduler s;
  std::vector<int> fired;
  const auto base = shmbus::scheduler::clock::now();
  auto sleeper = [&](int ms) -> task<void> {
    co_await s.sleep_until(base + std::chrono::milliseconds(ms));
    fired.push_back(ms);
  };
  for (int ms : {30, 10, 50, 20, 40, 0}) s.spawn(sleeper(ms));
  s.run([&]() -> task<void> {
    while (s.spawned_count() > 0) co_await s.sleep_for(1ms);
  }());
  CHECK(fired == std::vector<int>{0, 10, 20, 30, 40, 50});
}

TEST_CASE("a sleep lasts at least its duration, a zero sleep completes", "[scheduler][timer]") {
  shmbus::scheduler s;
  s.run([&]() -> task<void> {
    const auto t0 = shmbus::scheduler::clock::now();
    co_await s.sleep_for(5ms);
    CHECK(shmbus::scheduler::clock::now() - t0 >= 5ms);
    co_await s.sleep_for(0ns);
    co_await s.sleep_for(-1s);  // a past deadline completes at once
  }());
}

TEST_CASE("reads, writes and polls on a pipe", "[scheduler][io]") {
  shmbus::scheduler s;
  pipe_pair p;
  s.run([&]() -> task<void> {
    const std::string msg = "hello";
    auto wrote = co_await shmbus::async_write(s, p.write_end.get(), std::as_bytes(std::span(msg)));
    CHECK(wrote == msg.size());
    auto events = co_await shmbus::async_poll(s, p.read_end.get(), POLLIN);
    CHECK((events & POLLIN) != 0);
    std::array<std::byte, 16> buf{};
    auto n = co_await shmbus::async_read(s, p.read_end.get(), buf);
    CHECK(std::string(reinterpret_cast<const char*>(buf.data()), n) == msg);
  }());
}

TEST_CASE("a read of a closed descriptor throws an error naming it", "[scheduler][io]") {
  shmbus::scheduler s;
  try {
    s.run([&]() -> task<void> {
      std::array<std::byte, 4> buf{};
      co_await shmbus::async_read(s, 999'999, buf);
    }());
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == std::errc::bad_file_descriptor);
    CHECK(std::string(e.what()).find("fd 999999") != std::string::npos);
  }
}

TEST_CASE("fsync of a file through io_uring", "[scheduler][io]") {
  shmbus::scheduler s;
  char path[] = "/tmp/shmbus-fsync-XXXXXX";
  shmbus::unique_fd fd(::mkstemp(path));
  REQUIRE(fd);
  ::unlink(path);
  s.run([&]() -> task<void> {
    const std::string data(4096, 'x');
    co_await shmbus::async_write(s, fd.get(), std::as_bytes(std::span(data)), 0);
    co_await shmbus::async_fsync(s, fd.get(), shmbus::sync_kind::data, 0, 4096);
    co_await shmbus::async_fsync(s, fd.get(), shmbus::sync_kind::full);
  }());
  CHECK(::lseek(fd.get(), 0, SEEK_END) == 4096);
}

TEST_CASE("cancelling a pending read cancels it in the kernel", "[scheduler][cancel]") {
  shmbus::scheduler s;
  pipe_pair p;  // nothing is ever written
  std::stop_source stop;
  const std::size_t idle_in_flight = s.in_flight();
  bool cancelled = false;
  // Named: a coroutine lambda's captures live in the closure, which must
  // outlive the coroutine.
  auto reader = [&]() -> task<void> {
    std::array<std::byte, 8> buf{};
    try {
      co_await shmbus::async_read(s, p.read_end.get(), buf);
    } catch (const shmbus::error& e) {
      cancelled = is_cancelled(e);
    }
  };
  s.spawn(reader().with_stop_token(stop.get_token()));
  s.run([&]() -> task<void> {
    co_await s.schedule();  // the read is in flight now
    CHECK(s.in_flight() > idle_in_flight);
    stop.request_stop();
    while (s.spawned_count() > 0) co_await s.schedule();
  }());
  CHECK(cancelled);
}

TEST_CASE("cancelling a sleep, from this thread and from another one", "[scheduler][cancel]") {
  shmbus::scheduler s;
  std::stop_source stop;
  auto sleeper = [&]() -> task<bool> {
    try {
      co_await s.sleep_for(1h);
      co_return false;
    } catch (const shmbus::error& e) {
      co_return is_cancelled(e);
    }
  };
  SECTION("same thread") {
    auto stopper = [&]() -> task<void> {
      co_await s.schedule();
      stop.request_stop();
    };
    s.spawn(stopper());
    CHECK(s.run(sleeper().with_stop_token(stop.get_token())));
  }
  SECTION("another thread") {
    std::thread canceller;
    auto body = [&]() -> task<bool> {
      canceller = std::thread([&] { stop.request_stop(); });
      co_return co_await sleeper();
    };
    CHECK(s.run(body().with_stop_token(stop.get_token())));
    canceller.join();
  }
}

TEST_CASE("a due timer is a yield that still honours its stop token", "[scheduler][timer]") {
  std::vector<int> order;  // declared first: outlives the scheduler's shutdown
  shmbus::scheduler s;
  std::stop_source stop;
  auto later = [&]() -> task<void> {
    order.push_back(2);
    co_return;
  };
  auto body = [&]() -> task<void> {
    s.spawn(later());
    co_await s.sleep_for(0ns);  // queued behind `later`, which was spawned first
    order.push_back(3);
    stop.request_stop();
    co_await s.sleep_until(shmbus::scheduler::clock::now() - 1s);
  };
  try {
    s.run(body().with_stop_token(stop.get_token()));
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(is_cancelled(e));
  }
  CHECK(order == std::vector<int>{2, 3});
}

TEST_CASE("a wait whose token is already stopped throws without submitting", "[scheduler][cancel]") {
  shmbus::scheduler s;
  std::stop_source stop;
  stop.request_stop();
  const std::size_t before = s.in_flight();
  auto body = [&]() -> task<void> { co_await s.sleep_for(1h); };
  try {
    s.run(body().with_stop_token(stop.get_token()));
    FAIL("no exception");
  } catch (const shmbus::error& e) {
    CHECK(is_cancelled(e));
  }
  CHECK(s.in_flight() <= before + 1);  // at most the scheduler's own wake-up read
}

TEST_CASE("post() from another thread runs on the scheduler's thread", "[scheduler][thread]") {
  shmbus::scheduler s;
  shmbus::event_fd done;
  std::thread::id ran_on;
  std::thread poster([&] {
    s.post([&] {
      ran_on = std::this_thread::get_id();
      done.signal();
    });
  });
  s.run([&]() -> task<void> { co_await done.wait(s); }());
  poster.join();
  CHECK(ran_on == std::this_thread::get_id());
}

TEST_CASE("schedule() hops a coroutine from another thread onto the scheduler", "[scheduler][thread]") {
  shmbus::scheduler s;
  shmbus::event_fd done;
  std::thread::id resumed_on;
  auto hop = [&]() -> task<void> {
    co_await s.schedule();
    resumed_on = std::this_thread::get_id();
    done.signal();
  };
  auto t = hop();
  std::thread other([&] { t.handle().resume(); });  // starts on the other thread
  s.run([&]() -> task<void> { co_await done.wait(s); }());
  other.join();
  CHECK(resumed_on == std::this_thread::get_id());
}

TEST_CASE("more waits than the completion queue holds are parked, not lost", "[scheduler]") {
  shmbus::scheduler s(shmbus::scheduler::options{.entries = 4});
  int finished = 0;
  auto sleeper = [&](int us) -> task<void> {
    co_await s.sleep_for(std::chrono::microseconds(us));
    ++finished;
  };
  for (int i = 0; i < 500; ++i) s.spawn(sleeper(i % 7));
  s.run([&]() -> task<void> {
    while (s.spawned_count() > 0) co_await s.sleep_for(1ms);
  }());
  CHECK(finished == 500);
}

TEST_CASE("destroying the scheduler stops spawned tasks and frees their frames", "[scheduler][shutdown]") {
  counted::reset();
  pipe_pair p;
  int unwound = 0;
  {
    shmbus::scheduler s;
    auto reader = [&](counted) -> task<void> {
      std::array<std::byte, 8> buf{};
      try {
        co_await shmbus::async_read(s, p.read_end.get(), buf);
      } catch (const shmbus::error& e) {
        if (is_cancelled(e)) ++unwound;
        throw;
      }
    };
    auto sleeper = [&](counted) -> task<void> { co_await s.sleep_for(1h); };
    // One with no stop token at all: only the wholesale cancel reaches it.
    s.spawn(reader(counted{}));
    s.spawn(sleeper(counted{}).with_stop_token({}));
    s.spawn(reader(counted{}).with_stop_token({}));
    // And one that never started.
    s.spawn(sleeper(counted{}));
    s.run([&]() -> task<void> { co_await s.schedule(); }());
    CHECK(counted::alive() >= 4);
  }
  CHECK(counted::alive() == 0);
  CHECK(unwound == 2);
}

TEST_CASE("run() refuses the wrong thread and re-entry", "[scheduler]") {
  shmbus::scheduler s;
  SECTION("re-entry") {
    auto body = [&]() -> task<void> {
      CHECK_THROWS_AS(s.run([]() -> task<void> { co_return; }()), shmbus::error);
      co_return;
    };
    s.run(body());
  }
  SECTION("another thread") {
    bool threw = false;
    std::thread([&] {
      try {
        s.run([]() -> task<void> { co_return; }());
      } catch (const shmbus::error&) {
        threw = true;
      }
    }).join();
    CHECK(threw);
  }
}
