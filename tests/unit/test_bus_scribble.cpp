// A bus directory is shared memory too: any process of the user may write
// anything into it. As tests/unit/test_channel_scribble.cpp does for a
// channel, a seeded scribbler writes words into a live directory (its
// header, channel entries, participant entries), then the bus handle that
// was there and a new one carry on: list, open channels by name, publish,
// remove what is unused. What must hold whatever was written:
//   - nothing crashes, hangs or reads outside the region;
//   - every name a listing returns is a valid name;
//   - what fails, fails with a shmbus::error (or the errno of a refused
//     system call, a std::system_error), never another exception;
//   - bus::remove() still removes the bus and every object under its name.
// Real objects in /dev/shm, named after the test process and the seed.
#include <shmbus/bus.hpp>
#include <shmbus/region.hpp>

#include "bus/directory_layout.hpp"
#include "scribbler.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <optional>
#include <string>
#include <span>
#include <vector>

using shmbus::bus;

namespace {

namespace bl = shmbus::detail::bus_layout;
using shmbus::test::scribbler;
using shmbus::test::tolerate_errors;

struct outcome_counts {
  std::uint64_t listed = 0;   ///< channels listed after a scribble
  std::uint64_t opened = 0;   ///< channels opened by name after a scribble
  std::uint64_t refused = 0;  ///< operations refused with an error
};

shmbus::channel_options small_channel() {
  shmbus::channel_options o;
  o.capacity = 4096;
  o.max_message = 64;
  o.max_publishers = 2;
  o.max_subscribers = 2;
  return o;
}

/// Runs `step`; an error it throws is counted, anything else fails the test.

/// Writes one word into the directory: its header, a channel entry or a
/// participant entry, with the geometry it was made with (the header's
/// copy may be scribbled already). Values near this process's pid or an
/// entry count are likely.
void scribble(scribbler& rng, shmbus::region& directory, std::uint32_t channels, std::uint32_t participants) {
  const std::size_t channel_bytes = std::size_t{channels} * bl::channel_entry_size;
  const std::size_t participant_bytes = std::size_t{participants} * bl::participant_entry_size;
  std::size_t offset = 0;
  const std::uint64_t where = rng.below(100);
  if (where < 20) {
    offset = rng.below(80);  // the header's fields
  } else if (where < 70) {
    offset = bl::header_size + rng.below(channel_bytes);
  } else {
    offset = bl::header_size + channel_bytes + rng.below(participant_bytes);
  }
  const auto near = static_cast<std::uint64_t>(rng.chance(50) ? ::getpid() : channels);
  rng.write_word(directory.data(), directory.size(), offset, near, 64);
}

void check_listing(const bus& b, outcome_counts& counts) {
  for (const shmbus::channel_info& c : b.channels()) {
    CAPTURE(c.name);
    CHECK(bus::valid_name(c.name));
    ++counts.listed;
  }
  for (const shmbus::participant_info& p : b.participants()) (void)p;
}

void run_seed(std::uint64_t seed, outcome_counts& counts) {
  scribbler rng(seed);
  const std::string name = fmt::format("scribble-{}-{}", ::getpid(), seed);
  shmbus::bus_options options;
  options.max_channels = static_cast<std::uint32_t>(1 + rng.below(6));
  options.max_participants = static_cast<std::uint32_t>(1 + rng.below(4));
  options.init_timeout = std::chrono::milliseconds(10);  // a magic scribbled away: do not wait long
  const std::array<std::string, 3> names{"alpha", "beta", "gamma"};
  {
    std::optional<bus> b(bus::open(name, options));
    std::vector<shmbus::byte_publisher> publishers;
    const std::uint64_t made = rng.below(names.size() + 1);
    for (std::uint64_t i = 0; i < made && i < options.max_channels; ++i)
      publishers.push_back(b->bytes_publisher(names[i], small_channel()));

    auto directory = shmbus::region::open_shm(bus::object_name(name));
    const std::uint64_t scribbles = 1 + rng.below(6);
    for (std::uint64_t i = 0; i < scribbles; ++i)
      scribble(rng, directory, options.max_channels, options.max_participants);

    // The handle that was there carries on.
    tolerate_errors([&] { check_listing(*b, counts); }, counts.refused);
    for (const std::string& channel : names) {
      tolerate_errors(
          [&] {
            auto pub = b->bytes_publisher(channel, small_channel());
            CHECK(pub.try_publish(std::as_bytes(std::span(channel))) != shmbus::publish_status::too_large);
            ++counts.opened;
          },
          counts.refused);
    }
    // A new handle, as another process opening the bus now.
    tolerate_errors(
        [&] {
          bus again = bus::open(name, options);
          check_listing(again, counts);
          auto sub = again.bytes_subscriber(names[rng.below(names.size())], {}, small_channel());
          (void)sub.try_next();
          (void)again.remove_unused();
        },
        counts.refused);
    publishers.clear();
    tolerate_errors([&] { (void)b->remove_unused(); }, counts.refused);
  }
  // Removal goes by the objects' names in /dev/shm, not by what the
  // directory says: nothing of this bus is left.
  tolerate_errors([&] { (void)bus::remove(name); }, counts.refused);
  struct stat st {};
  CHECK(::stat(("/dev/shm" + bus::object_name(name)).c_str(), &st) != 0);
  for (const std::string& channel : names)
    CHECK(::stat(("/dev/shm" + bus::object_name(name, channel)).c_str(), &st) != 0);
}

}  // namespace

TEST_CASE("words scribbled into a live bus directory never crash or hang, and the bus can still be removed",
          "[bus][scribble]") {
  outcome_counts counts;
  const std::uint64_t seeds = shmbus::test::scribble_seeds(200);
  for (std::uint64_t seed = 1; seed <= seeds; ++seed) {
    CAPTURE(seed);
    run_seed(seed, counts);
  }
  INFO(fmt::format("listed {}, opened {}, refused {}", counts.listed, counts.opened, counts.refused));
  CHECK(counts.listed > 0);
  CHECK(counts.opened > 0);
  CHECK(counts.refused > 0);
}
