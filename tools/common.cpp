// What the sub-commands of `shmbus` share: failures, names, formatting, signals.
#include "tool.hpp"

#include <shmbus/bus.hpp>
#include <shmbus/error.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/io.hpp>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <pwd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <ctime>

namespace shmbus::tool {

void fail(const std::string& message) { throw failure(exit_problem, message); }
void usage(const std::string& message) { throw failure(exit_usage, message); }

// ---- names -----------------------------------------------------------------------------

void check_bus_name(const std::string& name, std::string_view what) {
  if (bus::valid_name(name)) return;
  std::string why;
  if (name.empty()) {
    why = "it is empty";
  } else if (name.size() > bus::max_name_length) {
    why = fmt::format("it has {} characters, at most {}", name.size(), bus::max_name_length);
  } else if (name.front() == '-') {
    why = "it starts with '-'";
  } else {
    for (char c : name) {
      if (c == '-' || bus::valid_name(std::string(1, c))) continue;
      const auto u = static_cast<unsigned char>(c);
      why = (u > 0x20 && u < 0x7f) ? fmt::format("it contains '{}'", c) : fmt::format("it contains byte 0x{:02x}", u);
      break;
    }
  }
  usage(fmt::format("invalid {} name '{}': {} (names are 1..{} characters of A-Z a-z 0-9 _ -, not starting with -)",
                    what, text_of(std::as_bytes(std::span(name.data(), name.size()))), why, bus::max_name_length));
}

std::pair<std::string, std::string> split_target(const std::string& target) {
  const auto slash = target.find('/');
  if (slash == std::string::npos)
    usage(fmt::format("'{}' is not BUS/CHANNEL (a bus name, a slash, a channel name)", target));
  std::string bus_name = target.substr(0, slash);
  std::string channel_name = target.substr(slash + 1);
  check_bus_name(bus_name, "bus");
  check_bus_name(channel_name, "channel");
  return {std::move(bus_name), std::move(channel_name)};
}

// ---- formatting --------------------------------------------------------------------

std::string human_bytes(std::uint64_t bytes) {
  static constexpr std::array<const char*, 6> units{"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes);
  std::size_t u = 0;
  while (v >= 1024.0 && u + 1 < units.size()) {
    v /= 1024.0;
    ++u;
  }
  if (v == static_cast<double>(static_cast<std::uint64_t>(v))) return fmt::format("{} {}", static_cast<std::uint64_t>(v), units[u]);
  return fmt::format("{:.1f} {}", v, units[u]);
}

std::string mode_string(mode_t mode) { return fmt::format("{:04o}", mode & 07777); }

std::string user_string(uid_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  std::array<char, 4096> buffer{};
  if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) == 0 && found != nullptr)
    return fmt::format("{} ({})", found->pw_name, uid);
  return fmt::format("{}", uid);
}

std::string time_string(std::uint64_t realtime_ns) {
  if (realtime_ns == 0) return "-";
  const auto t = static_cast<std::time_t>(realtime_ns / 1'000'000'000u);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  return fmt::format("{:%Y-%m-%d %H:%M:%S}", tm);
}

namespace {

// Length of the UTF-8 sequence starting at s[i] (a valid, shortest-form
// encoding of a scalar value), or 0.
std::size_t utf8_length(std::span<const std::byte> s, std::size_t i) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if ((c & 0xe0) == 0xc0) {
    n = 2;
    cp = c & 0x1fu;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3;
    cp = c & 0x0fu;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4;
    cp = c & 0x07u;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3fu);
  }
  static constexpr std::array<std::uint32_t, 5> min_of{0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_of[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

}  // namespace

std::string text_of(std::span<const std::byte> bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else if (c >= 0x80) {
      const std::size_t n = utf8_length(bytes, i);
      if (n == 0) {
        out += fmt::format("\\x{:02x}", c);
      } else {
        out.append(reinterpret_cast<const char*>(bytes.data() + i), n);
        i += n;
        continue;
      }
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  return out;
}

std::string hex_of(std::span<const std::byte> bytes) {
  std::string out;
  out.reserve(bytes.size() * 3);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i != 0) out += ' ';
    out += fmt::format("{:02x}", static_cast<unsigned char>(bytes[i]));
  }
  return out;
}

std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f)
          out += fmt::format("\\u{:04x}", c);
        else
          out += ch;
    }
  }
  out += '"';
  return out;
}

std::optional<std::string> json_string_of(std::span<const std::byte> bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t n = utf8_length(bytes, i);
    if (n == 0) return std::nullopt;
    i += n;
  }
  return json_quote({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
}

std::string json_payload_field(std::span<const std::byte> bytes) {
  if (auto s = json_string_of(bytes)) return "\"text\":" + *s;
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (std::byte b : bytes) hex += fmt::format("{:02x}", static_cast<unsigned char>(b));
  return "\"hex\":\"" + hex + "\"";
}

bool stderr_is_tty() noexcept { return ::isatty(STDERR_FILENO) == 1; }
bool stdout_is_tty() noexcept { return ::isatty(STDOUT_FILENO) == 1; }

// ---- signals ---------------------------------------------------------------------------

namespace {

sigset_t stop_signals() noexcept {
  sigset_t set;
  ::sigemptyset(&set);
  ::sigaddset(&set, SIGINT);
  ::sigaddset(&set, SIGTERM);
  ::sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

signal_block::signal_block() {
  const sigset_t set = stop_signals();
  if (const int r = ::pthread_sigmask(SIG_BLOCK, &set, &m_old); r != 0) throw_errno(r, "pthread_sigmask", "SIGINT");
}

signal_block::~signal_block() { ::pthread_sigmask(SIG_SETMASK, &m_old, nullptr); }

bool signal_block::wait(unsigned ms) const {
  const sigset_t set = stop_signals();
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1'000'000L};
  for (;;) {
    if (::sigtimedwait(&set, nullptr, &ts) > 0) return true;
    if (errno == EAGAIN) return false;
    if (errno != EINTR) throw_errno(errno, "sigtimedwait", "SIGINT");
    // Another signal interrupted the wait: the remaining time is not
    // reported, so wait the whole interval again (a refresh comes late).
  }
}

task<void> signal_block::stop_on_signal(scheduler& s, std::stop_source& stop) {
  const sigset_t set = stop_signals();
  unique_fd fd(::signalfd(-1, &set, SFD_CLOEXEC));
  if (!fd) throw_errno(errno, "signalfd", "SIGINT");
  signalfd_siginfo info{};
  co_await async_read(s, fd.get(), std::as_writable_bytes(std::span(&info, 1)));
  stop.request_stop();
}

}  // namespace shmbus::tool
