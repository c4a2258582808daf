// samples/service: a sensor and an aggregator in two processes, stopped with
// SIGTERM; the summaries in the aggregator's durable log add up to exactly
// the readings the sensor sent.
#include <shmbus/bus.hpp>
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>

#include "child_process.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace fs = std::filesystem;
using shmbus::test::helper_process;

namespace {

struct summary {
  std::uint64_t first;
  std::uint64_t count;
  std::int64_t sum;
  std::int64_t min;
  std::int64_t max;
  static constexpr std::string_view shmbus_type_name = "samples.service.summary";
};

std::string service_path() { return shmbus::test::program_from_env("SHMBUS_SERVICE"); }

}  // namespace

TEST_CASE("sensor and aggregator stop cleanly on SIGTERM and nothing is lost", "[service][processes]") {
  const std::string bus = fmt::format("service-test-{}", ::getpid());
  const fs::path dir = fs::temp_directory_path() / bus;
  fs::remove_all(dir);
  helper_process aggregator({service_path(), "aggregator", bus, dir.string(), "--window", "7"});
  REQUIRE(aggregator.read_line() == "aggregator: ready");
  helper_process sensor({service_path(), "sensor", bus, "--interval-ms", "1"});
  for (int summaries = 0; summaries < 5; ++summaries) REQUIRE(aggregator.read_line().rfind("summary ", 0) == 0);

  REQUIRE(::kill(sensor.pid(), SIGTERM) == 0);
  std::uint64_t sent = 0;
  std::int64_t sent_sum = 0;
  {
    std::string line = sensor.read_line();
    REQUIRE(std::sscanf(line.c_str(), "sensor: sent %lu readings, sum %ld", &sent, &sent_sum) == 2);
  }
  CHECK(sensor.wait() == 0);

  REQUIRE(::kill(aggregator.pid(), SIGTERM) == 0);
  std::string line;
  do line = aggregator.read_line();
  while (line.rfind("summary ", 0) == 0);
  std::uint64_t received = 0;
  std::int64_t received_sum = 0;
  REQUIRE(std::sscanf(line.c_str(), "aggregator: %lu readings, sum %ld", &received, &received_sum) == 2);
  CHECK(aggregator.wait() == 0);
  CHECK(received == sent);
  CHECK(received_sum == sent_sum);

  // The durable log of summaries covers every reading exactly once.
  shmbus::scheduler s;
  auto log = shmbus::log<summary>::open(s, dir);
  auto reader = log.reader(shmbus::from::beginning());
  std::uint64_t next_first = 0, count = 0;
  std::int64_t sum = 0;
  for (const auto& r : reader.available()) {
    const summary& x = shmbus::log<summary>::value(r);
    CHECK(x.first == next_first);
    next_first = x.first + x.count;
    count += x.count;
    sum += x.sum;
  }
  CHECK(count == sent);
  CHECK(sum == sent_sum);
  fs::remove_all(dir);
  CHECK(shmbus::bus::remove(bus));
}
