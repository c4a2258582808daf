// process_identity: a process named so that a reused pid is never mistaken
// for it, and liveness without heartbeats.
//
// A pid alone is not an identity: once a process is reaped, the kernel may
// hand its pid to an unrelated process. The pair (pid, start time) is: the
// start time is field 22 of /proc/<pid>/stat, in clock ticks since boot
// (sysconf(_SC_CLK_TCK), usually 100 per second), and never changes for the
// life of the process. Two processes share the pair only if the kernel
// cycled through pid_max pids within one tick.
//
// is_alive() asks the kernel, not the process: a process that is stopped,
// traced or starved of CPU for an hour is alive; a zombie (exited, not yet
// reaped) is dead, since it can never touch shared memory again. (A
// process whose main thread exited while others run shows state Z too, with
// more than one thread: that one is alive.)
//
// The identity is stored in shared memory (participant tables, cursor
// slots), so it is a fixed-width, trivially copyable 16-byte record:
//
//    offset  size  field
//    ------  ----  -----------------------------------------------------
//         0     4  pid         int32, native byte order (thread-group id)
//         4     4  reserved    uint32, written as zero, ignored on read
//         8     8  start_time  uint64, native byte order, clock ticks
//                              since boot (field 22 of /proc/<pid>/stat)
//
// Limits: all processes comparing identities must share a pid namespace and
// a time namespace (/proc shows start times relative to the reader's boot
// time offset since Linux 5.6).
#pragma once

#include <shmbus/export.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

namespace shmbus::detail {

/// A process: its pid and the start time that tells it from a later process
/// reusing the pid. Trivially copyable, 16 bytes (layout above).
///
/// Thread-safety: a value; self(), of() and is_alive() are thread-safe.
struct process_identity {
  std::int32_t pid = 0;
  /// Explicit padding, so that a copy in shared memory holds no stray bytes.
  std::uint32_t reserved = 0;
  std::uint64_t start_time = 0;

  constexpr process_identity() noexcept = default;
  constexpr process_identity(std::int32_t p, std::uint64_t start) noexcept : pid(p), start_time(start) {}

  /// The calling process (getpid() and its start time). Throws
  /// shmbus::error if /proc/self/stat cannot be read or parsed (no /proc).
  SHMBUS_API static process_identity self();

  /// The live process `pid`, or std::nullopt when there is no such process
  /// or it is a zombie (or `pid` <= 0). Throws shmbus::error when /proc
  /// cannot tell (EACCES, a malformed stat line). A thread id names its
  /// thread (as kill(2) would); store only identities from self().
  SHMBUS_API static std::optional<process_identity> of(std::int32_t pid);

  /// Compares pid and start time (not the reserved word).
  friend constexpr bool operator==(const process_identity& a, const process_identity& b) noexcept {
    return a.pid == b.pid && a.start_time == b.start_time;
  }
};

static_assert(std::is_trivially_copyable_v<process_identity>);
static_assert(std::is_standard_layout_v<process_identity>);
static_assert(sizeof(process_identity) == 16 && alignof(process_identity) == 8);
static_assert(offsetof(process_identity, pid) == 0 && offsetof(process_identity, reserved) == 4 &&
              offsetof(process_identity, start_time) == 8);

/// True iff a process with this pid exists, is not a zombie, and started at
/// `id.start_time`. Never blocks on the process; noexcept, no allocation.
///
/// kill(pid, 0) failing with ESRCH means dead; EPERM (another user's
/// process) means it exists. Then /proc/<pid>/stat decides. When /proc
/// cannot tell although kill says the pid exists (hidepid=2 hiding another
/// user's process, an unreadable or malformed stat line), the answer is
/// true: a false "dead" could let someone reclaim a live process's slot,
/// whereas a false "alive" only delays clean-up.
SHMBUS_API bool is_alive(const process_identity& id) noexcept;

/// The fields of one /proc/<pid>/stat line that shmbus reads.
struct proc_stat_fields {
  char state = 0;                 ///< field 3: R, S, D, Z, T, t, X, I, ...
  std::int64_t num_threads = 0;   ///< field 20
  std::uint64_t start_time = 0;   ///< field 22

  /// Exited: a zombie or dead. A process whose main thread called
  /// pthread_exit() while other threads run also shows 'Z' (ps: "Zl"), but
  /// with more than one thread: that one is alive.
  constexpr bool exited() const noexcept {
    return (state == 'Z' && num_threads <= 1) || state == 'X' || state == 'x';
  }
};

/// Parses a /proc/<pid>/stat line. The comm field (2) may hold any byte,
/// spaces and ')' included, so fields are read after the LAST ')'.
/// std::nullopt when the line is malformed. Exposed for tests.
SHMBUS_API std::optional<proc_stat_fields> parse_proc_stat(std::string_view line) noexcept;

}  // namespace shmbus::detail
