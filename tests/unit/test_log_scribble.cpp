// A durable log's files are mapped MAP_SHARED by every handle, so log.meta
// is shared memory like a channel's region, and its segments are files
// anyone of the user may write. As tests/unit/test_channel_scribble.cpp
// does for a channel, a seeded scribbler writes words into a live log
// (log.meta's fields, claim and durable words, slots; the records of the
// first segment), then the handle that was there appends, syncs and
// reads, and the log is opened again (recovery) and read. What must hold
// whatever was written:
//   - nothing crashes, hangs or reads outside the files;
//   - every record read is at most max_record bytes, every byte of it read;
//   - what fails, fails with a std::system_error (a shmbus::error, or the
//     errno of a refused call), never another exception.
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>

#include "log/log_layout.hpp"
#include "scribbler.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <vector>

namespace {

namespace ll = shmbus::detail::log_layout;
using shmbus::test::scribbler;
using shmbus::test::tolerate_errors;

struct outcome_counts {
  std::uint64_t read = 0;      ///< records read after a scribble
  std::uint64_t appended = 0;  ///< appends after a scribble that went through
  std::uint64_t refused = 0;   ///< operations refused with an error
};

shmbus::log_options small_log() {
  shmbus::log_options o;
  o.segment_size = ll::min_segment_size;
  o.max_record = 256;
  return o;
}

/// Writes one word into log.meta or into the first segment, through the
/// file (which every mapping of it shares).
void scribble(scribbler& rng, const std::filesystem::path& dir, std::uint64_t tail) {
  const std::filesystem::path first_segment = dir / "00000000000000000000.seg";
  const bool meta = rng.chance(70) || !std::filesystem::exists(first_segment);  // nothing appended yet
  const std::filesystem::path file = meta ? dir / "log.meta" : first_segment;
  const std::size_t size = meta ? ll::meta_size : ll::min_segment_size;
  std::size_t offset = 0;
  if (!meta) {
    offset = rng.below(std::max<std::uint64_t>(tail, 64));  // the records written so far
  } else if (rng.chance(50)) {
    offset = 256 + rng.below(512);  // claim, durable and first positions, parked readers
  } else {
    offset = rng.below(size);
  }
  std::vector<std::byte> bytes(size);
  const int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pread(fd, bytes.data(), size, 0) == static_cast<ssize_t>(size));
  rng.write_word(bytes.data(), size, offset, tail, ll::min_segment_size);
  REQUIRE(::pwrite(fd, bytes.data(), size, 0) == static_cast<ssize_t>(size));
  ::close(fd);
}

void read_all(shmbus::byte_log& log, outcome_counts& counts) {
  auto reader = log.reader(shmbus::from::beginning());
  for (int i = 0; i < 4096; ++i) {
    const shmbus::log_record r = reader.try_next();
    if (!r) return;
    REQUIRE(r.data.size() <= small_log().max_record);
    std::uint64_t sum = 0;
    for (const std::byte b : r.data) sum += static_cast<std::uint8_t>(b);
    (void)sum;
    ++counts.read;
  }
}

void append_some(shmbus::byte_log& log, scribbler& rng, outcome_counts& counts) {
  std::vector<std::byte> record(small_log().max_record, std::byte{0x6b});
  const std::uint64_t n = rng.below(32);
  for (std::uint64_t i = 0; i < n; ++i) {
    (void)log.try_append(std::span(record).first(rng.below(record.size() + 1)));
    ++counts.appended;
  }
}

void run_seed(std::uint64_t seed, outcome_counts& counts) {
  scribbler rng(seed);
  shmbus::test::temp_dir dir("scribble");
  shmbus::scheduler s;
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_log());
    std::vector<std::byte> record(small_log().max_record, std::byte{0x2e});
    const std::uint64_t before = rng.below(200);
    for (std::uint64_t i = 0; i < before; ++i) (void)log.try_append(std::span(record).first(rng.below(257)));
    if (rng.chance(50)) s.run(log.sync());

    const std::uint64_t scribbles = 1 + rng.below(6);
    for (std::uint64_t i = 0; i < scribbles; ++i) scribble(rng, dir.path, log.tail());

    // The handle that was there carries on.
    tolerate_errors([&] { append_some(log, rng, counts); }, counts.refused);
    tolerate_errors([&] { s.run(log.sync()); }, counts.refused);
    tolerate_errors([&] { read_all(log, counts); }, counts.refused);
  }
  // Opened again: recovery reads what the files say.
  tolerate_errors(
      [&] {
        auto log = shmbus::byte_log::open(s, dir.path, small_log());
        read_all(log, counts);
        append_some(log, rng, counts);
        s.run(log.sync());
        read_all(log, counts);
      },
      counts.refused);
}

}  // namespace

TEST_CASE("words scribbled into a live log's files never crash or hang it", "[log][scribble]") {
  outcome_counts counts;
  const std::uint64_t seeds = shmbus::test::scribble_seeds(100);
  for (std::uint64_t seed = 1; seed <= seeds; ++seed) {
    CAPTURE(seed);
    run_seed(seed, counts);
  }
  INFO(fmt::format("read {}, appended {}, refused {}", counts.read, counts.appended, counts.refused));
  CHECK(counts.read > 0);
  CHECK(counts.appended > 0);
  CHECK(counts.refused > 0);
}
