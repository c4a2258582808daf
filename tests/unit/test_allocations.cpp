// Awaiting io_uring requests allocates nothing once the scheduler is warm:
// this program replaces the global operator new with a counting one.
#include <shmbus/channel.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/when_all.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <stdexcept>

#include "core/counting_operator_new.hpp"

using shmbus::task;
using namespace std::chrono_literals;

TEST_CASE("awaiting timers, eventfds (bounded too) and pipe reads allocates nothing after warm-up", "[allocation]") {
  shmbus::scheduler s;
  shmbus::event_fd e;
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  std::stop_source stop;  // a live token: stop callbacks must not allocate either

  auto round = [&]() -> task<void> {
    co_await s.sleep_for(0ns);
    e.signal();
    co_await e.wait(s);
    // Bounded waits: one rung, one that runs out (the deadline timer fires
    // and cancels the read).
    e.signal();
    const auto rung = co_await e.wait_for(s, 1s);
    if (!rung) throw std::runtime_error("a rung bounded wait ran out");
    const auto ran_out = co_await e.wait_for(s, 0ns);
    if (ran_out) throw std::runtime_error("a bounded wait nobody rang returned a value");
    const std::array<std::byte, 8> out{};
    co_await shmbus::async_write(s, fds[1], out);
    std::array<std::byte, 8> in{};
    co_await shmbus::async_read(s, fds[0], in);
    co_await s.schedule();
  };
  auto loop = [&](int rounds) -> task<void> {
    for (int i = 0; i < rounds; ++i) co_await round();
  };
  auto measured = [&]() -> task<std::uint64_t> {
    co_await loop(1000);  // warm-up: ready queue and ring reach their size
    auto measured_loop = loop(10'000);
    const std::uint64_t before = shmbus::detail::heap_allocations_in_this_thread();
    co_await measured_loop;
    co_return shmbus::detail::heap_allocations_in_this_thread() - before;
  };
  // Each round awaits a task (one frame) and five requests. Frames come from
  // operator new; the requests must add nothing on top.
  const std::size_t extra = s.run(measured().with_stop_token(stop.get_token()));
  CHECK(extra == 10'000);  // exactly the 10,000 `round()` frames, zero per request
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("channel messages cost no allocation: ready, spinning or parked", "[allocation][channel]") {
  shmbus::scheduler s;
  auto ch = shmbus::channel::create_memfd("test-allocations", {}, shmbus::payload_type_of<std::uint64_t>());
  shmbus::channel_options small;
  small.capacity = 4096;  // the publisher is held back, and parks, often
  auto tight = shmbus::channel::create_memfd("test-allocations-tight", small, shmbus::payload_type_of<std::uint64_t>());
  shmbus::publisher<std::uint64_t> pub(ch), tight_pub(tight);
  shmbus::subscriber<std::uint64_t> parked(ch, {.spin = 0ns});      // pure event mode
  shmbus::subscriber<std::uint64_t> spinning(ch, {.spin = 1ms});
  shmbus::subscriber<std::uint64_t> slow(tight, {.spin = 0ns});

  // The producer yields after each message, so `parked` finds nothing and
  // sleeps on its doorbell every time; `slow` lets `tight` fill up, so the
  // producer is held back and sleeps on its own doorbell too.
  auto produce = [&](std::uint64_t n) -> task<void> {
    for (std::uint64_t i = 0; i < n; ++i) {
      co_await pub.publish(i);
      co_await tight_pub.publish(i);
      co_await s.schedule();
    }
  };
  auto consume = [&](shmbus::subscriber<std::uint64_t>& sub, std::uint64_t n, int every) -> task<std::uint64_t> {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto v = co_await sub.next();
      if (!v) throw std::runtime_error("next() resumed without a message");
      sum += *v;
      if (every > 1 && i % every == 0)
        for (int k = 0; k < every; ++k) co_await s.schedule();
    }
    co_return sum;
  };
  auto phase = [&](std::uint64_t n) -> task<void> {
    co_await shmbus::when_all(produce(n), consume(parked, n, 1), consume(spinning, n, 1), consume(slow, n, 200));
  };
  auto measured = [&]() -> task<std::uint64_t> {
    co_await phase(1000);  // warm-up: doorbells fetched, frames cached
    auto timed = phase(5000);
    const std::uint64_t before = shmbus::detail::heap_allocations_in_this_thread();
    co_await timed;
    co_return shmbus::detail::heap_allocations_in_this_thread() - before;
  };
  // The phase's own frames (when_all, four tasks) are allocated once; the
  // 5000 messages, their parks and wake-ups add nothing.
  const std::size_t extra = s.run(measured());
  CHECK(extra < 20);
}
