// when_all: await several tasks at once; resumes when every one finished.
//
// Children start one after another on the awaiting coroutine's thread and
// run concurrently wherever they suspend. A latch counts them down; the last
// one to finish resumes the awaiter (symmetric transfer). Every child runs to
// completion even if an earlier one failed: the first exception, in argument
// order, is rethrown once all are done. Children inherit the awaiter's stop
// token. One frame is allocated per child.
#pragma once

#include <shmbus/task.hpp>

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace shmbus {
namespace detail {

struct when_all_latch {
  explicit when_all_latch(std::size_t children) noexcept : m_remaining(children + 1) {}
  /// true: the awaiter must suspend (some child is still running).
  bool start_waiting(std::coroutine_handle<> awaiter) noexcept {
    m_awaiter = awaiter;
    return m_remaining.fetch_sub(1, std::memory_order_acq_rel) > 1;
  }
  /// Called by each finishing child; returns whom to resume.
  std::coroutine_handle<> child_done() noexcept {
    if (m_remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) return m_awaiter;
    return std::noop_coroutine();
  }
  std::atomic<std::size_t> m_remaining;
  std::coroutine_handle<> m_awaiter;
};

/// Result of one child, void mapped to std::monostate.
template <class T>
using when_all_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
class when_all_child {
 public:
  struct promise_type {
    when_all_latch* m_latch = nullptr;
    std::stop_token m_stop_token;
    std::variant<std::monostate, when_all_value_t<T>, std::exception_ptr> m_result;

    when_all_child get_return_object() noexcept {
      return when_all_child{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) const noexcept {
        return h.promise().m_latch->child_done();
      }
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void unhandled_exception() noexcept { m_result.template emplace<2>(std::current_exception()); }
    template <class U>
    void return_value(U&& v) {
      m_result.template emplace<1>(std::forward<U>(v));
    }
    const std::stop_token& stop_token() const noexcept { return m_stop_token; }
  };

  explicit when_all_child(std::coroutine_handle<promise_type> h) noexcept : m_handle(h) {}
  when_all_child(when_all_child&& o) noexcept : m_handle(std::exchange(o.m_handle, {})) {}
  when_all_child(const when_all_child&) = delete;
  when_all_child& operator=(when_all_child&&) = delete;
  ~when_all_child() {
    if (m_handle) m_handle.destroy();
  }

  void start(when_all_latch& latch, const std::stop_token& token) noexcept {
    m_handle.promise().m_latch = &latch;
    m_handle.promise().m_stop_token = token;
    m_handle.resume();
  }
  void rethrow_if_failed() const {
    if (m_handle.promise().m_result.index() == 2) std::rethrow_exception(std::get<2>(m_handle.promise().m_result));
  }
  when_all_value_t<T> take() { return std::get<1>(std::move(m_handle.promise().m_result)); }

 private:
  std::coroutine_handle<promise_type> m_handle;
};

template <class T>
when_all_child<T> make_when_all_child(task<T> t) {
  if constexpr (std::is_void_v<T>) {
    co_await std::move(t);
    co_return std::monostate{};
  } else {
    co_return co_await std::move(t);
  }
}

/// Starts every child, then suspends until the latch opens.
template <class Children>
struct when_all_awaiter {
  // A constructor, not an aggregate with a member initialiser: g++ 12 fails
  // on the latter inside a coroutine (internal compiler error).
  when_all_awaiter(Children& children, std::size_t count) noexcept
      : m_children(children), m_count(count), m_latch(count) {}

  Children& m_children;
  std::size_t m_count;
  when_all_latch m_latch;

  bool await_ready() const noexcept { return m_count == 0; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiter) noexcept {
    const std::stop_token token = stop_token_of(awaiter);
    for_each_child([&](auto& child) { child.start(m_latch, token); });
    return m_latch.start_waiting(awaiter);
  }
  void await_resume() const noexcept {}

  template <class F>
  void for_each_child(F&& f) {
    if constexpr (requires { m_children.begin(); }) {
      for (auto& c : m_children) f(c);
    } else {
      std::apply([&](auto&... c) { (f(c), ...); }, m_children);
    }
  }
};

}  // namespace detail

/// Awaits all `tasks`; returns a tuple of their results (void as
/// std::monostate). May suspend.
template <class... T>
[[nodiscard]] task<std::tuple<detail::when_all_value_t<T>...>> when_all(task<T>... tasks) {
  std::tuple<detail::when_all_child<T>...> children{detail::make_when_all_child(std::move(tasks))...};
  co_await detail::when_all_awaiter<decltype(children)>(children, sizeof...(T));
  std::apply([](auto&... c) { (c.rethrow_if_failed(), ...); }, children);
  co_return std::apply([](auto&... c) { return std::tuple<detail::when_all_value_t<T>...>{c.take()...}; }, children);
}

/// Awaits every task of a range; returns their results in order (nothing for
/// task<void>). May suspend.
template <class T>
[[nodiscard]] task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>> when_all(std::vector<task<T>> tasks) {
  std::vector<detail::when_all_child<T>> children;
  children.reserve(tasks.size());
  for (auto& t : tasks) children.push_back(detail::make_when_all_child(std::move(t)));
  co_await detail::when_all_awaiter<decltype(children)>(children, children.size());
  for (auto& c : children) c.rethrow_if_failed();
  if constexpr (!std::is_void_v<T>) {
    std::vector<T> results;
    results.reserve(children.size());
    for (auto& c : children) results.push_back(c.take());
    co_return results;
  }
}

}  // namespace shmbus
