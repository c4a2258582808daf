// shmbus::bus: the directory region, names, channels opened by name,
// listings, permissions, removal, and participants that die. Real objects
// in /dev/shm, named after the test process (so runs may overlap) and
// removed by each test; forked children for processes that die.
#include <shmbus/bus.hpp>
#include <shmbus/region.hpp>
#include <shmbus/scheduler.hpp>
#include <shmbus/task.hpp>

#include "bus/directory.hpp"
#include "bus/directory_layout.hpp"
#include "bus/grant_retry.hpp"

#include "child_process.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using shmbus::bus;
using shmbus::bus_options;
using shmbus::channel_options;
using shmbus::errc;
using Catch::Matchers::Contains;

namespace {

namespace bl = shmbus::detail::bus_layout;

std::atomic<int> counter{0};

// Unique per process and per call.
std::string unique_name(std::string_view tag) {
  return fmt::format("test-{}-{}-{}", ::getpid(), tag, counter.fetch_add(1));
}

// Removes the bus when the test ends, however it ends.
struct scoped_bus_name {
  std::string name;
  explicit scoped_bus_name(std::string_view tag) : name(unique_name(tag)) {}
  scoped_bus_name(const scoped_bus_name&) = delete;
  scoped_bus_name& operator=(const scoped_bus_name&) = delete;
  ~scoped_bus_name() {
    try {
      bus::remove(name);
    } catch (...) {
    }
  }
  operator std::string_view() const noexcept { return name; }
};

std::string path_of(const std::string& object) { return "/dev/shm" + object; }

bool shm_exists(const std::string& object) {
  struct stat st {};
  return ::stat(path_of(object).c_str(), &st) == 0;
}

struct stat shm_stat(const std::string& object) {
  struct stat st {};
  REQUIRE(::stat(path_of(object).c_str(), &st) == 0);
  return st;
}

template <class F>
std::optional<shmbus::error> error_of(F&& f) {
  try {
    f();
  } catch (const shmbus::error& e) {
    return e;
  }
  return std::nullopt;
}

struct tick {
  std::uint64_t id;
  double price;
};
// Same size and alignment as tick, another name.
struct quote {
  std::uint64_t id;
  double price;
};

channel_options small_channel() {
  channel_options o;
  o.capacity = 4096;
  o.max_message = 256;
  o.max_publishers = 4;
  o.max_subscribers = 4;
  return o;
}

shmbus::task<std::uint64_t> exchange(shmbus::publisher<tick>& pub, shmbus::subscriber<tick>& sub, int count) {
  std::uint64_t matched = 0;
  for (int i = 0; i < count; ++i) {
    const auto id = static_cast<std::uint64_t>(i);
    co_await pub.publish(tick{id, 0.5 * i});
    auto s = co_await sub.next();
    if (s && s->id == id && s->price == 0.5 * i) ++matched;
  }
  co_return matched;
}

// Counts the active entries of a bus directory that list `channel`, reading
// the region directly (channels() would hide duplicates).
int entries_listing(const std::string& bus_name, const std::string& channel) {
  auto dir = shmbus::detail::directory::attach(
      shmbus::region::open_shm(bus::object_name(bus_name), shmbus::access_mode::read_only),
      std::chrono::milliseconds(0));
  int n = 0;
  for (std::uint32_t i = 0; i < dir.channel_entries(); ++i) {
    auto rec = dir.read_channel(i);
    if (rec && rec->state() == bl::channel_active && rec->name == channel) ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("open creates the directory, a second open attaches to it", "[bus]") {
  scoped_bus_name name("open");
  const std::string object = bus::object_name(name);
  CHECK(object == "/shmbus." + name.name);
  REQUIRE_FALSE(shm_exists(object));

  auto first = bus::open(name);
  CHECK(first.name() == name.name);
  CHECK(shm_exists(object));
  CHECK(first.max_channels() == 64);
  CHECK(first.max_participants() == 128);

  {
    // Options apply only at creation: the second handle sees the first's sizes.
    bus_options other;
    other.max_channels = 3;
    auto second = bus::open(name, other);
    CHECK(second.max_channels() == 64);
    CHECK(second.participant_slot() != first.participant_slot());
    const auto people = first.participants();
    REQUIRE(people.size() == 2);
    for (const auto& p : people) {
      CHECK(p.pid == ::getpid());
      CHECK(p.alive);
      CHECK(p.start_time != 0);
    }
  }
  // The second handle left.
  const auto people = first.participants();
  REQUIRE(people.size() == 1);
  CHECK(people[0].slot == first.participant_slot());

  const auto buses = bus::list();
  CHECK(std::find(buses.begin(), buses.end(), name.name) != buses.end());
}

TEST_CASE("bus and channel names are checked before any system call", "[bus]") {
  const std::string too_long(49, 'a');
  const std::vector<std::string> bad = {"", too_long, "a/b", "a.b", "a b", "-a", "..", "caf\xc3\xa9", "a\nb",
                                        std::string("a\0b", 3)};
  for (const auto& n : bad) {
    INFO("name: " << n);
    auto e = error_of([&] { (void)bus::open(n); });
    REQUIRE(e);
    CHECK(e->code() == errc::bad_name);
    CHECK(e->operation() == "open bus");
    e = error_of([&] { (void)bus::remove(n); });
    REQUIRE(e);
    CHECK(e->code() == errc::bad_name);
    CHECK_FALSE(bus::valid_name(n));
  }
  auto e = error_of([&] { (void)bus::open(too_long); });
  REQUIRE(e);
  CHECK_THAT(std::string(e->what()), Contains("49 characters, at most 48"));

  // 48 characters is fine.
  std::string longest = unique_name("long");
  longest.resize(48, 'x');
  scoped_bus_name cleanup("unused");
  cleanup.name = longest;
  auto b = bus::open(longest);
  CHECK(shm_exists(bus::object_name(longest)));

  for (const auto& n : bad) {
    INFO("channel: " << n);
    e = error_of([&] { (void)b.publisher<tick>(n); });
    REQUIRE(e);
    CHECK(e->code() == errc::bad_name);
    e = error_of([&] { (void)b.bytes_subscriber(n); });
    REQUIRE(e);
    CHECK(e->code() == errc::bad_name);
  }
  // Nothing was created for them.
  CHECK(b.channels().empty());
}

TEST_CASE("a typed publisher and subscriber exchange messages through the bus", "[bus]") {
  scoped_bus_name name("exchange");
  shmbus::scheduler sched;
  auto b = bus::open(name);
  auto sub = b.subscriber<tick>("ticks", {}, small_channel());
  CHECK(shm_exists(bus::object_name(name, "ticks")));
  auto pub = b.publisher<tick>("ticks");  // attaches: the options no longer matter
  CHECK(pub.get_channel().capacity() == 4096);
  CHECK(sched.run(exchange(pub, sub, 200)) == 200);

  // Byte channels too, without waiting.
  auto bytes_sub = b.bytes_subscriber("raw", {}, small_channel());
  auto bytes_pub = b.bytes_publisher("raw");
  const std::string text = "hello, bus";
  REQUIRE(bytes_pub.try_publish(std::as_bytes(std::span(text))) == shmbus::publish_status::ok);
  const auto m = bytes_sub.try_next();
  REQUIRE(m);
  CHECK(std::string(reinterpret_cast<const char*>(m.data.data()), m.data.size()) == text);
}

TEST_CASE("opening a channel as another type is errc::type_mismatch", "[bus]") {
  scoped_bus_name name("types");
  auto b = bus::open(name);
  auto pub = b.publisher<tick>("prices", small_channel());

  auto e = error_of([&] { (void)b.subscriber<quote>("prices"); });
  REQUIRE(e);
  CHECK(e->code() == errc::type_mismatch);
  e = error_of([&] { (void)b.bytes_subscriber("prices"); });
  REQUIRE(e);
  CHECK(e->code() == errc::type_mismatch);

  // Through another handle, as another process would.
  auto other = bus::open(name);
  e = error_of([&] { (void)other.publisher<std::uint64_t>("prices"); });
  REQUIRE(e);
  CHECK(e->code() == errc::type_mismatch);
  CHECK_NOTHROW(other.subscriber<tick>("prices"));

  // A byte channel refuses typed openers too.
  auto raw = b.bytes_publisher("raw", small_channel());
  e = error_of([&] { (void)other.subscriber<tick>("raw"); });
  REQUIRE(e);
  CHECK(e->code() == errc::type_mismatch);

  // Tools attach whatever the channel carries.
  const auto ch = other.attach_channel("prices");
  CHECK(ch.type().name == shmbus::type_name_of<tick>());
  e = error_of([&] { (void)other.attach_channel("absent"); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);
}

TEST_CASE("channels() and participants() report what exists", "[bus]") {
  scoped_bus_name name("listing");
  auto b = bus::open(name);
  CHECK(b.channels().empty());

  auto sub = b.subscriber<tick>("alpha", {}, small_channel());
  auto pub = b.publisher<tick>("alpha");
  for (std::uint64_t i = 0; i < 3; ++i) REQUIRE(pub.try_publish(tick{i, 1.0}) == shmbus::publish_status::ok);

  channel_options beta_options;
  beta_options.capacity = 8192;
  beta_options.max_message = 100;
  beta_options.policy = shmbus::overflow_policy::overwrite;
  (void)b.open_channel("beta", beta_options, shmbus::payload_type{});

  const auto list = b.channels();
  REQUIRE(list.size() == 2);
  const auto& alpha = list[0];
  CHECK(alpha.name == "alpha");
  CHECK(alpha.available);
  CHECK(alpha.problem.empty());
  CHECK(alpha.type_name == shmbus::type_name_of<tick>());
  CHECK(alpha.type_size == sizeof(tick));
  CHECK(alpha.type_align == alignof(tick));
  CHECK(alpha.policy == shmbus::overflow_policy::block);
  CHECK(alpha.capacity == 4096);
  CHECK(alpha.max_message == sizeof(tick));
  CHECK(alpha.created_ns > 0);
  CHECK(alpha.stats.publishers == 1);
  CHECK(alpha.stats.subscribers == 1);
  CHECK(alpha.stats.published == 3);

  const auto& beta = list[1];
  CHECK(beta.name == "beta");
  CHECK(beta.available);
  CHECK(beta.type_name.empty());
  CHECK(beta.type_size == 0);
  CHECK(beta.policy == shmbus::overflow_policy::overwrite);
  CHECK(beta.capacity == 8192);
  CHECK(beta.max_message == 100);
  CHECK(beta.stats.publishers == 0);
  CHECK(beta.stats.subscribers == 0);

  // A listed channel whose region went away is reported, not hidden.
  REQUIRE(shmbus::region::unlink_shm(bus::object_name(name, "beta")));
  const auto after = b.channels();
  REQUIRE(after.size() == 2);
  CHECK_FALSE(after[1].available);
  CHECK_THAT(after[1].problem, Contains("shmbus." + name.name + ".beta"));
  CHECK(after[1].capacity == 8192);  // from the directory entry

  auto second = bus::open(name);
  const auto people = b.participants();
  REQUIRE(people.size() == 2);
  CHECK(people[0].slot != people[1].slot);
  CHECK(people[0].alive);
  CHECK(people[1].alive);
  CHECK(people[0].joined_ns > 0);
}

TEST_CASE("remove() unlinks the directory and every channel", "[bus]") {
  scoped_bus_name name("remove");
  {
    auto b = bus::open(name);
    auto pub = b.publisher<tick>("one", small_channel());
    (void)b.open_channel("two", small_channel(), shmbus::payload_type{});
    // A channel object the directory does not list (its creator died before
    // recording it) belongs to the bus all the same.
    (void)shmbus::region::create_shm(bus::object_name(name, "stray"), 4096);

    CHECK(shm_exists(bus::object_name(name)));
    CHECK(shm_exists(bus::object_name(name, "one")));
    CHECK(shm_exists(bus::object_name(name, "two")));
    CHECK(bus::remove(name));
    // Live handles keep their mappings.
    CHECK(pub.try_publish(tick{1, 2.0}) == shmbus::publish_status::ok);
  }
  CHECK_FALSE(shm_exists(bus::object_name(name)));
  CHECK_FALSE(shm_exists(bus::object_name(name, "one")));
  CHECK_FALSE(shm_exists(bus::object_name(name, "two")));
  CHECK_FALSE(shm_exists(bus::object_name(name, "stray")));
  CHECK_FALSE(bus::remove(name));
  const auto buses = bus::list();
  CHECK(std::find(buses.begin(), buses.end(), name.name) == buses.end());
}

TEST_CASE("remove_unused() removes only channels no live process uses", "[bus]") {
  scoped_bus_name name("gc");
  auto b = bus::open(name);
  auto used = b.subscriber<tick>("used", {}, small_channel());
  (void)b.publisher<tick>("idle", small_channel());  // gone at once: nobody uses "idle"

  // "orphan" has a publisher slot held by a process that died.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    try {
      auto cb = bus::open(name.name);
      auto p = cb.bytes_publisher("orphan", small_channel());
      (void)p;
      ::_exit(0);  // no destructor runs: the slot stays taken
    } catch (...) {
      ::_exit(1);
    }
  }
  REQUIRE(shmbus::test::wait_exit(child) == 0);
  {
    const auto list = b.channels();
    REQUIRE(list.size() == 3);
    CHECK(list[1].name == "orphan");
  }

  const auto removed = b.remove_unused();
  CHECK(removed == std::vector<std::string>{"idle", "orphan"});
  CHECK(shm_exists(bus::object_name(name, "used")));
  CHECK_FALSE(shm_exists(bus::object_name(name, "idle")));
  CHECK_FALSE(shm_exists(bus::object_name(name, "orphan")));
  const auto left = b.channels();
  REQUIRE(left.size() == 1);
  CHECK(left[0].name == "used");
  // The dead child's participant entry went too.
  CHECK(b.participants().size() == 1);

  CHECK(b.remove_unused().empty());
}

TEST_CASE("remove_unused() keeps a channel a live process has open, even without a publisher or subscriber",
          "[bus]") {
  scoped_bus_name name("gclock");
  auto b = bus::open(name);
  {
    const shmbus::channel mine = b.open_channel("mine", small_channel(), shmbus::payload_type{});
    CHECK(b.remove_unused().empty());
    CHECK(shm_exists(bus::object_name(name, "mine")));
  }
  CHECK(b.remove_unused() == std::vector<std::string>{"mine"});

  // Another process's handle counts until the process is killed.
  shmbus::test::pipe_pair ready;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    try {
      auto cb = bus::open(name.name);
      const shmbus::channel theirs = cb.open_channel("theirs", small_channel(), shmbus::payload_type{});
      ready.child_send('r');
      ::pause();
    } catch (...) {
    }
    ::_exit(1);
  }
  REQUIRE(ready.receive() == 'r');
  CHECK(b.remove_unused().empty());
  CHECK(shm_exists(bus::object_name(name, "theirs")));
  shmbus::test::kill_and_reap(child, SIGKILL);
  CHECK(b.remove_unused() == std::vector<std::string>{"theirs"});
  CHECK_FALSE(shm_exists(bus::object_name(name, "theirs")));
}

TEST_CASE("objects are created 0600 by default, and a group may be granted", "[bus]") {
  {
    scoped_bus_name name("mode");
    auto b = bus::open(name);
    (void)b.open_channel("c", small_channel(), shmbus::payload_type{});
    CHECK((shm_stat(bus::object_name(name)).st_mode & 0777) == 0600);
    CHECK((shm_stat(bus::object_name(name, "c")).st_mode & 0777) == 0600);
  }
  {
    scoped_bus_name name("group");
    bus_options o;
    o.group = ::getegid();
    auto b = bus::open(name, o);
    (void)b.open_channel("c", small_channel(), shmbus::payload_type{});
    for (const auto& object : {bus::object_name(name), bus::object_name(name, "c")}) {
      const auto st = shm_stat(object);
      CHECK((st.st_mode & 0777) == 0660);
      CHECK(st.st_gid == ::getegid());
    }
  }
  {
    scoped_bus_name name("mode640");
    bus_options o;
    o.mode = 0640;
    auto b = bus::open(name, o);
    CHECK((shm_stat(bus::object_name(name)).st_mode & 0777) == 0640);
  }
  {
    scoped_bus_name name("badmode");
    for (mode_t m : {mode_t{0400}, mode_t{0200}, mode_t{04600}}) {
      bus_options o;
      o.mode = m;
      auto e = error_of([&] { (void)bus::open(name, o); });
      REQUIRE(e);
      CHECK(e->code() == std::errc::invalid_argument);
    }
    CHECK_FALSE(shm_exists(bus::object_name(name)));
  }
}

TEST_CASE("an object that is not a valid bus directory is refused, naming it", "[bus]") {
  scoped_bus_name name("garbage");
  const std::string object = bus::object_name(name);

  SECTION("garbage bytes") {
    auto r = shmbus::region::create_shm(object, 4096);
    std::memset(r.data(), 0x5a, r.size());
    auto e = error_of([&] { (void)bus::open(name); });
    REQUIRE(e);
    CHECK(e->code() == errc::region_corrupt);
    CHECK_THAT(std::string(e->what()), Contains(object));
    CHECK_THAT(std::string(e->what()), Contains("not a shmbus bus directory"));
  }
  SECTION("smaller than a header, or empty") {
    for (off_t size : {off_t{100}, off_t{0}}) {
      const int fd = ::shm_open(object.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
      REQUIRE(fd >= 0);
      REQUIRE(::ftruncate(fd, size) == 0);
      ::close(fd);
      auto e = error_of([&] { (void)bus::open(name); });
      REQUIRE(e);
      CHECK(e->code() == errc::region_corrupt);
      CHECK_THAT(std::string(e->what()), Contains(object));
      REQUIRE(::shm_unlink(object.c_str()) == 0);
    }
  }
  SECTION("a header that lies") {
    { auto b = bus::open(name); }
    auto r = shmbus::region::open_shm(object);
    auto& h = *reinterpret_cast<bl::directory_header*>(r.data());

    h.version = 2;
    auto e = error_of([&] { (void)bus::open(name); });
    REQUIRE(e);
    CHECK(e->code() == errc::version_mismatch);
    h.version = bl::directory_version;

    h.participant_entries = 100000;
    e = error_of([&] { (void)bus::open(name); });
    REQUIRE(e);
    CHECK(e->code() == errc::region_corrupt);
    h.participant_entries = 128;

    h.participant_offset += 64;
    e = error_of([&] { (void)bus::open(name); });
    REQUIRE(e);
    CHECK(e->code() == errc::region_corrupt);
    h.participant_offset -= 64;

    h.kind = 1;
    e = error_of([&] { (void)bus::open(name); });
    REQUIRE(e);
    CHECK(e->code() == errc::region_corrupt);
    h.kind = bl::kind_directory;

    CHECK_NOTHROW(bus::open(name));
  }
  SECTION("a header never written (its creator died)") {
    (void)shmbus::region::create_shm(object, 4 * 4096);  // zeros: magic 0
    bus_options o;
    o.init_timeout = std::chrono::milliseconds(0);
    auto e = error_of([&] { (void)bus::open(name, o); });
    REQUIRE(e);
    CHECK(e->code() == errc::timed_out);
    CHECK_THAT(std::string(e->what()), Contains(object));
  }
  SECTION("a channel region") {
    auto b = bus::open(name);
    (void)b.open_channel("c", small_channel(), shmbus::payload_type{});
    const std::string fake = bus::object_name(name.name + "x");
    REQUIRE(::link(path_of(bus::object_name(name, "c")).c_str(), path_of(fake).c_str()) == 0);
    auto e = error_of([&] { (void)bus::open(name.name + "x"); });
    ::shm_unlink(fake.c_str());
    REQUIRE(e);
    CHECK(e->code() == errc::region_corrupt);
    CHECK_THAT(std::string(e->what()), Contains("a shmbus channel, not a bus directory"));
  }
}

TEST_CASE("a participant that died shows as not alive, and its entry is reclaimed", "[bus]") {
  scoped_bus_name name("dead");
  bus_options o;
  o.max_participants = 2;
  auto b = bus::open(name, o);

  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    try {
      auto cb = bus::open(name.name);
      ::_exit(cb.participants().size() == 2 ? 0 : 2);  // leaves without freeing its entry
    } catch (...) {
      ::_exit(1);
    }
  }
  REQUIRE(shmbus::test::wait_exit(child) == 0);

  auto people = b.participants();
  REQUIRE(people.size() == 2);
  const auto dead = std::find_if(people.begin(), people.end(), [&](const auto& p) { return p.pid == child; });
  REQUIRE(dead != people.end());
  CHECK_FALSE(dead->alive);
  const auto self = std::find_if(people.begin(), people.end(), [](const auto& p) { return p.pid == ::getpid(); });
  REQUIRE(self != people.end());
  CHECK(self->alive);

  // Both entries are taken; the dead one is reclaimed for a newcomer.
  auto second = bus::open(name);
  CHECK(second.participant_slot() == dead->slot);
  people = b.participants();
  REQUIRE(people.size() == 2);
  CHECK(std::all_of(people.begin(), people.end(), [](const auto& p) { return p.alive && p.pid == ::getpid(); }));

  // Now every entry is held by a live process.
  auto e = error_of([&] { (void)bus::open(name); });
  REQUIRE(e);
  CHECK(e->code() == errc::would_block);
}

TEST_CASE("a full directory refuses a new channel and leaves no object behind", "[bus]") {
  scoped_bus_name name("full");
  bus_options o;
  o.max_channels = 2;
  auto b = bus::open(name, o);
  (void)b.open_channel("a", small_channel(), shmbus::payload_type{});
  (void)b.open_channel("b", small_channel(), shmbus::payload_type{});
  auto e = error_of([&] { (void)b.open_channel("c", small_channel(), shmbus::payload_type{}); });
  REQUIRE(e);
  CHECK(e->code() == errc::would_block);
  CHECK_FALSE(shm_exists(bus::object_name(name, "c")));

  // An entry whose channel is gone is reused.
  REQUIRE(shmbus::region::unlink_shm(bus::object_name(name, "a")));
  CHECK_NOTHROW(b.open_channel("c", small_channel(), shmbus::payload_type{}));
  const auto list = b.channels();
  REQUIRE(list.size() == 2);
  CHECK(list[0].name == "b");
  CHECK(list[1].name == "c");
}

TEST_CASE("concurrent opens of the same channels leave one entry per channel", "[bus]") {
  scoped_bus_name name("race");
  constexpr int threads = 8;
  constexpr int channels = 3;
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        auto b = bus::open(name.name);
        for (int k = 0; k < channels; ++k)
          (void)b.open_channel(fmt::format("c{}", (k + t) % channels), small_channel(), shmbus::payload_type{});
      } catch (...) {
        failures.fetch_add(1);
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(failures.load() == 0);
  for (int k = 0; k < channels; ++k) CHECK(entries_listing(name.name, fmt::format("c{}", k)) == 1);

  // A missing entry is restored by the next opener.
  auto b = bus::open(name);
  REQUIRE(b.channels().size() == channels);
  {
    auto dir = shmbus::detail::directory::attach(shmbus::region::open_shm(bus::object_name(name)),
                                                 std::chrono::milliseconds(0));
    auto rec = dir.find_channel("c1");
    REQUIRE(rec);
    REQUIRE(dir.free_channel(*rec));
  }
  CHECK(b.channels().size() == channels - 1);
  (void)b.open_channel("c1", {}, shmbus::payload_type{});
  CHECK(b.channels().size() == channels);
  CHECK(entries_listing(name.name, "c1") == 1);
}

TEST_CASE("racing recorders of one name leave exactly one entry", "[bus]") {
  // The directory protocol alone, on an anonymous mapping, with threads
  // released together so that their record_channel calls overlap.
  using shmbus::detail::directory;
  constexpr std::uint32_t entries = 16;
  auto r = shmbus::region::create_anonymous(directory::region_size(entries, 4));
  directory::initialize(r.bytes(), entries, 4, shmbus::detail::process_identity::self());
  auto dir = directory::attach(std::move(r), std::chrono::milliseconds(0));
  const auto me = shmbus::detail::process_identity::self();

  // Without the duplicate check (directory.cpp), most runs of this fail
  // within a few hundred rounds on a 2-CPU machine.
  constexpr int racers = 3;
  for (int round = 0; round < 2000; ++round) {
    const std::string name = fmt::format("name{}", round);
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < racers; ++t)
      pool.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < racers) std::this_thread::yield();
        (void)dir.record_channel(name, {}, me, 1);
      });
    for (auto& th : pool) th.join();
    int listed = 0;
    for (std::uint32_t i = 0; i < entries; ++i) {
      auto rec = dir.read_channel(i);
      if (!rec) continue;
      CHECK(rec->state() == bl::channel_active);
      CHECK(rec->name == name);
      CHECK(rec->owner == me);
      ++listed;
      REQUIRE(dir.free_channel(*rec));
    }
    REQUIRE(listed == 1);
  }
}

