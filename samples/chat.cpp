// chat: a terminal chat between processes on one host.
//
//   chat --room lobby --name alice            (type lines; Ctrl-D leaves)
//   chat --room lobby --name bob --script F   (say the lines of F; see below)
//
// Lines travel on the byte channel "room" of the bus "chat-<room>" (every
// member subscribes, asleep on its eventfd between lines) and are appended
// durably to a log (--log-dir, default $XDG_STATE_HOME or ~/.local/state
// /shmbus-chat/<room>), so a newcomer first sees the room's recent history,
// even after everyone left or the machine rebooted. Members announce
// themselves (join; and "here" in reply to a join, so a newcomer learns who
// is present); a member killed with SIGKILL is noticed as gone by the
// others within a quarter of a second (pid + start time, no heartbeats).
// Input (stdin through io_uring) and output run on one scheduler, with no
// thread of our own.
//
// Script files (--script): one line each, said in order, except
//   @wait-members N   wait until N members (this one included) are present
//   @wait-lines N     wait until N lines have been received since joining
//   @wait-gone NAME   wait until member NAME has left or is gone
//   @quit             leave (also at the end of the file)
#include <shmbus/detail/process_identity.hpp>  // liveness of other members
#include <shmbus/shmbus.hpp>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

enum class kind : std::uint8_t { line = 1, join = 2, here = 3, leave = 4 };

/// One message on the channel, and one record in the log (lines only).
struct header {
  kind what;
  std::uint8_t name_length;
  std::uint16_t text_length;
  std::int32_t pid;
  std::uint64_t start_time;
  std::uint64_t time_ns;  // CLOCK_REALTIME
  std::uint64_t number;   // per member: the n-th line it said
};

struct message {
  header head{};
  std::string name;
  std::string text;

  std::vector<std::byte> encode() const {
    std::vector<std::byte> out(sizeof head + name.size() + text.size());
    header h = head;
    h.name_length = static_cast<std::uint8_t>(name.size());
    h.text_length = static_cast<std::uint16_t>(text.size());
    std::memcpy(out.data(), &h, sizeof h);
    std::memcpy(out.data() + sizeof h, name.data(), name.size());
    std::memcpy(out.data() + sizeof h + name.size(), text.data(), text.size());
    return out;
  }
  /// Messages come from other processes: check every length.
  static bool decode(std::span<const std::byte> in, message& m) {
    if (in.size() < sizeof(header)) return false;
    std::memcpy(&m.head, in.data(), sizeof(header));
    if (in.size() != sizeof(header) + m.head.name_length + m.head.text_length) return false;
    const char* p = reinterpret_cast<const char*>(in.data()) + sizeof(header);
    m.name.assign(p, m.head.name_length);
    m.text.assign(p + m.head.name_length, m.head.text_length);
    return true;
  }
  std::string id() const { return fmt::format("{}#{}#{}", name, head.start_time, head.number); }
};

