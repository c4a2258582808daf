// The durable log in one process: round trips across segments and reopen,
// group commit, torn tails and corruption, cursors, retention, readers that
// wait, and a full disk. Crashes with real processes are in
// tests/integration/test_log_processes.cpp.
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/when_all.hpp>

#include "core/sanitizers.hpp"
#include "log/log_layout.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <fstream>
#include <vector>

namespace fs = std::filesystem;
using shmbus::position;
using shmbus::task;

namespace {

using shmbus::test::temp_dir;

/// Record i: its length (0..250) and bytes derive from i alone.
std::vector<std::byte> record(std::uint64_t i) {
  std::vector<std::byte> r((i * 7919) % 251);
  for (std::size_t k = 0; k < r.size(); ++k) r[k] = static_cast<std::byte>((i + k * 31) & 0xff);
  if (r.size() >= 8) std::memcpy(r.data(), &i, 8);
  return r;
}

bool is_record(std::span<const std::byte> data, std::uint64_t i) {
  const auto want = record(i);
  return data.size() == want.size() && (want.empty() || std::memcmp(data.data(), want.data(), want.size()) == 0);
}

shmbus::log_options small_segments() {
  shmbus::log_options o;
  o.segment_size = 1 << 20;
  o.max_record = 4096;
  return o;
}

#ifdef SHMBUS_SANITIZED
constexpr std::uint64_t many = 200'000;
#else
constexpr std::uint64_t many = 1'000'000;
#endif

}  // namespace

TEST_CASE("a million records of mixed sizes round-trip across segments and a reopen", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  std::vector<position> positions;
  positions.reserve(many);
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_segments());
    CHECK(log.recovery().scanned);
    for (std::uint64_t i = 0; i < many; ++i) positions.push_back(log.try_append(record(i)));
    s.run(log.sync());
    CHECK(log.durable() == log.tail());
    CHECK(log.tail() > 8 * small_segments().segment_size);  // several segments
  }
  auto log = shmbus::byte_log::open(s, dir.path);
  CHECK(log.recovery().bytes_cut == 0);
  auto reader = log.reader(shmbus::from::beginning());
  std::uint64_t bad = 0;
  for (std::uint64_t i = 0; i < many; ++i) {
    auto r = reader.try_next();
    if (!r || r.at != positions[i] || !is_record(r.data, i)) ++bad;
  }
  CHECK(bad == 0);
  CHECK_FALSE(reader.try_next());
  auto middle = log.reader(shmbus::from::at_position(positions[many / 2]));
  auto r = middle.try_next();
  REQUIRE(r);
  CHECK(is_record(r.data, many / 2));
}

TEST_CASE("group commit: concurrent sync appends share few fsyncs", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  auto log = shmbus::byte_log::open(s, dir.path, small_segments());
  constexpr int appenders = 200;
  std::vector<std::vector<std::byte>> payloads;
  for (int i = 0; i < appenders; ++i) payloads.push_back(record(static_cast<std::uint64_t>(i)));
  std::vector<task<position>> tasks;
  for (int i = 0; i < appenders; ++i) tasks.push_back(log.append(payloads[static_cast<std::size_t>(i)]));
  const auto positions = s.run(shmbus::when_all(std::move(tasks)));
  CHECK(positions.size() == appenders);
  CHECK(log.durable() == log.tail());
  CHECK(log.syncs_issued() >= 1);
  CHECK(log.syncs_issued() <= appenders / 10);
}