TEST_CASE("EACCES on an object changed less than init_timeout ago is worth another open, whatever its mode now",
          "[bus][permissions]") {
  using shmbus::detail::may_be_granted_soon;
  using namespace std::chrono_literals;
  scoped_bus_name name("grant-rule");
  const std::string object = bus::object_name(name);
  { auto b = bus::open(name); }
  // Just created, owner-only: a creator that has not granted its group yet.
  CHECK(may_be_granted_soon(object, 30s));
  // Just granted: an opener whose open failed before the grant and looks
  // after it must open again, not give up (it used to, seeing the mode).
  REQUIRE(::chmod(path_of(object).c_str(), 0606) == 0);
  CHECK(may_be_granted_soon(object, 30s));
  // Changed longer ago than the timeout (0 here: every change is that
  // old): an EACCES stays.
  CHECK_FALSE(may_be_granted_soon(object, 0ms));
  CHECK_FALSE(may_be_granted_soon(bus::object_name(unique_name("absent")), 30s));
}

TEST_CASE("opening someone else's bus fails cleanly; a group being granted is waited for", "[bus]") {
  // Root passes every permission check, so the child becomes nobody;
  // without root, mode 0 refuses even the owner.
  const bool root = ::geteuid() == 0;
  scoped_bus_name name("perm");
  const std::string object = bus::object_name(name);
  { auto b = bus::open(name); }
  if (!root) REQUIRE(::chmod(path_of(object).c_str(), 0) == 0);

  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    if (root && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(90);
    bus_options o;
    o.init_timeout = std::chrono::milliseconds(20);
    try {
      (void)bus::open(name.name, o);
      ::_exit(1);
    } catch (const shmbus::error& e) {
      const bool named = std::string(e.what()).find(object) != std::string::npos;
      ::_exit(e.code() == std::errc::permission_denied && named ? 0 : 2);
    } catch (...) {
      ::_exit(3);
    }
  }
  CHECK(shmbus::test::wait_exit(child) == 0);

  if (!root) return;  // granting needs a second user
  // An owner-only object that is young is being granted: the opener retries
  // (for up to init_timeout) instead of failing at once.
  REQUIRE(bus::remove(name));
  { auto b = bus::open(name); }
  shmbus::test::pipe_pair started;
  const pid_t opener = ::fork();
  REQUIRE(opener >= 0);
  if (opener == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(90);
    started.child_send('s');
    bus_options o;
    o.init_timeout = std::chrono::seconds(30);
    try {
      auto b = bus::open(name.name, o);
      ::_exit(b.participants().empty() ? 2 : 0);
    } catch (...) {
      ::_exit(1);
    }
  }
  REQUIRE(started.receive() == 's');
  REQUIRE(::chmod(path_of(object).c_str(), 0606) == 0);
  CHECK(shmbus::test::wait_exit(opener) == 0);
}
