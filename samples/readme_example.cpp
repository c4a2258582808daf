// The example of the README, built so that it keeps compiling.
#include <shmbus/shmbus.hpp>

#include <fmt/format.h>

using namespace std::chrono_literals;

shmbus::task<int> slow_answer(shmbus::scheduler& s) {
  co_await s.sleep_for(10ms);  // an io_uring timeout
  co_return 42;
}

int main() {
  shmbus::scheduler s;    // one io_uring, this thread
  shmbus::event_fd bell;  // another process may ring it
  auto ringer = [&]() -> shmbus::task<void> {
    co_await s.sleep_for(1ms);
    bell.signal();
  };
  s.spawn(ringer());
  auto main_task = [&]() -> shmbus::task<void> {
    co_await bell.wait(s);  // sleeps until signalled
    auto [a, b] = co_await shmbus::when_all(slow_answer(s), slow_answer(s));
    fmt::print("{} {}\n", a, b);
    co_await shmbus::with_timeout(s, 5ms, slow_answer(s));  // throws errc::timed_out
  };
  try {
    s.run(main_task());
  } catch (const shmbus::error& e) {
    fmt::print("{}\n", e.what());
  }
}
