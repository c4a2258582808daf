#include "notify/process_doorbells.hpp"

#include <shmbus/error.hpp>
#include <shmbus/scheduler.hpp>

#include "notify/process_instance.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <exception>
#include <future>
#include <mutex>
#include <stop_token>
#include <thread>

namespace shmbus::detail {

namespace {

/// Starts `body` on a thread that blocks every signal (the new thread
/// inherits the mask it is created with): signals meant for the
/// application (a signalfd for SIGTERM, a handler) must never land on a
/// thread it does not know about.
template <class Body>
std::thread start_thread_without_signals(Body body) {
  sigset_t all, previous;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous);
  struct restore_mask {
    sigset_t* m_mask;
    ~restore_mask() { ::pthread_sigmask(SIG_SETMASK, m_mask, nullptr); }
  } restore{&previous};
  return std::thread(std::move(body));
}

}  // namespace

struct process_doorbells::state {
  std::int32_t pid = static_cast<std::int32_t>(::getpid());
  doorbell_server server;  // binds now: early clients wait in the backlog
  std::atomic<std::uint64_t> next_id{1};
  std::stop_source stop;
  std::thread thread;

  state() {
    std::promise<void> started;
    std::future<void> ready = started.get_future();
    thread = start_thread_without_signals([this, &started] {
      std::unique_ptr<scheduler> loop;
      try {
        loop = std::make_unique<scheduler>();
      } catch (...) {
        started.set_exception(std::current_exception());
        return;
      }
      started.set_value();
      try {
        loop->run(server.serve(*loop).with_stop_token(stop.get_token()));
      } catch (const std::exception& e) {
        // Nothing to hand it to: subscribers of this process will not be
        // woken by other processes, and their bounded waits still work.
        std::fprintf(stderr, "shmbus: doorbell server of pid %d stopped: %s\n", pid, e.what());
      }
    });
    try {
      ready.get();
    } catch (...) {
      thread.join();
      throw;
    }
  }

  ~state() {
    stop.request_stop();
    thread.join();
  }
};

process_doorbells process_doorbells::instance() {
  return process_doorbells(&this_process_instance<state>());  // states live until exit
}

const process_identity& process_doorbells::identity() const noexcept { return m_state->server.identity(); }

std::uint64_t process_doorbells::add(const event_fd& bell) {
  const std::uint64_t id = m_state->next_id.fetch_add(1, std::memory_order_relaxed);
  m_state->server.add(id, bell);
  return id;
}

void process_doorbells::remove(std::uint64_t id) noexcept { m_state->server.remove(id); }

// ---- fetching in the background ------------------------------------------------

/// One fetch, shared by the cache entry that asked for it and the fetcher
/// thread; either may let go first. Guarded by its mutex.
struct doorbell_fetch {
  enum class outcome : std::uint8_t { waiting, fetched, failed };
  process_identity owner;
  std::uint64_t id = 0;
  std::chrono::milliseconds timeout{};
  std::mutex mutex;
  outcome result = outcome::waiting;
  std::optional<event_fd> bell;  // fetched, until the cache takes it

  /// The fetcher's last word on it: rings a bell it got once (the ring
  /// that asked for it, and any asked for while it was on its way).
  void settle(std::optional<event_fd> got) noexcept {
    std::lock_guard lock(mutex);
    if (got) {
      (void)got->try_signal();
      bell = std::move(got);
      result = outcome::fetched;
    } else {
      result = outcome::failed;
    }
  }
};

namespace {

/// This process's fetcher: one thread with every queued fetch under way at
/// once. It sends each request as it arrives (doorbell_request), then
/// polls all their sockets and its wake-up eventfd, so that an owner that
/// does not answer holds up only its own fetch, until its deadline.
struct fetcher_state {
  std::int32_t pid = static_cast<std::int32_t>(::getpid());
  std::mutex mutex;
  std::deque<std::shared_ptr<doorbell_fetch>> queue;
  bool stopping = false;
  event_fd wake;  // a push or the stop
  std::thread thread;

  fetcher_state() : thread(start_thread_without_signals([this] { run(); })) {}
  /// At exit: fetches under way are dropped (their handles are going too).
  ~fetcher_state() {
    {
      std::lock_guard lock(mutex);
      stopping = true;
    }
    (void)wake.try_signal();
    thread.join();
  }

  void push(std::shared_ptr<doorbell_fetch> f) {
    {
      std::lock_guard lock(mutex);
      queue.push_back(std::move(f));
    }
    (void)wake.try_signal();
  }