std::uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string clock_of(std::uint64_t ns) {
  const std::time_t t = static_cast<std::time_t>(ns / 1'000'000'000u);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  return fmt::format("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec);
}

void show(const message& m, std::string_view prefix = "") {
  switch (m.head.what) {
    case kind::line: fmt::print("{}[{}] {}: {}\n", prefix, clock_of(m.head.time_ns), m.name, m.text); break;
    case kind::join: fmt::print("[{}] * {} joined\n", clock_of(m.head.time_ns), m.name); break;
    case kind::leave: fmt::print("[{}] * {} left\n", clock_of(m.head.time_ns), m.name); break;
    case kind::here: break;
  }
  std::fflush(stdout);
}

struct member_info {
  shmbus::detail::process_identity process;
  bool present = true;
};

class chat {
 public:
  chat(shmbus::scheduler& s, std::string room, std::string name, std::filesystem::path log_dir, std::size_t history)
      : m_sched(s),
        m_room(std::move(room)),
        m_name(std::move(name)),
        m_bus(shmbus::bus::open("chat-" + m_room)),
        m_sub(m_bus.bytes_subscriber("room", {.spin = 0ns})),
        m_pub(m_bus.bytes_publisher("room")),
        m_log(shmbus::byte_log::open(s, log_dir)),
        m_self(shmbus::detail::process_identity::self()),
        m_history(history) {}

  /// Prints the last lines of the log (up to where it stands now: newer
  /// lines arrive on the channel, which we subscribed to before).
  void print_history() {
    std::deque<message> last;
    auto reader = m_log.reader(shmbus::from::beginning());
    const auto end = m_log.tail();
    while (reader.current() < end) {
      auto r = reader.try_next();
      if (!r) break;
      message m;
      if (!message::decode(r.data, m)) continue;
      m_in_history.insert(m.id());
      last.push_back(std::move(m));
      if (last.size() > m_history) last.pop_front();
    }
    if (last.empty()) return;
    fmt::print("--- last {} lines of #{} ---\n", last.size(), m_room);
    for (const auto& m : last) show(m, "  ");
    fmt::print("--- now ---\n");
    std::fflush(stdout);
  }

  shmbus::task<void> say(kind what, std::string text = {}) {
    message m;
    m.head.what = what;
    m.head.pid = m_self.pid;
    m.head.start_time = m_self.start_time;
    m.head.time_ns = now_ns();
    m.head.number = what == kind::line ? ++m_said : 0;
    m.name = m_name;
    m.text = std::move(text);
    const auto bytes = m.encode();
    if (what == kind::line) co_await m_log.append(bytes, shmbus::durability::sync);  // history survives a crash
    co_await m_pub.publish(bytes);
  }

  /// Prints what arrives; answers joins; notices members that died.
  shmbus::task<void> receive() {
    for (;;) {
      auto next = co_await m_sub.next();
      message m;
      if (!message::decode(next.data, m)) continue;
      const bool mine = m.head.pid == m_self.pid && m.head.start_time == m_self.start_time;
      switch (m.head.what) {
        case kind::line:
          if (m_in_history.count(m.id()) != 0) break;
          ++m_lines;
          show(m);
          break;
        case kind::join:
        case kind::here: {
          const bool known = m_members.count(m.name) != 0 && m_members[m.name].present;
          m_members[m.name] = {shmbus::detail::process_identity(m.head.pid, m.head.start_time), true};
          if (m.head.what == kind::join && !mine) {
            show(m);
            co_await say(kind::here);
          } else if (!known && !mine) {
            fmt::print("[{}] * {} is here\n", clock_of(m.head.time_ns), m.name);
            std::fflush(stdout);
          }
          break;
        }
        case kind::leave:
          if (auto it = m_members.find(m.name); it != m_members.end() && it->second.present && !mine) {
            it->second.present = false;
            show(m);
          }
          break;
      }
      wake_waiters();
    }
  }

  /// Members killed without a word: their process is gone.
  shmbus::task<void> watch_presence() {
    for (;;) {
      co_await m_sched.sleep_for(250ms);
      for (auto& [name, info] : m_members) {
        if (!info.present || shmbus::detail::is_alive(info.process)) continue;
        info.present = false;
        fmt::print("[{}] * {} is gone (process {} ended)\n", clock_of(now_ns()), name, info.process.pid);
        std::fflush(stdout);
        wake_waiters();
      }
    }
  }

  /// Lines typed on stdin, read through io_uring.
  shmbus::task<void> type_lines() {
    std::string pending;
    std::array<std::byte, 4096> buffer{};
    for (;;) {
      const std::size_t n = co_await shmbus::async_read(m_sched, 0, buffer);
      if (n == 0) break;
      pending.append(reinterpret_cast<const char*>(buffer.data()), n);
      for (std::size_t eol; (eol = pending.find('\n')) != std::string::npos; pending.erase(0, eol + 1))
        if (eol > 0) co_await say(kind::line, pending.substr(0, eol));
    }
  }

  shmbus::task<void> run_script(std::vector<std::string> lines) {
    for (const auto& line : lines) {
      if (line.rfind("@wait-members ", 0) == 0) {
        const std::size_t n = std::stoul(line.substr(14));
        while (present() < n) co_await changed();
      } else if (line.rfind("@wait-lines ", 0) == 0) {
        const std::uint64_t n = std::stoull(line.substr(12));
        while (m_lines < n) co_await changed();
      } else if (line.rfind("@wait-gone ", 0) == 0) {
        const std::string who = line.substr(11);
        while (m_members.count(who) == 0 || m_members[who].present) co_await changed();
      } else if (line == "@quit") {
        break;
      } else if (!line.empty()) {
        co_await say(kind::line, line);
      }
    }
  }

  std::size_t present() const {
    std::size_t n = 0;
    for (const auto& [name, info] : m_members) n += info.present ? 1 : 0;
    return n;
  }

 private:
  /// Resumes when a message was handled (script waits are event-driven).
  struct changed_awaitable {
    chat* m_chat;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { m_chat->m_waiters.push_back(h); }
    void await_resume() const noexcept {}
  };
  changed_awaitable changed() { return {this}; }
  void wake_waiters() {
    for (auto h : m_waiters) m_sched.enqueue(h);
    m_waiters.clear();
  }

  shmbus::scheduler& m_sched;
  std::string m_room;
  std::string m_name;
  shmbus::bus m_bus;
  shmbus::byte_subscriber m_sub;
  shmbus::byte_publisher m_pub;
  shmbus::byte_log m_log;
  shmbus::detail::process_identity m_self;
  std::size_t m_history;
  std::set<std::string> m_in_history;
  std::map<std::string, member_info> m_members;
  std::uint64_t m_said = 0;
  std::uint64_t m_lines = 0;
  std::vector<std::coroutine_handle<>> m_waiters;
};

std::filesystem::path default_log_dir(const std::string& room) {
  if (const char* state = std::getenv("XDG_STATE_HOME"); state != nullptr && *state != '\0')
    return std::filesystem::path(state) / "shmbus-chat" / room;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : "/tmp") / ".local/state/shmbus-chat" / room;
}

