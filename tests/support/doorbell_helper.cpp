// A separate program that the doorbell tests fork+exec as "another process".
//
//   doorbell_helper serve ID REPORT_FD CONTROL_FD [ALLOWED_GID]
//       creates this process's doorbell server, serves a fresh eventfd under
//       ID, writes 'R' on REPORT_FD once listening, then runs one scheduler
//       that serves doorbells and waits on the eventfd: every wake-up writes
//       the 8-byte count it read on REPORT_FD. When CONTROL_FD reaches end of
//       file it stops, writes its statistics (6 x u64: accepted, served,
//       unknown_id, refused, bad_request, dropped) on REPORT_FD, exits 0.
//
//   doorbell_helper fetch PID START_TIME ID VALUE [TIMEOUT_MS]
//       fetches doorbell ID of process (PID, START_TIME) and adds VALUE to it.
//       Exit status: 0 done; 10 + doorbell_errc on a doorbell error; 9 timed
//       out; 1 anything else (the message goes to stderr).
//
//   doorbell_helper block
//       writes 'R' on standard output, reads standard input until end of
//       file, then exits 0 (run through a
//       symlink with an odd name to test /proc/<pid>/stat parsing).
#include <shmbus/detail/doorbell.hpp>
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>
#include <shmbus/event_fd.hpp>
#include <shmbus/io.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/when_all.hpp>

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stop_token>
#include <string_view>

namespace {

using shmbus::task;
namespace detail = shmbus::detail;

bool write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

task<void> report_wakeups(shmbus::scheduler& s, const shmbus::event_fd& bell, int report_fd) {
  for (;;) {
    std::uint64_t value = 0;
    try {
      value = co_await bell.wait(s);
    } catch (const shmbus::error& e) {
      if (e.code() == shmbus::errc::cancelled) co_return;
      throw;
    }
    co_await shmbus::async_write(s, report_fd, std::as_bytes(std::span(&value, 1)));
  }
}

task<void> stop_at_eof(shmbus::scheduler& s, int control_fd, std::stop_source& stop) {
  std::byte byte{};
  // Ends with 0 bytes at end of file; runs without a stop token of its own.
  while (co_await shmbus::async_read(s, control_fd, std::span(&byte, 1)) > 0) {
  }
  stop.request_stop();
}

int serve(std::uint64_t id, int report_fd, int control_fd, const char* allowed_gid) {
  shmbus::scheduler s;
  detail::doorbell_server::options options;
  if (allowed_gid != nullptr) options.allowed_gids.push_back(static_cast<std::uint32_t>(std::atoi(allowed_gid)));
  detail::doorbell_server server(std::move(options));
  shmbus::event_fd bell;
  server.add(id, bell);
  if (!write_all(report_fd, "R", 1)) return 3;

  std::stop_source stop;
  s.run(shmbus::when_all(server.serve(s).with_stop_token(stop.get_token()),
                         report_wakeups(s, bell, report_fd).with_stop_token(stop.get_token()),
                         stop_at_eof(s, control_fd, stop)));
  const auto st = server.stats();
  const std::array<std::uint64_t, 6> counters{st.accepted,   st.served,      st.unknown_id,
                                              st.refused,    st.bad_request, st.dropped};
  return write_all(report_fd, counters.data(), sizeof counters) ? 0 : 3;
}

int fetch(const char* pid, const char* start_time, const char* id, const char* value, const char* timeout_ms) {
  const detail::process_identity owner(std::atoi(pid), std::strtoull(start_time, nullptr, 10));
  const auto timeout = std::chrono::milliseconds(timeout_ms ? std::atoi(timeout_ms) : 2000);
  try {
    auto bell = detail::fetch_doorbell(owner, std::strtoull(id, nullptr, 10), timeout);
    bell.signal(std::strtoull(value, nullptr, 10));
    return 0;
  } catch (const shmbus::error& e) {
    std::fprintf(stderr, "doorbell_helper: %s\n", e.what());
    if (e.code().category() == detail::doorbell_category()) return 10 + e.code().value();
    if (e.code() == shmbus::errc::timed_out) return 9;
    return 1;
  }
}

int block() {
  if (!write_all(1, "R", 1)) return 3;
  char buffer[64];
  while (::read(0, buffer, sizeof buffer) > 0) {
  }
  return 0;
}

}  // namespace

int main(int argc, char* argv[]) {
  try {
    const std::string_view mode = argc > 1 ? argv[1] : "";
    if (mode == "serve" && (argc == 5 || argc == 6))
      return serve(std::strtoull(argv[2], nullptr, 10), std::atoi(argv[3]), std::atoi(argv[4]),
                   argc == 6 ? argv[5] : nullptr);
    if (mode == "fetch" && (argc == 6 || argc == 7))
      return fetch(argv[2], argv[3], argv[4], argv[5], argc == 7 ? argv[6] : nullptr);
    if (mode == "block" && argc == 2) return block();
    std::fprintf(stderr,
                 "usage: doorbell_helper serve ID REPORT_FD CONTROL_FD [ALLOWED_GID]\n"
                 "       doorbell_helper fetch PID START_TIME ID VALUE [TIMEOUT_MS]\n"
                 "       doorbell_helper block\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "doorbell_helper: %s\n", e.what());
    return 1;
  }
}
