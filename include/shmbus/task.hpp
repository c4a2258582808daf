// task<T>: a lazy, move-only coroutine that produces one T (or throws).
//
// Protocol when a coroutine `parent` does `co_await child_task`:
//
//   1. await_suspend stores parent as the child's continuation, hands the
//      parent's stop_token down (unless the task was given its own), and
//      resumes the child on the current stack.
//   2. The child runs until it first suspends or finishes.
//   3. Whoever of the two gets there second resumes the other. The handshake
//      is one atomic flag in the child's promise:
//        - child finished first (synchronously): await_suspend sees the flag
//          already set and returns false, so the parent simply continues on
//          the same stack frame it was on. The stack does not grow, however
//          many ready tasks a loop awaits and whatever the optimisation level.
//        - parent suspended first: the child's final awaiter sees the flag
//          set and transfers to the parent by returning its handle
//          (symmetric transfer).
//
// Why not symmetric transfer alone: it relies on the compiler turning
// `return handle;` in await_suspend into a tail call. clang does at every
// level; g++ 12 does not at -O0 nor under AddressSanitizer, where a loop of
// a million awaits of ready tasks overflowed an 8 MiB stack. The flag makes
// the synchronous case stack-neutral everywhere; the asynchronous case (the
// child resumed later by the scheduler) keeps symmetric transfer.
//
// The flag is atomic because a child may finish on another scheduler's
// thread while the parent is still inside await_suspend.
#pragma once

#include <shmbus/detail/frame_cache.hpp>
#include <shmbus/error.hpp>

#include <atomic>
#include <cassert>
#include <concepts>
#include <coroutine>
#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

namespace shmbus {

template <class T = void>
class task;

namespace detail {

inline const std::stop_token no_stop_token{};

/// The stop token of the coroutine behind `h`, or an empty token when its
/// promise carries none (a foreign coroutine type). By reference: copying a
/// live token costs two atomic operations.
template <class Promise>
const std::stop_token& stop_token_of(std::coroutine_handle<Promise> h) noexcept {
  if constexpr (requires { { h.promise().stop_token() } -> std::same_as<const std::stop_token&>; }) {
    return h.promise().stop_token();
  } else {
    return no_stop_token;
  }
}

class task_promise_base {
 public:
  // Frames come from the heap, or from a frame_cache passed as the first
  // argument (see frame_cache.hpp).
  static void* operator new(std::size_t n) { return allocate_frame(n, nullptr); }
  template <class... Args>
  static void* operator new(std::size_t n, frame_cache& cache, Args&...) {
    return allocate_frame(n, &cache);
  }
  static void operator delete(void* frame) noexcept { free_frame(frame); }

  std::suspend_always initial_suspend() const noexcept { return {}; }

  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> self) noexcept {
      task_promise_base& p = self.promise();
      // acq_rel: publish our result to the parent, and see its continuation.
      if (p.m_started_waiting.exchange(true, std::memory_order_acq_rel) && p.m_continuation)
        return p.m_continuation;
      return std::noop_coroutine();
    }
    void await_resume() const noexcept {}
  };
  final_awaiter final_suspend() const noexcept { return {}; }

  /// The token that cancels this task's waits; inherited from the awaiter.
  const std::stop_token& stop_token() const noexcept { return m_stop_token; }

  void set_continuation(std::coroutine_handle<> c) noexcept { m_continuation = c; }
  void inherit_stop_token(const std::stop_token& t) noexcept {
    if (!m_stop_token_bound) m_stop_token = t;
  }
  void bind_stop_token(std::stop_token t) noexcept {
    m_stop_token = std::move(t);
    m_stop_token_bound = true;
  }
  /// Second half of the handshake above; true if the parent must suspend.
  bool try_suspend_parent() noexcept {
    // The common case, a child that already finished, needs only a load
    // (acquire: its result). Otherwise the exchange decides the race.
    if (m_started_waiting.load(std::memory_order_acquire)) return false;
    return !m_started_waiting.exchange(true, std::memory_order_acq_rel);
  }

 private:
  std::coroutine_handle<> m_continuation;
  std::stop_token m_stop_token;
  std::atomic<bool> m_started_waiting{false};
  bool m_stop_token_bound = false;
};