TEST_CASE("a torn tail after the durable position is cut; corruption before it is reported", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  position durable_end = 0;
  std::vector<position> positions;
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_segments());
    for (std::uint64_t i = 0; i < 100; ++i) positions.push_back(log.try_append(record(i)));
    s.run(log.sync());
    durable_end = log.durable();
    for (std::uint64_t i = 100; i < 120; ++i) positions.push_back(log.try_append(record(i)));
  }
  // A crash tore record 110: one payload byte flipped after the durable position.
  {
    std::fstream f(dir.path / "00000000000000000000.seg", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(positions[110] + 32 + 9));
    f.put('\x5a' ^ 0x7f);
  }
  {
    auto log = shmbus::byte_log::open(s, dir.path);
    const auto& rep = log.recovery();
    CHECK(rep.scanned);
    CHECK(rep.durable == durable_end);
    CHECK(rep.recovered_tail == positions[110]);
    CHECK(rep.records_after_durable == 10);
    CHECK(rep.bytes_cut > 0);
    CHECK(log.tail() == positions[110]);
    auto reader = log.reader(shmbus::from::beginning());
    const auto all = reader.available();
    REQUIRE(all.size() == 110);
    for (std::uint64_t i = 0; i < 110; ++i) CHECK(is_record(all[i].data, i));
    // The log goes on from there.
    const position p = log.try_append(record(999));
    CHECK(p == positions[110]);
    s.run(log.sync());
  }
  // A flip before the durable position is corruption, named by position.
  {
    std::fstream f(dir.path / "00000000000000000000.seg", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(positions[50] + 32 + 9));
    f.put('\x01');
  }
  auto log = shmbus::byte_log::open(s, dir.path);
  auto reader = log.reader(shmbus::from::beginning());
  for (int i = 0; i < 50; ++i) REQUIRE(reader.try_next());
  try {
    (void)reader.try_next();
    FAIL("a corrupted durable record was delivered or skipped");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
    CHECK_THAT(e.what(), Catch::Contains(std::to_string(positions[50])));
  }
}

TEST_CASE("a durable-only reader sees records once they are synced; a live reader is woken", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  auto log = shmbus::byte_log::open(s, dir.path, small_segments());
  auto durable_reader = log.reader(shmbus::from::beginning(), {.durable_only = true});
  log.try_append(record(1));
  CHECK_FALSE(durable_reader.try_next());
  s.run(log.sync());
  auto r = durable_reader.try_next();
  REQUIRE(r);
  CHECK(is_record(r.data, 1));
  auto live = log.reader(shmbus::from::end(), {.spin = std::chrono::nanoseconds(0)});
  auto wait = [&]() -> task<std::uint64_t> {
    std::uint64_t n = 0;
    for (int i = 0; i < 3; ++i) {
      auto rec = co_await live.next();
      if (is_record(rec.data, static_cast<std::uint64_t>(i) + 10)) ++n;
    }
    co_return n;
  };
  auto produce = [&]() -> task<void> {
    for (std::uint64_t i = 10; i < 13; ++i) {
      co_await s.schedule();
      co_await log.append(record(i), shmbus::durability::none);
    }
  };
  auto [n, done] = s.run(shmbus::when_all(wait(), produce()));
  (void)done;
  CHECK(n == 3);
}

TEST_CASE("named cursors persist across reopen; they can be listed, reset and removed", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_segments());
    for (std::uint64_t i = 0; i < 20; ++i) log.try_append(record(i));
    s.run(log.sync());
    auto billing = log.reader(shmbus::from::cursor("billing"));
    for (int i = 0; i < 7; ++i) REQUIRE(billing.try_next());
    s.run(billing.commit());
    auto anonymous = log.reader(shmbus::from::beginning());
    CHECK_THROWS_AS(s.run(anonymous.commit()), shmbus::error);
    CHECK_THROWS_AS(log.reader(shmbus::from::cursor("bad/name")), shmbus::error);
  }
  auto log = shmbus::byte_log::open(s, dir.path);
  const auto list = log.cursors();
  REQUIRE(list.size() == 1);
  CHECK(list[0].name == "billing");
  auto billing = log.reader(shmbus::from::cursor("billing"));
  auto r = billing.try_next();
  REQUIRE(r);
  CHECK(is_record(r.data, 7));
  log.reset_cursor("billing", 0);
  auto again = log.reader(shmbus::from::cursor("billing"));
  REQUIRE(again.try_next());
  CHECK(again.current() > 0);
  CHECK(log.remove_cursor("billing"));
  CHECK_FALSE(log.remove_cursor("billing"));
  CHECK(log.cursors().empty());
}

