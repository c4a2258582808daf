// The `shmbus` command (docs/TOOL.md): what its sub-commands share.
//
//   main.cpp          argument parsing (CLI11), dispatch, exit codes
//   common.cpp        formatting, names, signals
//   inspect.{hpp,cpp} read-only views of buses and channels (ls, stat, gc)
//   bus_commands.cpp  ls, stat, gc
//   stream_commands.cpp  tail (channels and logs), pub
//   log_walk.{hpp,cpp}   read-only walk over a log's files (log stat/dump/verify)
//   log_commands.cpp  log stat, log dump, log verify
//
// Exit codes: 0 ok, 1 an error or a problem found, 2 a usage error. Every
// failure is one line on stderr: "shmbus <command>: <what went wrong>".
#pragma once

#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include <signal.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmbus::tool {

inline constexpr int exit_ok = 0;
inline constexpr int exit_problem = 1;
inline constexpr int exit_usage = 2;

/// A failure reported as one line on stderr; the process exits with `code`.
class failure : public std::runtime_error {
 public:
  failure(int code, const std::string& message) : std::runtime_error(message), m_code(code) {}
  int code() const noexcept { return m_code; }

 private:
  int m_code;
};

/// Throws a failure that exits with 1 (an error, or a problem found).
[[noreturn]] void fail(const std::string& message);
/// Throws a failure that exits with 2 (the command line is wrong).
[[noreturn]] void usage(const std::string& message);

// ---- options of each sub-command (filled by main.cpp) ------------------------------

enum class output_format : std::uint8_t { text, hex, json };

struct ls_options {
  std::vector<std::string> buses;  ///< empty: every bus on the host
};

struct stat_options {
  std::string bus;
  bool watch = false;
  unsigned interval_ms = 1000;  ///< --watch refresh; a single shot samples over 200 ms
};

struct tail_options {
  std::string target;   ///< BUS/CHANNEL (empty with --log)
  std::string log_dir;  ///< --log DIR
  bool from_beginning = false;
  std::optional<output_format> format;  ///< default: text for bytes, hex for typed channels
  std::uint64_t count = 0;              ///< 0: until SIGINT
};

struct pub_options {
  std::string target;  ///< BUS/CHANNEL
};

struct gc_options {
  std::vector<std::string> buses;  ///< empty: every shmbus object in /dev/shm
  bool force = false;              ///< also remove stray objects that are not valid
  bool dry_run = false;            ///< say what would be removed, remove nothing
};

struct log_cli_options {
  std::string dir;
  output_format format = output_format::text;
  std::optional<std::uint64_t> from;  ///< dump: first position (default: the oldest kept)
  std::uint64_t count = 0;            ///< dump: at most this many records (0: all)
  bool all_frames = false;            ///< dump: also padding and aborted frames
  bool progress = true;               ///< verify: progress bar on a TTY
};

int run_ls(const ls_options& o);
int run_stat(const stat_options& o);
int run_gc(const gc_options& o);
int run_tail(const tail_options& o);
int run_pub(const pub_options& o);
int run_log_stat(const log_cli_options& o);
int run_log_dump(const log_cli_options& o);
int run_log_verify(const log_cli_options& o);

// ---- names -----------------------------------------------------------------------------

/// Checks a bus name (usage error naming the rule it breaks).
void check_bus_name(const std::string& name, std::string_view what = "bus");
/// Splits "BUS/CHANNEL" and checks both names (usage error otherwise).
std::pair<std::string, std::string> split_target(const std::string& target);

// ---- formatting --------------------------------------------------------------------

/// "320 B", "64 KiB", "1.5 MiB".
std::string human_bytes(std::uint64_t bytes);
/// "0600".
std::string mode_string(mode_t mode);
/// "alice (1000)", or "1000" when the uid has no name.
std::string user_string(uid_t uid);
/// Local time "2024-11-21 12:00:01" of a CLOCK_REALTIME nanosecond count; "-" for 0.
std::string time_string(std::uint64_t realtime_ns);
/// The bytes as one line of text: printable bytes and UTF-8 as they are,
/// `\n`, `\t`, `\\` and other control bytes escaped (`\x1b`).
std::string text_of(std::span<const std::byte> bytes);
/// "6f 6e 65".
std::string hex_of(std::span<const std::byte> bytes);
/// A JSON string literal of the bytes if they are valid UTF-8, else nothing.
std::optional<std::string> json_string_of(std::span<const std::byte> bytes);
/// `"text":"..."` for UTF-8 bytes, else `"hex":"6f6e65"`.
std::string json_payload_field(std::span<const std::byte> bytes);
/// A JSON string literal of text we produced (names, messages).
std::string json_quote(std::string_view s);
/// Whether stderr / stdout is a terminal.
bool stderr_is_tty() noexcept;
bool stdout_is_tty() noexcept;

// ---- signals ---------------------------------------------------------------------------

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread for its
/// lifetime, so that they can be taken with wait() or a signalfd (threads
/// started meanwhile inherit the mask). Restores the old mask when destroyed.
class signal_block {
 public:
  signal_block();
  signal_block(const signal_block&) = delete;
  signal_block& operator=(const signal_block&) = delete;
  ~signal_block();

  /// Waits up to `ms` for one of the blocked signals; true if one came.
  bool wait(unsigned ms) const;
  /// Spawn this on `s`: it requests `stop` when one of the signals comes
  /// (read through a signalfd on the loop).
  static task<void> stop_on_signal(scheduler& s, std::stop_source& stop);

 private:
  sigset_t m_old{};
};

}  // namespace shmbus::tool