template <class T>
class task_promise final : public task_promise_base {
 public:
  task<T> get_return_object() noexcept;
  void unhandled_exception() noexcept { m_result.template emplace<2>(std::current_exception()); }

  template <class U>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    m_result.template emplace<1>(std::forward<U>(value));
  }

  T& result() & {
    rethrow_if_failed();
    return std::get<1>(m_result);
  }
  T&& result() && {
    rethrow_if_failed();
    return std::move(std::get<1>(m_result));
  }

 private:
  void rethrow_if_failed() {
    if (m_result.index() == 2) std::rethrow_exception(std::get<2>(m_result));
    assert(m_result.index() == 1 && "task result read before the task finished");
  }
  std::variant<std::monostate, T, std::exception_ptr> m_result;
};

template <>
class task_promise<void> final : public task_promise_base {
 public:
  task<void> get_return_object() noexcept;
  void unhandled_exception() noexcept { m_exception = std::current_exception(); }
  void return_void() const noexcept {}
  void result() const {
    if (m_exception) std::rethrow_exception(m_exception);
  }

 private:
  std::exception_ptr m_exception;
};

}  // namespace detail

/// A lazily started coroutine producing a T.
///
/// Nothing runs until the task is awaited (or handed to scheduler::run /
/// spawn). Exceptions thrown inside propagate to the awaiter. Destroying a
/// task that never ran frees its frame and runs no code of its body.
/// Move-only; not thread-safe (a task is owned by one awaiter).
template <class T>
class [[nodiscard]] task {
  static_assert(!std::is_reference_v<T>, "task<T&> is not supported: return a pointer or reference_wrapper");

 public:
  using promise_type = detail::task_promise<T>;
  using handle_type = std::coroutine_handle<promise_type>;
  using value_type = T;

  task() noexcept = default;
  explicit task(handle_type h) noexcept : m_handle(h) {}
  task(task&& other) noexcept : m_handle(std::exchange(other.m_handle, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      if (m_handle) m_handle.destroy();
      m_handle = std::exchange(other.m_handle, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() {
    if (m_handle) m_handle.destroy();
  }

  /// True when this task holds a coroutine (not moved-from or default).
  bool valid() const noexcept { return static_cast<bool>(m_handle); }
  /// True once the coroutine ran to completion (value or exception).
  bool done() const noexcept { return m_handle && m_handle.done(); }

  /// Makes this task (and what it awaits) use `token` instead of inheriting
  /// the awaiter's token.
  task&& with_stop_token(std::stop_token token) && noexcept {
    if (m_handle) m_handle.promise().bind_stop_token(std::move(token));
    return std::move(*this);
  }

  auto operator co_await() & noexcept { return awaiter<false>{m_handle}; }
  auto operator co_await() && noexcept { return awaiter<true>{m_handle}; }

  /// The coroutine handle, for schedulers and combinators.
  handle_type handle() const noexcept { return m_handle; }

 private:
  template <bool Move>
  struct awaiter {
    handle_type m_child;

    bool await_ready() const noexcept { return !m_child || m_child.done(); }

    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> parent) noexcept {
      auto& p = m_child.promise();
      p.set_continuation(parent);
      p.inherit_stop_token(detail::stop_token_of(parent));
      m_child.resume();
      return p.try_suspend_parent();
    }

    decltype(auto) await_resume() {
      if (!m_child) throw error(errc::broken_promise, "co_await", "task", "the task holds no coroutine");
      if constexpr (std::is_void_v<T>) {
        m_child.promise().result();
      } else if constexpr (Move) {
        return std::move(m_child.promise()).result();
      } else {
        return static_cast<T&>(m_child.promise().result());
      }
    }
  };

  handle_type m_handle;
};

namespace detail {

template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}

inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}

}  // namespace detail

/// Awaitable giving the current task's stop token without suspending:
/// `std::stop_token t = co_await shmbus::get_stop_token();`
struct get_stop_token {
  std::stop_token m_token;
  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) noexcept {
    m_token = detail::stop_token_of(h);
    return false;
  }
  std::stop_token await_resume() noexcept { return std::move(m_token); }
};

}  // namespace shmbus
