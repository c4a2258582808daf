// The durable log between real processes: a writer SIGKILLed at many
// moments never loses an acknowledged record and never leaves a partial
// one visible; two appending processes and a live reader in a third.
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>

#include "child_process.hpp"
#include "core/sanitizers.hpp"
#include "log_records.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <vector>

namespace fs = std::filesystem;
using shmbus::test::helper_process;

namespace {

std::string helper_path() { return shmbus::test::program_from_env("SHMBUS_LOG_HELPER"); }

using shmbus::test::temp_dir;

struct ack {
  std::uint32_t writer;
  std::uint64_t index;
  shmbus::position at;
};

}  // namespace

TEST_CASE("SIGKILL at 60 moments: every acknowledged record survives whole, nothing partial is visible",
          "[log][processes][crash]") {
  temp_dir dir("crash");
  std::mt19937 rng(20261121);
  std::vector<ack> acked;
  constexpr std::uint32_t rounds = 60;
  for (std::uint32_t round = 0; round < rounds; ++round) {
    helper_process writer({helper_path(), "append", dir.path.string(), std::to_string(round), "1000000000", "sync"});
    const int wanted = 1 + static_cast<int>(rng() % 40);
    for (int k = 0; k < wanted; ++k) {
      std::istringstream line(writer.read_line());
      ack a{round, 0, 0};
      REQUIRE(line >> a.index >> a.at);
      CHECK(a.index == static_cast<std::uint64_t>(k));
      acked.push_back(a);
    }
    writer.kill(SIGKILL);  // in the middle of its next append or sync

    // Reopen alone: recovery runs. Every acknowledged record is there, whole.
    shmbus::scheduler s;
    auto log = shmbus::byte_log::open(s, dir.path);
    REQUIRE(log.recovery().scanned);
    std::uint64_t missing = 0;
    for (const ack& a : acked) {
      auto reader = log.reader(shmbus::from::at_position(a.at));
      auto r = reader.try_next();
      shmbus::test::log_record_id id{};
      if (!r || r.at != a.at || !shmbus::test::parse_log_record(r.data, id) || id.writer != a.writer ||
          id.index != a.index)
        ++missing;
    }
    CHECK(missing == 0);
    // Everything readable is whole: no partial record, no corruption.
    auto all = log.reader(shmbus::from::beginning());
    std::uint64_t records = 0;
    for (const auto& r : all.available()) {
      shmbus::test::log_record_id id{};
      CHECK(shmbus::test::parse_log_record(r.data, id));
      ++records;
    }
    CHECK(records >= acked.size());
    CHECK(log.durable() == log.tail());
  }
}

TEST_CASE("two appending processes and a live reader in a third: every record once, in order", "[log][processes]") {
  temp_dir dir("shared");
#ifdef SHMBUS_TSAN
  const std::string count = "2000";
#else
  const std::string count = "50000";
#endif
  {
    shmbus::scheduler s;
    auto log = shmbus::byte_log::open(s, dir.path);  // created before anyone tails it
  }
  helper_process reader({helper_path(), "tail", dir.path.string(), "2", count});
  REQUIRE(reader.read_line() == "ready");
  helper_process a({helper_path(), "append", dir.path.string(), "0", count, "none"});
  helper_process b({helper_path(), "append", dir.path.string(), "1", count, "none"});
  CHECK(a.wait() == 0);
  CHECK(b.wait() == 0);
  CHECK(reader.wait() == 0);
  shmbus::scheduler s;
  auto log = shmbus::byte_log::open(s, dir.path);
  CHECK(log.recovery().bytes_cut == 0);
  CHECK(log.reader(shmbus::from::beginning()).available().size() == 2 * std::stoull(count));
}

TEST_CASE("a writer SIGKILLed between claim and commit does not stall the others", "[log][processes][liveness]") {
  temp_dir dir("dead-writer");
  shmbus::scheduler s;
  auto log = shmbus::byte_log::open(s, dir.path);
  std::vector<std::byte> rec;
  shmbus::test::make_log_record(rec, 0, 0);
  s.run(log.append(rec));
  auto reader = log.reader(shmbus::from::beginning(), {.spin = std::chrono::nanoseconds(0)});
  helper_process claimer({helper_path(), "claim", dir.path.string()});
  REQUIRE(claimer.read_line() == "claimed");
  claimer.kill(SIGKILL);
  shmbus::test::make_log_record(rec, 0, 1);
  const shmbus::position after = s.run(log.append(rec));  // durable only once the dead claim is repaired
  CHECK(log.durable() == log.tail());
  auto read_two = [&]() -> shmbus::task<std::vector<std::uint64_t>> {
    std::vector<std::uint64_t> seen;
    for (int i = 0; i < 2; ++i) {
      auto r = co_await reader.next();
      shmbus::test::log_record_id id{};
      if (shmbus::test::parse_log_record(r.data, id)) seen.push_back(id.index);
    }
    co_return seen;
  };
  CHECK(s.run(read_two()) == std::vector<std::uint64_t>{0, 1});
  CHECK(after > 0);
}
