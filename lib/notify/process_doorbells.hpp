// process_doorbells: this process's doorbells, served to other processes,
// and doorbell_cache: other processes' doorbells, fetched once and rung.
//
// One doorbell_server per process (it is named after the process). It is
// served by a thread of its own with its own scheduler, started when the
// first doorbell is added. That thread only answers fetches; it never
// fetches, so two processes that fetch from each other at the same moment
// cannot wait on each other: each side's server answers while its fetcher
// waits for the other's reply (a one-time, bounded exchange per peer, not
// per message).
//
// Fetching is off the caller's thread too. The first ring of another
// process's doorbell needs a socket exchange with that process (tens of
// µs; up to the fetch's 1 s deadline when the owner is stopped or starved
// of CPU), and the caller is a publisher inside try_publish, which must
// not wait. doorbell_cache hands the fetch to a fetcher thread of this
// process (started on first need, one per process, not the server's
// thread) and returns; the fetcher rings the bell itself once it has it,
// and the cache takes the descriptor over on its next ring. The fetcher
// has all its fetches under way at once (doorbell_request, polled), so an
// owner that does not answer delays no other owner's wake-up.
//
// fork(): a child is a new process with a new identity; its first use
// starts a server (and a fetcher) of its own. The parent's states are left
// untouched (their threads do not exist in the child). Both are held by
// this_process_instance (process_instance.hpp), which also makes a fork
// wait while another thread is starting one.
#pragma once

#include <shmbus/detail/doorbell.hpp>
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/event_fd.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace shmbus::detail {

class process_doorbells {
 public:
  /// A handle on the calling process's doorbells (cheap to copy, valid
  /// until exit); starts serving on first use. Throws shmbus::error when the
  /// server cannot be set up. Thread-safe.
  static process_doorbells instance();

  const process_identity& identity() const noexcept;
  /// Serves `bell` (a duplicate is kept) under a new id, never 0.
  std::uint64_t add(const event_fd& bell);
  void remove(std::uint64_t id) noexcept;

  struct state;
  explicit process_doorbells(state* s) noexcept : m_state(s) {}

 private:
  state* m_state;
};

/// A doorbell being fetched by this process's fetcher thread (.cpp).
struct doorbell_fetch;

/// The doorbells of the owners of a table of slots (one entry per slot),
/// fetched on first use (in the background) and kept while the slot's
/// incarnation lasts. Owned by one handle; not thread-safe.
class doorbell_cache {
 public:
  /// `fetch_timeout` bounds each fetch of an owner's doorbell.
  explicit doorbell_cache(std::size_t slots,
                          std::chrono::milliseconds fetch_timeout = std::chrono::seconds(1))
      : m_entries(slots), m_fetch_timeout(fetch_timeout) {}

  /// Who owns a slot now, read from shared memory.
  struct owner {
    std::uint64_t incarnation = 0;  ///< the slot's state+generation word
    process_identity process;
    std::uint64_t doorbell_id = 0;
  };

  /// Rings slot `index`'s doorbell. If this incarnation's is not cached,
  /// asks the fetcher thread for it and returns at once: the fetcher rings
  /// it when it arrives (a ring while it is on its way is folded into that
  /// one). A failed fetch (dead owner, no such doorbell, deadline) is
  /// remembered for `retry_after`, so a dead slot costs no system call per
  /// message. Returns false when the bell could not be rung and will not
  /// be. Never blocks on another process; noexcept.
  bool ring(std::uint32_t index, const owner& who,
            std::chrono::milliseconds retry_after = std::chrono::milliseconds(100)) noexcept;

 private:
  struct entry {
    owner who;
    std::optional<event_fd> bell;
    std::shared_ptr<doorbell_fetch> fetch;  // on its way
    std::chrono::steady_clock::time_point failed_at{};
    bool failed = false;
  };
  std::vector<entry> m_entries;
  std::chrono::milliseconds m_fetch_timeout;
};

}  // namespace shmbus::detail