int usage() {
  fmt::print(stderr,
             "usage: chat --room ROOM --name NAME [--script FILE] [--log-dir DIR] [--history N]\n"
             "  type lines to say them; Ctrl-D leaves. Script lines: text, @wait-members N, @wait-lines N, @quit\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string room, name, script;
  std::filesystem::path log_dir;
  std::size_t history = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--room" && has_value) room = argv[++i];
    else if (a == "--name" && has_value) name = argv[++i];
    else if (a == "--script" && has_value) script = argv[++i];
    else if (a == "--log-dir" && has_value) log_dir = argv[++i];
    else if (a == "--history" && has_value) history = std::stoul(argv[++i]);
    else if (a == "--help") return usage(), 0;
    else return usage();
  }
  if (room.empty() || name.empty() || name.size() > 32) return usage();
  if (log_dir.empty()) log_dir = default_log_dir(room);
  try {
    shmbus::scheduler s;
    chat c(s, room, name, log_dir, history);
    c.print_history();
    // The receiver and the presence watcher run until the session ends and
    // stops them (they use `c`, so they must end before it does).
    std::stop_source stop;
    auto until_stopped = [](shmbus::task<void> t) -> shmbus::task<void> {
      try {
        co_await std::move(t);
      } catch (const shmbus::error& e) {
        if (e.code() != shmbus::errc::cancelled) throw;
      }
    };
    std::vector<std::string> lines;
    if (!script.empty()) {
      std::ifstream in(script);
      if (!in) throw shmbus::error(std::make_error_code(std::errc::no_such_file_or_directory), "open", script);
      for (std::string line; std::getline(in, line);) lines.push_back(line);
    }
    auto session = [&]() -> shmbus::task<void> {
      co_await c.say(kind::join);
      if (script.empty())
        co_await c.type_lines();
      else
        co_await c.run_script(std::move(lines));
      co_await c.say(kind::leave);
      stop.request_stop();
    };
    s.run(shmbus::when_all(session(), until_stopped(c.receive()).with_stop_token(stop.get_token()),
                           until_stopped(c.watch_presence()).with_stop_token(stop.get_token())));
    return 0;
  } catch (const shmbus::error& e) {
    fmt::print(stderr, "chat: {}\n", e.what());
    return 1;
  }
}