TEST_CASE("retention drops whole old segments; a reader behind it is told the oldest position", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  shmbus::log_options o;
  o.segment_size = 64 * 1024;
  o.max_record = 1024;
  o.retain_bytes = 4 * o.segment_size;
  auto log = shmbus::byte_log::open(s, dir.path, o);
  auto behind = log.reader(shmbus::from::beginning());
  std::vector<std::byte> kb(1000, std::byte{7});
  for (int i = 0; i < 1000; ++i) {
    log.try_append(kb);
    if (i % 50 == 0) s.run(log.sync());
  }
  s.run(log.sync());
  log.enforce_retention();
  CHECK(log.first() > 0);
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) files += e.path().extension() == ".seg" ? 1 : 0;
  CHECK(files <= 6);
  try {
    (void)behind.try_next();
    FAIL("read a dropped segment");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::lagged);
    CHECK_THAT(e.what(), Catch::Contains(std::to_string(log.first())));
  }
  auto from_first = log.reader(shmbus::from::beginning());
  CHECK(from_first.try_next());
}

TEST_CASE("oversized records are refused; a log of another kind or version is refused", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_segments());
    std::vector<std::byte> big(4097);
    CHECK_THROWS_AS(log.try_append(big), shmbus::error);
    CHECK(log.tail() == 0);
  }
  {
    std::fstream f(dir.path / "log.meta", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    const std::uint32_t v = 7;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  try {
    (void)shmbus::byte_log::open(s, dir.path);
    FAIL("opened a version 7 log");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::version_mismatch);
  }
  temp_dir junk;
  {
    std::ofstream f(junk.path / "log.meta", std::ios::binary);
    for (int i = 0; i < 4096; ++i) f.put('x');
  }
  try {
    (void)shmbus::byte_log::open(s, junk.path);
    FAIL("opened junk");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
  }
}

namespace {

/// Rewrites the u64 at `offset` of log.meta through the file, which every
/// handle's mapping shares: what a process that does not follow the layout
/// might do.
void poke_meta(const fs::path& dir, std::size_t offset, std::uint64_t value) {
  std::fstream f(dir / "log.meta", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(&value), sizeof value);
}

std::uint64_t peek_meta(const fs::path& dir, std::size_t offset) {
  std::ifstream f(dir / "log.meta", std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  std::uint64_t value = 0;
  f.read(reinterpret_cast<char*>(&value), sizeof value);
  return value;
}

}  // namespace

TEST_CASE("positions in log.meta that are not record boundaries are refused, and nothing is cut", "[log]") {
  namespace ll = shmbus::detail::log_layout;
  temp_dir dir;
  shmbus::scheduler s;
  std::vector<position> positions;
  {
    auto log = shmbus::byte_log::open(s, dir.path, small_segments());
    for (std::uint64_t i = 0; i < 100; ++i) positions.push_back(log.try_append(record(i)));
    s.run(log.sync());

    // The claim word off a boundary: appends refuse it and write nothing.
    const std::uint64_t tail = peek_meta(dir.path, offsetof(ll::meta, tail_position));
    poke_meta(dir.path, offsetof(ll::meta, tail_position), tail + 8);
    try {
      (void)log.try_append(record(100));
      FAIL("appended from a claim word off a record boundary");
    } catch (const shmbus::error& e) {
      CHECK(e.code() == shmbus::errc::region_corrupt);
    }
    CHECK(log.tail() == tail + 8);
    poke_meta(dir.path, offsetof(ll::meta, tail_position), tail);

    // A parked bit past the 32 reader slots names nobody.
    poke_meta(dir.path, offsetof(ll::meta, parked_readers), std::uint64_t{1} << 40);
    CHECK(log.try_append(record(100)) == tail);
    s.run(log.sync());

    // A reader may only start where a record starts, and a cursor point there.
    CHECK_THROWS_AS(log.reader(shmbus::from::at_position(positions[10] + 8)), std::system_error);
    CHECK_THROWS_AS(log.reset_cursor("misaligned", positions[10] + 8), std::system_error);
  }
  // A durable word inside record 50 (a multiple of 32, but not a record
  // start): recovering from it would cut 50 records. The open refuses.
  const std::uint64_t durable = peek_meta(dir.path, offsetof(ll::meta, durable_position));
  REQUIRE(positions[51] - positions[50] > 32);
  poke_meta(dir.path, offsetof(ll::meta, durable_position), positions[50] + 32);
  try {
    (void)shmbus::byte_log::open(s, dir.path);
    FAIL("recovered from a durable position inside a record");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::region_corrupt);
    CHECK_THAT(e.what(), Catch::Contains(std::to_string(positions[50] + 32)));
  }
  poke_meta(dir.path, offsetof(ll::meta, durable_position), durable);
  auto log = shmbus::byte_log::open(s, dir.path);
  auto reader = log.reader(shmbus::from::beginning());
  const auto all = reader.available();
  REQUIRE(all.size() == 101);
  for (std::uint64_t i = 0; i < 101; ++i) CHECK(is_record(all[i].data, i));
}

