// The `shmbus` command (tools/, docs/TOOL.md), run as a real process
// against buses and logs that this test creates.
//
// The tool's path comes from SHMBUS_TOOL (set by tools/meson.build). Its
// stdin, stdout and stderr are memfds, so a run is: write stdin, fork/exec,
// wait, read what it wrote; the only synchronisation is waiting for the
// exit (and, for the live tail, a pipe and the subscriber's parked bit).
// Object names carry the pid, so the test may run beside any other.
#include <shmbus/bus.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/log.hpp>
#include <shmbus/region.hpp>
#include <shmbus/scheduler.hpp>

#include "child_process.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

namespace {

using shmbus::test::helper_process;
using shmbus::test::pipe_pair;

const char* tool_path() {
  const char* p = std::getenv("SHMBUS_TOOL");
  REQUIRE(p != nullptr);
  return p;
}

struct run_result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string read_all(int fd) {
  std::string s;
  char buffer[4096];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buffer, sizeof buffer, at);
    REQUIRE(n >= 0);
    if (n == 0) break;
    s.append(buffer, static_cast<std::size_t>(n));
    at += n;
  }
  return s;
}

/// Runs the tool with `args`, `input` on its stdin; waits for it.
run_result run_tool(const std::vector<std::string>& args, std::string_view input = {}) {
  shmbus::unique_fd in(::memfd_create("tool-stdin", MFD_CLOEXEC));
  shmbus::unique_fd out(::memfd_create("tool-stdout", MFD_CLOEXEC));
  shmbus::unique_fd err(::memfd_create("tool-stderr", MFD_CLOEXEC));
  REQUIRE((in && out && err));
  REQUIRE(::write(in.get(), input.data(), input.size()) == static_cast<ssize_t>(input.size()));
  REQUIRE(::lseek(in.get(), 0, SEEK_SET) == 0);
  std::vector<std::string> argv{tool_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(in.get(), 0);
    ::dup2(out.get(), 1);
    ::dup2(err.get(), 2);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  run_result r;
  r.status = shmbus::test::wait_exit(pid);
  r.out = read_all(out.get());
  r.err = read_all(err.get());
  return r;
}

std::string describe(const std::vector<std::string>& args, const run_result& r) {
  std::string cmd = "shmbus";
  for (const auto& a : args) cmd += " " + a;
  return fmt::format("{} -> exit {}\n--- stdout ---\n{}--- stderr ---\n{}", cmd, r.status, r.out, r.err);
}

/// Runs the tool and checks its exit status (printing everything if it differs).
run_result expect(int status, const std::vector<std::string>& args, std::string_view input = {}) {
  run_result r = run_tool(args, input);
  INFO(describe(args, r));
  CHECK(r.status == status);
  return r;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

/// One line, ending in a newline: what every failure prints on stderr.
bool one_line(const std::string& s) {
  return !s.empty() && s.back() == '\n' && s.find('\n') == s.size() - 1;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string name_for(std::string_view what) { return fmt::format("tooltest-{}-{}", what, ::getpid()); }

bool shm_exists(const std::string& object) {
  struct stat st {};
  return ::stat(("/dev/shm/" + object).c_str(), &st) == 0;
}

/// Removes a bus when the test ends, however it ends.
struct bus_cleanup {
  std::string name;
  ~bus_cleanup() {
    try {
      shmbus::bus::remove(name);
    } catch (...) {
    }
  }
};

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string string_of(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

/// Polls `done` (yielding) until it holds or 20 s pass: for states another
/// process reaches that no pipe can announce.
template <class F>
bool eventually(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

constexpr shmbus::channel_options small{.capacity = 64 * 1024};

}  // namespace

TEST_CASE("every sub-command has --help", "[tool]") {
  const std::vector<std::vector<std::string>> commands{
      {}, {"ls"}, {"stat"}, {"tail"}, {"pub"}, {"gc"}, {"log"}, {"log", "stat"}, {"log", "dump"}, {"log", "verify"}};
  for (const auto& c : commands) {
    auto args = c;
    args.push_back("--help");
    const run_result r = expect(0, args);
    std::string usage = "Usage: shmbus";
    for (const auto& word : c) usage += " " + word;
    CHECK(contains(r.out, usage));
    CHECK(r.err.empty());
  }
}

TEST_CASE("bad usage exits 2 with one line on stderr", "[tool]") {
  const std::vector<std::vector<std::string>> commands{
      {},
      {"frobnicate"},
      {"ls", "--bogus"},
      {"stat"},
      {"stat", "a.b"},
      {"stat", "bus", "--interval", "100"},  // --interval needs --watch
      {"tail"},
      {"tail", "no-slash"},
      {"tail", "bus/channel", "--format", "xml"},
      {"tail", "bus/channel", "--count", "0"},
      {"tail", "bus/channel", "--log", "/tmp"},
      {"pub"},
      {"gc", "bad/name"},
      {"log"},
      {"log", "frobnicate"},
      {"log", "stat"},
      {"log", "dump", "/tmp", "--format", "yaml"},
  };
  for (const auto& args : commands) {
    const run_result r = expect(2, args);
    INFO(describe(args, r));
    CHECK(one_line(r.err));
    CHECK(contains(r.err, "shmbus"));
  }
}

TEST_CASE("an unknown bus, channel or log is exit 1 with a clear message", "[tool]") {
  const std::string missing = name_for("missing");
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"ls", missing}, {"stat", missing}, {"tail", missing + "/ch", "--count", "1"}}) {
    const run_result r = expect(1, args);
    CHECK(one_line(r.err));
    CHECK(contains(r.err, fmt::format("no bus '{}'", missing)));
  }
  CHECK_FALSE(shm_exists("shmbus." + missing));  // looking never creates it

  // A bus that exists, a channel that does not.
  const std::string name = name_for("nochannel");
  bus_cleanup cleanup{name};
  auto b = shmbus::bus::open(name);
  {
    const run_result r = expect(1, {"tail", name + "/absent", "--count", "1"});
    CHECK(one_line(r.err));
    CHECK(contains(r.err, fmt::format("no channel 'absent' on bus '{}'", name)));
  }

  // An object named like a bus that is not one.
  const std::string junk = name_for("junk");
  {
    shmbus::region r = shmbus::region::create_shm("/shmbus." + junk, 4096);
    std::memset(r.data(), 0xab, r.size());
  }
  bus_cleanup junk_cleanup{junk};
  for (const auto& args : std::vector<std::vector<std::string>>{{"stat", junk}, {"ls", junk}}) {
    const run_result r = expect(1, args);
    CHECK(one_line(r.err));
    CHECK(contains(r.err, "is not a valid shmbus bus directory"));
  }

  // Directories that are no logs.
  char templ[] = "/tmp/shmbus-tooltest-XXXXXX";
  REQUIRE(::mkdtemp(templ) != nullptr);
  const std::filesystem::path dir = templ;
  for (const auto& args : std::vector<std::vector<std::string>>{{"log", "stat", dir.string()},
                                                                {"log", "dump", dir.string()},
                                                                {"log", "verify", dir.string()},
                                                                {"tail", "--log", dir.string(), "--count", "1"}}) {
    const run_result r = expect(1, args);
    CHECK(one_line(r.err));
    CHECK(contains(r.err, "is not a shmbus log (it has no log.meta)"));
  }
  {
    std::FILE* f = std::fopen((dir / "log.meta").c_str(), "w");
    REQUIRE(f != nullptr);
    for (int i = 0; i < 4096; ++i) std::fputc('z', f);
    std::fclose(f);
  }
  const run_result r = expect(1, {"log", "verify", dir.string()});
  CHECK(one_line(r.err));
  CHECK(contains(r.err, "is not a shmbus log (log.meta has magic"));
  {
    const run_result gone = expect(1, {"log", "stat", (dir / "nothing").string()});
    CHECK(contains(gone.err, "no log at"));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("ls and stat show a live bus, its channel, and a lagging subscriber", "[tool]") {
  const std::string name = name_for("ls");
  bus_cleanup cleanup{name};
  auto b = shmbus::bus::open(name);
  auto sub = b.subscriber<std::uint64_t>("numbers", {}, small);  // reads nothing: it lags
  auto pub = b.publisher<std::uint64_t>("numbers");
  for (std::uint64_t i = 0; i < 5; ++i) REQUIRE(pub.try_publish(i) == shmbus::publish_status::ok);
  const auto pid = ::getpid();

  SECTION("ls BUS") {
    const run_result r = expect(0, {"ls", name});
    CHECK(contains(r.out, fmt::format("bus {} (/dev/shm/shmbus.{}, owner", name, name)));
    CHECK(contains(r.out, fmt::format("participants 1 of 128 entries, 1 alive: pid {} alive", pid)));
    CHECK(contains(r.out, "  channel numbers (owner"));
    CHECK(contains(r.out, "(8 B), policy block, capacity 64 KiB, max message 8 B"));
    CHECK(contains(r.out, "published 5, publishers 1, subscribers 1"));
    CHECK(contains(r.out, fmt::format("publisher slot {}: pid {} alive\n", pub.bytes().slot(), pid)));
    CHECK(contains(r.out, fmt::format("subscriber slot {}: pid {} alive, position 0, lag 320 B",
                                      sub.bytes().slot(), pid)));
    CHECK(contains(r.out, fmt::format(", mode 0600")));
  }
  SECTION("ls lists every bus") {
    const run_result r = expect(0, {"ls"});
    CHECK(contains(r.out, fmt::format("bus {} (", name)));
  }
  SECTION("stat BUS") {
    const run_result r = expect(0, {"stat", name});
    const auto lines = lines_of(r.out);
    REQUIRE(!lines.empty());
    CHECK(contains(lines[0], fmt::format("bus {}: 1 channel, 1 participant (1 alive), sampled over", name)));
    // The channel's row, then the subscriber's: 5 frames of 64 bytes behind.
    bool channel_row = false, subscriber_row = false;
    for (const auto& line : lines) {
      if (line.starts_with("numbers ") && contains(line, " block ") && contains(line, " 320 ") && contains(line, " 5 "))
        channel_row = true;
      if (line.starts_with(fmt::format("  {} ", sub.bytes().slot())) && contains(line, fmt::format(" {} ", pid)) &&
          contains(line, " 320 B ") && contains(line, " 5 "))
        subscriber_row = true;
    }
    INFO(r.out);
    CHECK(channel_row);
    CHECK(subscriber_row);
  }
}

TEST_CASE("tail prints a channel's messages", "[tool]") {
  const std::string name = name_for("tail");
  bus_cleanup cleanup{name};
  auto b = shmbus::bus::open(name);
  auto pub = b.bytes_publisher("words", small);
  for (std::string_view w : {"alpha", "beta", "gamma"}) REQUIRE(pub.try_publish(bytes_of(w)) == shmbus::publish_status::ok);
  const std::string target = name + "/words";

  SECTION("text") {
    const run_result r = expect(0, {"tail", target, "--from-beginning", "--count", "3", "--format", "text"});
    CHECK(r.out == "alpha\nbeta\ngamma\n");
    CHECK(r.err.empty());
  }
  SECTION("json and hex") {
    const run_result j = expect(0, {"tail", target, "-b", "-n", "2", "--format", "json"});
    CHECK(j.out == "{\"sequence\":0,\"length\":5,\"missed\":0,\"text\":\"alpha\"}\n"
                   "{\"sequence\":1,\"length\":4,\"missed\":0,\"text\":\"beta\"}\n");
    const run_result h = expect(0, {"tail", target, "-b", "-n", "1", "-f", "hex"});
    CHECK(h.out == "#0 5 B: 61 6c 70 68 61\n");
  }
  SECTION("a typed channel is shown in hex by default") {
    auto numbers = b.publisher<std::uint32_t>("numbers", small);
    REQUIRE(numbers.try_publish(0x01020304u) == shmbus::publish_status::ok);
    const run_result r = expect(0, {"tail", name + "/numbers", "-b", "-n", "1"});
    CHECK(r.out == "#0 4 B: 04 03 02 01\n");
  }
  SECTION("messages published while it runs") {
    auto ch = b.attach_channel("words");
    const auto parked_before = ch.stats().parked;
    helper_process tail({tool_path(), "tail", target, "--count", "2"});
    // Parked means subscribed and waiting: what is published now reaches it.
    REQUIRE(eventually([&] { return ch.stats().parked > parked_before; }));
    REQUIRE(pub.try_publish(bytes_of("delta")) == shmbus::publish_status::ok);
    REQUIRE(pub.try_publish(bytes_of("epsilon")) == shmbus::publish_status::ok);
    CHECK(tail.read_line() == "delta");
    CHECK(tail.read_line() == "epsilon");
    CHECK(tail.wait() == 0);
  }
}

TEST_CASE("pub publishes the lines of stdin", "[tool]") {
  const std::string name = name_for("pub");
  bus_cleanup cleanup{name};
  auto b = shmbus::bus::open(name);
  auto sub = b.bytes_subscriber("chat", {}, small);

  SECTION("into an existing channel") {
    expect(0, {"pub", name + "/chat"}, "one\ntwo\n\nthree");
    for (std::string_view want : {"one", "two", "", "three"}) {
      const auto m = sub.try_next();
      REQUIRE(m);
      CHECK(string_of(m.data) == want);
    }
    CHECK_FALSE(sub.try_next());
  }
  SECTION("creating the channel") {
    expect(0, {"pub", name + "/fresh"}, "x\ny\n");
    CHECK(b.attach_channel("fresh").stats().published == 2);
  }
  SECTION("not into a typed channel") {
    auto typed = b.publisher<std::uint64_t>("typed", small);
    const run_result r = expect(1, {"pub", name + "/typed"}, "x\n");
    CHECK(one_line(r.err));
    CHECK(contains(r.err, "carries typed messages"));
  }
  SECTION("not a line longer than the channel's largest message") {
    const run_result r = expect(1, {"pub", name + "/chat"}, "short\n" + std::string(5000, 'x') + "\n");
    CHECK(one_line(r.err));
    CHECK(contains(r.err, "line 2 has 5000 bytes, more than the channel's largest message (4096 bytes)"));
    const auto m = sub.try_next();
    REQUIRE(m);
    CHECK(string_of(m.data) == "short");
  }
}

TEST_CASE("log stat, dump, verify and tail --log", "[tool]") {
  char templ[] = "/tmp/shmbus-tooltest-XXXXXX";
  REQUIRE(::mkdtemp(templ) != nullptr);
  const std::filesystem::path dir = templ;
  struct dir_cleanup {
    std::filesystem::path d;
    ~dir_cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{dir};

  // 100 records of 1000 bytes (1056-byte frames): two segments of 64 KiB,
  // with a padding frame at the end of the first. A named cursor after 3.
  std::vector<shmbus::position> at;
  std::vector<std::string> records;
  shmbus::position cursor_at = 0;
  shmbus::position tail = 0;
  {
    shmbus::scheduler s;
    auto log = shmbus::byte_log::open(s, dir, {.segment_size = 64 * 1024, .max_record = 4096});
    for (int i = 0; i < 100; ++i)
      records.push_back(fmt::format("record-{} ", i) + std::string(1000 - fmt::format("record-{} ", i).size(), 'a' + i % 26));
    s.run([&]() -> shmbus::task<void> {
      for (const auto& r : records) at.push_back(co_await log.append(bytes_of(r)));
      auto reader = log.reader(shmbus::from::cursor("billing"));
      for (int i = 0; i < 3; ++i) REQUIRE(reader.try_next());
      co_await reader.commit();
      cursor_at = reader.current();
    }());
    tail = log.tail();
  }
  REQUIRE(cursor_at == at[3]);
  const std::string d = dir.string();

  {
    const run_result r = expect(0, {"log", "stat", d});
    CHECK(contains(r.out, fmt::format("log {}\n", d)));
    CHECK(contains(r.out, "segment size 64 KiB"));
    CHECK(contains(r.out, "first position 0\n"));
    CHECK(contains(r.out, fmt::format("tail position {} (sequence 100)", tail)));
    CHECK(contains(r.out, fmt::format("durable position {} (sequence 100)", tail)));
    std::size_t files = 0;  // two hold records; the appender may have made the next one ahead
    for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.path().extension() == ".seg" ? 1 : 0;
    CHECK(contains(r.out, fmt::format("segments {} ({} KiB on disk)", files, files * 64)));
    CHECK(contains(r.out, "00000000000000065536.seg  positions 65536 .. 131072"));
    CHECK(contains(r.out, fmt::format("billing  position {}", cursor_at)));
    CHECK(contains(r.out, "handles 0\n"));
  }
  {
    const run_result r = expect(0, {"log", "dump", d});
    const auto lines = lines_of(r.out);
    REQUIRE(lines.size() == 100);
    CHECK(lines[3] == fmt::format("@{} #3 1000 B: {}", at[3], records[3]));
    CHECK(lines[99] == fmt::format("@{} #99 1000 B: {}", at[99], records[99]));
    const run_result all = expect(0, {"log", "dump", d, "--all", "--count", "100"});
    CHECK(lines_of(all.out).size() == 101);
    CHECK(contains(all.out, " padding ("));
    const run_result json = expect(0, {"log", "dump", d, "--format", "json", "--from", std::to_string(at[1]), "-n", "1"});
    CHECK(json.out == fmt::format("{{\"position\":{},\"sequence\":1,\"length\":1000,\"text\":\"{}\"}}\n", at[1], records[1]));
  }
  {
    const run_result r = expect(0, {"log", "verify", d});
    CHECK(contains(r.out, fmt::format("checked 100 records (1 padding, 0 aborted frames) from position 0 to {}, 1 cursors",
                                      tail)));
    CHECK(contains(r.out, ": ok\n"));
    CHECK(r.err.empty());  // no progress bar: stderr is no terminal
  }
  {
    const run_result r = expect(0, {"tail", "--log", d, "--from-beginning", "--count", "2", "--format", "text"});
    CHECK(r.out == records[0] + "\n" + records[1] + "\n");
  }

  // One flipped payload byte in record 3.
  {
    const auto segment = dir / "00000000000000000000.seg";
    shmbus::unique_fd fd(::open(segment.c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(fd);
    const off_t offset = static_cast<off_t>(at[3] + 32 + 10);
    char c = 0;
    REQUIRE(::pread(fd.get(), &c, 1, offset) == 1);
    c = static_cast<char>(c ^ 0x20);
    REQUIRE(::pwrite(fd.get(), &c, 1, offset) == 1);
  }
  {
    const run_result r = expect(1, {"log", "verify", d});
    CHECK(contains(r.out, fmt::format("checked 3 records (0 padding, 0 aborted frames) from position 0 to {}", at[3])));
    CHECK(one_line(r.err));
    CHECK(contains(r.err, fmt::format("the first bad record is at position {}: it fails its CRC32C", at[3])));
  }
  {
    const run_result r = expect(1, {"log", "dump", d});
    CHECK(lines_of(r.out).size() == 3);
    CHECK(contains(r.err, fmt::format("the record at position {} fails its CRC32C", at[3])));
  }
}

TEST_CASE("gc removes what only dead processes used and keeps what lives", "[tool]") {
  const std::string dead = name_for("gc-dead");
  const std::string idle = name_for("gc-idle");
  const std::string live = name_for("gc-live");
  bus_cleanup c1{dead}, c2{idle}, c3{live};

  // A bus whose only participant, a child, is killed while it publishes.
  pipe_pair ready;
  pipe_pair never;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto b = shmbus::bus::open(dead);
    auto p = b.bytes_publisher("events", small);
    if (p.try_publish(bytes_of("last words")) != shmbus::publish_status::ok) ::_exit(102);
    ready.child_send('r');
    never.child_receive();  // until killed
    ::_exit(0);
  }
  CHECK(ready.receive() == 'r');
  shmbus::test::kill_and_reap(child, SIGKILL);
  CHECK(contains(expect(0, {"ls", dead}).out, fmt::format("pid {} dead", child)));

  // A bus nobody has open, with a channel nobody uses.
  {
    auto b = shmbus::bus::open(idle);
    (void)b.open_channel("unused", small, {});
  }
  // A live bus: one channel in use, one not.
  auto b = shmbus::bus::open(live);
  auto sub = b.bytes_subscriber("busy", {}, small);
  (void)b.open_channel("idle", small, {});

  SECTION("removes") {
    {
      const run_result r = expect(0, {"gc", "--dry-run", dead, idle, live});
      CHECK(contains(r.out, fmt::format("would remove bus {} (no live participant, 1 dead; channels: events)", dead)));
      CHECK(contains(r.out, fmt::format("would remove bus {} (no participant; channels: unused)", idle)));
      CHECK(contains(r.out, fmt::format("would remove channel {}/idle", live)));
      CHECK(shm_exists("shmbus." + dead));
      CHECK(shm_exists("shmbus." + live + ".idle"));
    }
    const run_result r = expect(0, {"gc", dead, idle, live});
    CHECK(contains(r.out, fmt::format("removed bus {} (no live participant, 1 dead; channels: events)", dead)));
    CHECK(contains(r.out, fmt::format("removed bus {} (no participant; channels: unused)", idle)));
    CHECK(contains(r.out, fmt::format("removed channel {}/idle (no live publisher or subscriber)", live)));
    CHECK_FALSE(shm_exists("shmbus." + dead));
    CHECK_FALSE(shm_exists("shmbus." + dead + ".events"));
    CHECK_FALSE(shm_exists("shmbus." + idle));
    CHECK_FALSE(shm_exists("shmbus." + idle + ".unused"));
    CHECK(shm_exists("shmbus." + live));
    CHECK(shm_exists("shmbus." + live + ".busy"));
    CHECK_FALSE(shm_exists("shmbus." + live + ".idle"));
    // Nothing left to do the second time.
    CHECK(contains(expect(0, {"gc", dead, idle, live}).out, "nothing to remove"));
  }
  SECTION("reports stray objects and removes them only with --force") {
    const std::string junk = name_for("gc-junk");
    bus_cleanup c4{junk};
    {
      shmbus::region r = shmbus::region::create_shm("/shmbus." + junk, 4096);
      std::memset(r.data(), 0x5a, r.size());
    }
    const run_result kept = expect(0, {"gc", junk});
    CHECK(contains(kept.out, fmt::format("stray: /dev/shm/shmbus.{} is not a valid shmbus bus directory", junk)));
    CHECK(contains(kept.out, "kept (--force removes it)"));
    CHECK(shm_exists("shmbus." + junk));
    const run_result removed = expect(0, {"gc", "--force", junk});
    CHECK(contains(removed.out, fmt::format("removed stray: /dev/shm/shmbus.{} is not", junk)));
    CHECK_FALSE(shm_exists("shmbus." + junk));
  }
}
