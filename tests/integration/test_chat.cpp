// samples/chat between real processes: three scripted members, a late
// joiner that sees the history, and a member killed with SIGKILL whose
// departure the others notice.
#include <shmbus/bus.hpp>

#include "child_process.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using shmbus::test::helper_process;

namespace {

std::string chat_path() { return shmbus::test::program_from_env("SHMBUS_CHAT"); }

struct room {
  std::string name = fmt::format("test{}", ::getpid());
  fs::path dir = fs::temp_directory_path() / fmt::format("shmbus-chat-test-{}", ::getpid());
  room() { fs::create_directories(dir); }
  ~room() {
    std::error_code ec;
    fs::remove_all(dir, ec);
    try {
      shmbus::bus::remove("chat-" + name);  // the members leave the bus behind
    } catch (const shmbus::error&) {
    }
  }
  std::string script(const std::string& who, const std::vector<std::string>& lines) const {
    const auto path = dir / (who + ".script");
    std::ofstream out(path);
    for (const auto& l : lines) out << l << "\n";
    return path.string();
  }
  std::vector<std::string> member(const std::string& who, const std::string& script_path) const {
    return {chat_path(), "--room", name, "--name", who, "--script", script_path, "--log-dir", (dir / "log").string()};
  }
};

/// The lines of a transcript, in order.
std::vector<std::string> read_all(helper_process& p) {
  std::vector<std::string> lines;
  for (std::string l = p.read_line(); !l.empty() || !lines.empty(); l = p.read_line()) {
    if (l.empty()) break;
    lines.push_back(l);
  }
  return lines;
}

/// "name: text" lines of a transcript, history excluded.
std::vector<std::string> said(const std::vector<std::string>& transcript) {
  std::vector<std::string> out;
  bool history = false;
  for (const auto& l : transcript) {
    if (l.rfind("--- last", 0) == 0) history = true;
    if (l == "--- now ---") {
      history = false;
      continue;
    }
    if (history || l.size() < 11 || l[0] != '[' || l.find("] * ") != std::string::npos) continue;
    out.push_back(l.substr(11));
  }
  return out;
}

}  // namespace

TEST_CASE("three members: every line reaches everyone once, in order per sender; a late joiner sees history",
          "[chat][processes]") {
  room r;
  const std::vector<std::string> names{"alice", "bob", "carol"};
  std::vector<std::unique_ptr<helper_process>> members;
  for (const auto& n : names) {
    const auto path = r.script(n, {"@wait-members 3", "one from " + n, "two from " + n, "three from " + n,
                                   "@wait-lines 9"});
    members.push_back(std::make_unique<helper_process>(r.member(n, path)));
  }
  std::vector<std::vector<std::string>> transcripts;
  for (auto& m : members) {
    transcripts.push_back(read_all(*m));
    CHECK(m->wait() == 0);
  }
  for (const auto& t : transcripts) {
    const auto lines = said(t);
    CHECK(lines.size() == 9);
    for (const auto& n : names) {
      std::vector<std::string> from;
      for (const auto& l : lines)
        if (l.rfind(n + ": ", 0) == 0) from.push_back(l.substr(n.size() + 2));
      CHECK(from == std::vector<std::string>{"one from " + n, "two from " + n, "three from " + n});
    }
  }
  // Everyone left; the history is in the log.
  helper_process late(r.member("dave", r.script("dave", {"@quit"})));
  const auto t = read_all(late);
  CHECK(late.wait() == 0);
  REQUIRE_FALSE(t.empty());
  CHECK(t.front() == "--- last 9 lines of #" + r.name + " ---");
  int history = 0;
  for (const auto& l : t) history += l.rfind("  [", 0) == 0 ? 1 : 0;
  CHECK(history == 9);
}

TEST_CASE("a member killed with SIGKILL is noticed as gone", "[chat][processes]") {
  room r;
  helper_process alice(r.member("alice", r.script("alice", {"@wait-members 2", "@wait-gone mallory", "bye"})));
  helper_process mallory(r.member("mallory", r.script("mallory", {"@wait-members 2", "@wait-lines 1000000"})));
  // Kill mallory once alice knows it is there (alice prints its join or
  // its "here"). Waiting on mallory's side would not do: mallory may see
  // alice join and be killed before its answer reaches alice.
  std::vector<std::string> t;
  for (std::string l = alice.read_line(); l.find("mallory") == std::string::npos; l = alice.read_line()) {
    REQUIRE_FALSE(l.empty());
    t.push_back(l);
  }
  mallory.kill(SIGKILL);
  for (auto& l : read_all(alice)) t.push_back(std::move(l));
  CHECK(alice.wait() == 0);
  bool gone = false;
  for (const auto& l : t) gone = gone || l.find("* mallory is gone") != std::string::npos;
  CHECK(gone);
}