  void run() {
    struct under_way {
      std::shared_ptr<doorbell_fetch> fetch;
      doorbell_request request;
    };
    std::vector<under_way> pending;
    std::vector<pollfd> polled;
    for (;;) {
      std::deque<std::shared_ptr<doorbell_fetch>> arrived;
      {
        std::lock_guard lock(mutex);
        if (stopping) return;
        arrived.swap(queue);
      }
      for (std::shared_ptr<doorbell_fetch>& f : arrived) {
        try {
          pending.push_back({f, doorbell_request(f->owner, f->id, f->timeout)});
        } catch (const std::exception&) {
          f->settle(std::nullopt);  // dead owner, nobody serving, no memory: the cache remembers it
        }
      }

      polled.assign(1, pollfd{wake.native_handle(), POLLIN, 0});
      auto first_deadline = std::chrono::steady_clock::time_point::max();
      bool backlog_full = false;  // a request not sent yet: nothing to poll, try again soon
      for (const under_way& u : pending) {
        polled.push_back(pollfd{u.request.native_handle(), POLLIN, 0});  // -1: ignored by poll
        first_deadline = std::min(first_deadline, u.request.deadline());
        backlog_full = backlog_full || u.request.native_handle() < 0;
      }
      int wait_ms = -1;
      if (!pending.empty()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(first_deadline - std::chrono::steady_clock::now());
        wait_ms = static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(left.count(), 0, 60'000));
        if (backlog_full) wait_ms = std::min(wait_ms, doorbell_request::backlog_retry);
      }
      if (::poll(polled.data(), polled.size(), wait_ms) < 0) continue;  // EINTR, or ENOMEM: try again
      if (polled[0].revents != 0) (void)wake.try_consume();

      const auto now = std::chrono::steady_clock::now();
      std::size_t kept = 0;
      for (std::size_t i = 0; i < pending.size(); ++i) {
        under_way& u = pending[i];
        if (polled[i + 1].revents != 0 || polled[i + 1].fd < 0 || now >= u.request.deadline()) {
          std::optional<event_fd> got;
          bool done = true;
          try {
            got = u.request.try_receive();
            done = got.has_value();
          } catch (const std::exception&) {
            // A bad reply, a refusal, the deadline: the cache remembers it.
          }
          if (done) {
            u.fetch->settle(std::move(got));
            continue;
          }
        }
        if (kept != i) pending[kept] = std::move(u);
        ++kept;
      }
      pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(kept), pending.end());
    }
  }
};

}  // namespace

bool doorbell_cache::ring(std::uint32_t index, const owner& who, std::chrono::milliseconds retry_after) noexcept {
  if (index >= m_entries.size() || who.doorbell_id == 0) return false;
  entry& e = m_entries[index];
  const bool same = e.who.incarnation == who.incarnation && e.who.process == who.process &&
                    e.who.doorbell_id == who.doorbell_id;
  if (!same) {
    e = entry{};  // a fetch on its way for the last incarnation rings that one, harmlessly
    e.who = who;
  }
  if (!e.bell) {
    const auto now = std::chrono::steady_clock::now();
    if (const std::shared_ptr<doorbell_fetch> f = e.fetch) {
      std::lock_guard lock(f->mutex);
      switch (f->result) {
        case doorbell_fetch::outcome::waiting:
          return true;  // the fetcher rings it when it arrives
        case doorbell_fetch::outcome::fetched:
          e.bell = std::move(f->bell);  // rung once on arrival; this ring is a new one
          break;
        case doorbell_fetch::outcome::failed:
          e.failed = true;
          e.failed_at = now;
          break;
      }
      e.fetch.reset();
    }
    if (!e.bell) {
      if (e.failed && now - e.failed_at < retry_after) return false;
      e.failed = false;
      try {
        auto f = std::make_shared<doorbell_fetch>();
        f->owner = who.process;
        f->id = who.doorbell_id;
        f->timeout = m_fetch_timeout;
        this_process_instance<fetcher_state>().push(f);
        e.fetch = std::move(f);
        return true;
      } catch (const std::exception&) {
        // No memory or no thread for the fetcher: fetch here, as a last resort.
      }
      try {
        e.bell = fetch_doorbell(who.process, who.doorbell_id, m_fetch_timeout);
      } catch (const std::exception&) {
        e.failed = true;
        e.failed_at = now;
        return false;
      }
    }
  }
  return e.bell->try_signal() == 0;
}

}  // namespace shmbus::detail
