#include <shmbus/detail/process_identity.hpp>

#include <shmbus/error.hpp>

#include "core/syscall.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>

namespace shmbus::detail {
namespace {

/// A stat line is about 300 bytes: 52 numeric fields and a comm of at most
/// 64 bytes (kernel threads). Anything that fills this buffer is malformed.
constexpr std::size_t stat_buffer_size = 2048;

/// Outcome of reading /proc/<pid>/stat without allocating.
struct stat_read {
  int error = 0;                           ///< errno of open/read; 0 on success
  std::optional<proc_stat_fields> fields;  ///< nullopt with error 0: malformed
};

stat_read read_proc_stat(const char* path) noexcept {
  const int fd = retry_on_eintr([&] { return ::open(path, O_RDONLY | O_CLOEXEC); });
  if (fd < 0) return {errno, std::nullopt};
  char buffer[stat_buffer_size];
  std::size_t length = 0;
  int err = 0;
  // procfs returns the whole line in one read, but be correct for short reads.
  while (length < sizeof buffer) {
    const ssize_t r = retry_on_eintr([&] { return ::read(fd, buffer + length, sizeof buffer - length); });
    if (r < 0) {
      err = errno;
      break;
    }
    if (r == 0) break;
    length += static_cast<std::size_t>(r);
  }
  ::close(fd);
  if (err != 0) return {err, std::nullopt};
  if (length == sizeof buffer) return {0, std::nullopt};
  return {0, parse_proc_stat(std::string_view(buffer, length))};
}

/// "/proc/<pid>/stat" into `out` (no allocation).
const char* stat_path(char (&out)[32], std::int32_t pid) noexcept {
  std::snprintf(out, sizeof out, "/proc/%d/stat", static_cast<int>(pid));
  return out;
}

/// The whole token as a decimal number (no sign for unsigned types).
template <class T>
bool parse_number(std::string_view token, T& out) noexcept {
  const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), out);
  return ec == std::errc{} && ptr == token.data() + token.size();
}

}  // namespace

/* /proc/<pid>/stat, as fs/proc/array.c writes it:
 *
 *   pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt
 *   majflt cmajflt utime stime cutime cstime priority nice num_threads
 *   itrealvalue starttime ...
 *
 * comm is the task name (up to 15 bytes, 63 for kernel threads), copied
 * verbatim: it may contain spaces, parentheses and newlines. Nothing after
 * it can contain ')', so the fields start after the last ')' in the line:
 * state is the 1st token there (field 3), num_threads the 18th (field 20),
 * starttime the 20th (field 22).
 */
std::optional<proc_stat_fields> parse_proc_stat(std::string_view line) noexcept {
  const auto close = line.rfind(')');
  const auto open = line.find('(');
  if (close == std::string_view::npos || open == std::string_view::npos || open > close) return std::nullopt;
  std::string_view rest = line.substr(close + 1);

  proc_stat_fields fields;
  for (int field = 3; field <= 22; ++field) {
    // Exactly one space separates fields.
    if (rest.empty() || rest.front() != ' ') return std::nullopt;
    rest.remove_prefix(1);
    const auto end = rest.find_first_of(" \n");
    const std::string_view token = rest.substr(0, end);
    if (token.empty()) return std::nullopt;
    if (field == 3) {
      if (token.size() != 1) return std::nullopt;
      fields.state = token.front();
    } else if (field == 20) {
      if (!parse_number(token, fields.num_threads)) return std::nullopt;
    } else if (field == 22) {
      if (!parse_number(token, fields.start_time)) return std::nullopt;
    }
    rest.remove_prefix(token.size());
  }
  return fields;
}

process_identity process_identity::self() {
  // /proc/<getpid()>/stat, so that the pid and the start time come from
  // the same lookup.
  const std::int32_t pid = ::getpid();
  char path[32];
  const stat_read r = read_proc_stat(stat_path(path, pid));
  if (r.error != 0) throw_errno(r.error, "read", path, "cannot determine our own start time");
  if (!r.fields)
    throw error(std::make_error_code(std::errc::bad_message), "parse", path, "malformed stat line");
  return process_identity(pid, r.fields->start_time);
}

std::optional<process_identity> process_identity::of(std::int32_t pid) {
  if (pid <= 0) return std::nullopt;
  char path[32];
  const stat_read r = read_proc_stat(stat_path(path, pid));
  // ESRCH: the process exited between open and read.
  if (r.error == ENOENT || r.error == ESRCH) return std::nullopt;
  if (r.error != 0) throw_errno(r.error, "read", path);
  if (!r.fields) throw error(std::make_error_code(std::errc::bad_message), "parse", path, "malformed stat line");
  if (r.fields->exited()) return std::nullopt;
  return process_identity(pid, r.fields->start_time);
}

bool is_alive(const process_identity& id) noexcept {
  // pid 0 and negative pids name process groups in kill(2): never a process.
  if (id.pid <= 0) return false;
  if (::kill(id.pid, 0) != 0 && errno == ESRCH) return false;  // EPERM: it exists
  char path[32];
  const stat_read r = read_proc_stat(stat_path(path, id.pid));
  if (r.error == 0 && r.fields) return !r.fields->exited() && r.fields->start_time == id.start_time;
  if (r.error == ENOENT || r.error == ESRCH) {
    // Either it died since kill(), or /proc hides it (hidepid=2). Ask again.
    if (::kill(id.pid, 0) != 0 && errno == ESRCH) return false;
  }
  return true;  // exists, and /proc cannot tell us more: see the header
}

}  // namespace shmbus::detail