TEST_CASE("a full disk fails append clearly, loses nothing, and the log works once space is freed", "[log]") {
  temp_dir dir;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0) ::_exit(77);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(77);
    if (::mount("shmbus-test", dir.path.c_str(), "tmpfs", 0, "size=1m") != 0) ::_exit(77);
    int code = 0;
    try {
      shmbus::scheduler s;
      shmbus::log_options o;
      o.segment_size = 128 * 1024;
      o.max_record = 1024;
      auto log = shmbus::byte_log::open(s, dir.path / "log", o);
      {
        std::ofstream filler(dir.path / "filler", std::ios::binary);
        std::vector<char> block(64 * 1024, 'f');
        for (int i = 0; i < 10; ++i) filler.write(block.data(), static_cast<std::streamsize>(block.size()));
      }
      std::vector<std::byte> rec(1000, std::byte{3});
      std::uint64_t appended = 0;
      bool full = false;
      for (int i = 0; i < 10000 && !full; ++i) {
        try {
          log.try_append(rec);
          ++appended;
        } catch (const shmbus::error& e) {
          full = e.code() == std::errc::no_space_on_device;
          if (!full) code = 10;
        }
      }
      if (!full) ::_exit(11);
      s.run(log.sync());
      auto reader = log.reader(shmbus::from::beginning());
      if (reader.available().size() != appended) ::_exit(12);
      fs::remove(dir.path / "filler");
      log.try_append(rec);
      s.run(log.sync());
      if (log.reader(shmbus::from::beginning()).available().size() != appended + 1) ::_exit(13);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      code = 20;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    WARN("no private mount namespace here (needs CAP_SYS_ADMIN): full-disk check skipped");
    return;
  }
  CHECK(WEXITSTATUS(status) == 0);
}

namespace {
struct order {
  std::uint64_t id;
  double amount;
  static constexpr std::string_view shmbus_type_name = "test.order";
};
struct refund {
  std::uint64_t id;
  double amount;
  static constexpr std::string_view shmbus_type_name = "test.refund";
};
}  // namespace

TEST_CASE("a typed log records its type and refuses another one", "[log]") {
  temp_dir dir;
  shmbus::scheduler s;
  {
    auto orders = shmbus::log<order>::open(s, dir.path, small_segments());
    auto body = [&]() -> task<void> {
      const order o{42, 9.5};
      const position p = co_await orders.append(o);
      CHECK(p == 0);
      auto billing = orders.reader(shmbus::from::cursor("billing"));
      auto rec = co_await billing.next();
      CHECK(shmbus::log<order>::value(rec).id == 42);
      co_await billing.commit();
    };
    s.run(body());
  }
  try {
    (void)shmbus::log<refund>::open(s, dir.path);
    FAIL("opened a log of orders as refunds");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == shmbus::errc::type_mismatch);
  }
  auto again = shmbus::log<order>::open(s, dir.path);
  CHECK(again.reader(shmbus::from::cursor("billing")).try_next().data.empty());
}
