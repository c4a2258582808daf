// with_deadline / with_timeout: run a task, cancel it if it is not done in time.
//
// The body runs with its own stop token, linked to the awaiter's: stopping
// the awaiter stops the body, and so does the timer. A body that ends with
// errc::cancelled after the timer fired is reported as errc::timed_out; a
// body that finished in time returns its result even if the timer fired in
// the same turn. Cancellation is cooperative: the body ends as soon as the
// wait it is in observes its token (every shmbus wait does).
#pragma once

#include <shmbus/error.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>
#include <shmbus/when_all.hpp>

#include <chrono>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace shmbus {
namespace detail {

/// Forwards a stop request from one token to a source.
struct stop_forwarder {
  std::stop_source* m_target;
  void operator()() const noexcept { m_target->request_stop(); }
};

inline task<void> deadline_timer(scheduler& s, scheduler::clock::time_point deadline, std::stop_source& body_stop,
                                 bool& fired) {
  try {
    co_await s.sleep_until(deadline);
    fired = true;
    body_stop.request_stop();
  } catch (const error& e) {
    if (e.code() != errc::cancelled) throw;  // the body finished first
  }
}

template <class T>
task<T> run_then_stop(task<T> body, std::stop_source& timer_stop) {
  struct stop_on_exit {
    std::stop_source& m_source;
    ~stop_on_exit() { m_source.request_stop(); }
  } guard{timer_stop};
  co_return co_await std::move(body);
}

}  // namespace detail

/// Awaits `body`; if it has not finished by `deadline`, stops it and throws
/// shmbus::error(errc::timed_out). May suspend.
template <class T>
[[nodiscard]] task<T> with_deadline(scheduler& s, scheduler::clock::time_point deadline, task<T> body) {
  std::stop_source body_stop;
  std::stop_source timer_stop;
  const std::stop_token outer = co_await get_stop_token();
  std::stop_callback<detail::stop_forwarder> forward_to_body(outer, detail::stop_forwarder{&body_stop});
  std::stop_callback<detail::stop_forwarder> forward_to_timer(outer, detail::stop_forwarder{&timer_stop});
  bool fired = false;

  auto guarded = detail::run_then_stop(std::move(body).with_stop_token(body_stop.get_token()), timer_stop);
  auto timer = detail::deadline_timer(s, deadline, body_stop, fired).with_stop_token(timer_stop.get_token());
  try {
    auto results = co_await when_all(std::move(guarded), std::move(timer));
    if constexpr (!std::is_void_v<T>) co_return std::move(std::get<0>(results));
  } catch (const error& e) {
    if (fired && e.code() == errc::cancelled && !outer.stop_requested())
      throw error(errc::timed_out, "await", "deadline", "the task did not finish in time");
    throw;
  }
}

/// Awaits `body` for at most `limit` (see with_deadline). May suspend.
template <class T>
[[nodiscard]] task<T> with_timeout(scheduler& s, scheduler::clock::duration limit, task<T> body) {
  return with_deadline(s, scheduler::clock::now() + limit, std::move(body));
}

}  // namespace shmbus
