// shmbus::region: every backend, page rounding, growth, sync, seals, and
// every error path, each checked for its kind and for naming the object.
//
// Some checks need a process of their own (dropping privileges, a file-size
// limit, a private mount namespace); those run in a forked child that reports
// through its exit status and stderr, never through Catch2.
#include <shmbus/region.hpp>

#include <catch2/catch.hpp>

#include "region_patterns.hpp"
#include <fmt/format.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using shmbus::access_mode;
using shmbus::memfd_seal;
using shmbus::open_mode;
using shmbus::region;
using shmbus::region_kind;
using shmbus::sync_mode;
using Catch::Matchers::Contains;

namespace {

using shmbus::test::fill;
using shmbus::test::holds;

namespace fs = std::filesystem;

const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

int counter = 0;

// Unique per process and per call, so parallel test runs never collide.
std::string unique_name(std::string_view tag) {
  return fmt::format("/shmbus-test-{}-{}-{}", ::getpid(), tag, counter++);
}

key_t unique_key() {
  const auto pid = static_cast<unsigned>(::getpid()) & 0xfffffu;
  return static_cast<key_t>(0x53000000u | (pid << 4) | (static_cast<unsigned>(counter++) & 0xfu));
}

// Removes a shm name at scope exit, whatever happened.
struct shm_guard {
  std::string name;
  ~shm_guard() {
    try {
      region::unlink_shm(name);
    } catch (...) {
    }
  }
};

// Removes a System V segment at scope exit.
struct sysv_guard {
  int id = -1;
  ~sysv_guard() {
    if (id >= 0) ::shmctl(id, IPC_RMID, nullptr);
  }
};

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "shmbus-region-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The shmbus::error that `f` throws, or nullopt.
template <class F>
std::optional<shmbus::error> error_of(F&& f) {
  try {
    f();
  } catch (const shmbus::error& e) {
    return e;
  }
  return std::nullopt;
}

bool all_zero(std::span<const std::byte> bytes) {
  for (std::byte b : bytes)
    if (b != std::byte{0}) return false;
  return true;
}

// The permissions /proc/self/maps shows for the mapping holding `addr`.
std::string map_perms(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  for (std::string line; std::getline(maps, line);) {
    unsigned long lo = 0;
    unsigned long hi = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) == 3 && a >= lo && a < hi) return perms;
  }
  return {};
}

// msync fails with ENOMEM on addresses that are not mapped.
bool is_mapped(const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr) / page * page;
  return ::msync(reinterpret_cast<void*>(a), page, MS_ASYNC) == 0;
}

mode_t mode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_mode & 07777;
}

off_t file_size(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_size;
}

// Our temporary creation names (".shmbus-tmp-<pid>-*") left in `dir`.
int leftover_temporaries(const fs::path& dir, pid_t pid) {
  const std::string prefix = fmt::format(".shmbus-tmp-{}-", pid);
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}

// Child-side checks: printed to stderr, counted into the exit status.
struct child_checks {
  int failed = 0;
  void operator()(bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "child check failed: %s\n", what);
      ++failed;
    }
  }
  // Expects `f` to throw shmbus::error with `code`, naming `object`.
  template <class F>
  void throws(F&& f, std::error_condition code, const std::string& object, const char* what) {
    try {
      f();
      (*this)(false, what);
    } catch (const shmbus::error& e) {
      if (e.code() != code || std::string(e.what()).find(object) == std::string::npos) {
        std::fprintf(stderr, "  got: %s\n", e.what());
        (*this)(false, what);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  got foreign exception: %s\n", e.what());
      (*this)(false, what);
    }
  }
};

// Runs `f` in a forked child; returns its exit status (128 + signal if killed).
int run_in_child(const std::function<int()>& f) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 101;
    try {
      code = f();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child threw: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

}  // namespace

// --- sizes -------------------------------------------------------------------

TEST_CASE("page size comes from sysconf and every backend rounds up to it", "[region]") {
  REQUIRE(region::page_size() == page);

  CHECK(region::create_anonymous(1).size() == page);
  CHECK(region::create_anonymous(page).size() == page);
  CHECK(region::create_anonymous(page + 1).size() == 2 * page);

  auto m = region::create_memfd("round", page + 1);
  CHECK(m.size() == 2 * page);
  CHECK(file_size(m.fd()) == static_cast<off_t>(2 * page));

  shm_guard g{unique_name("round")};
  auto s = region::create_shm(g.name, 3 * page - 7);
  CHECK(s.size() == 3 * page);
  CHECK(file_size(s.fd()) == static_cast<off_t>(3 * page));

  temp_dir dir;
  auto f = region::open_file(dir.path / "f", 10, open_mode::create_only);
  CHECK(f.size() == page);
  CHECK(fs::file_size(dir.path / "f") == page);

  auto v = region::create_sysv(region::private_key, 1);
  sysv_guard vg{v.sysv_id()};
  CHECK(v.size() == page);
  shmid_ds ds{};
  REQUIRE(::shmctl(v.sysv_id(), IPC_STAT, &ds) == 0);
  CHECK(ds.shm_segsz == page);
}

TEST_CASE("zero and absurd sizes are errc::bad_size naming the object", "[region]") {
  const std::vector<std::size_t> bad = {0, region::max_size + 1, SIZE_MAX, SIZE_MAX - page + 2};
  temp_dir dir;
  for (std::size_t size : bad) {
    CAPTURE(size);
    const std::string shm = unique_name("size");
    shm_guard g{shm};
    auto e = error_of([&] { (void)region::create_shm(shm, size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains(shm));

    e = error_of([&] { (void)region::open_or_create_shm(shm, size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains(shm));

    e = error_of([&] { (void)region::create_memfd("sized", size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("sized"));

    const std::string path = (dir.path / "sized").string();
    for (auto how : {open_mode::create_only, open_mode::open_or_create}) {
      e = error_of([&] { (void)region::open_file(path, size, how); });
      REQUIRE(e);
      CHECK(e->code() == shmbus::errc::bad_size);
      CHECK_THAT(e->what(), Contains(path));
    }

    e = error_of([&] { (void)region::create_anonymous(size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("anonymous"));

    e = error_of([&] { (void)region::create_sysv(region::private_key, size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("sysv:private"));

    auto m = region::create_memfd("grown", page);
    e = error_of([&] { m.grow(size); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("grown"));
    CHECK(m.size() == page);
  }
  CHECK(leftover_temporaries("/dev/shm", ::getpid()) == 0);
}

// --- POSIX shared memory -------------------------------------------------------

TEST_CASE("shm: create, write, open from a second mapping, unlink", "[region]") {
  shm_guard g{unique_name("basic")};
  auto a = region::create_shm(g.name, 2 * page);
  CHECK(a.kind() == region_kind::shm);
  CHECK(a.name() == g.name);
  CHECK(a.created());
  CHECK_FALSE(a.read_only());
  CHECK_FALSE(a.fallocate_emulated());
  CHECK(a.bytes().data() == a.data());
  CHECK(a.bytes().size() == a.size());
  CHECK(all_zero(a.bytes()));
  CHECK((::fcntl(a.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(a.fd(), F_GETFL) & O_NONBLOCK) == 0);
  fill(a.bytes(), 1);

  auto b = region::open_shm(g.name);
  CHECK_FALSE(b.created());
  CHECK(b.size() == a.size());
  CHECK(b.data() != a.data());
  CHECK(holds(b.bytes(), 1));
  fill(b.bytes(), 2);
  CHECK(holds(a.bytes(), 2));

  // The name without its slash means the same object.
  auto c = region::open_shm(g.name.substr(1));
  CHECK(c.name() == g.name);
  CHECK(holds(c.bytes(), 2));

  CHECK(region::unlink_shm(g.name));
  CHECK_FALSE(region::unlink_shm(g.name));
  CHECK(holds(a.bytes(), 2));  // mappings outlive the name
  CHECK(leftover_temporaries("/dev/shm", ::getpid()) == 0);
}

TEST_CASE("shm: read-only access maps PROT_READ and cannot grow", "[region]") {
  shm_guard g{unique_name("ro")};
  auto w = region::create_shm(g.name, page);
  fill(w.bytes(), 3);
  auto r = region::open_shm(g.name, access_mode::read_only);
  CHECK(r.read_only());
  CHECK(holds(r.bytes(), 3));
  CHECK(map_perms(r.data()) == "r--s");
  CHECK(map_perms(w.data()) == "rw-s");
  CHECK((::fcntl(r.fd(), F_GETFL) & O_ACCMODE) == O_RDONLY);
  auto e = error_of([&] { r.grow(2 * page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains(g.name));
}

TEST_CASE("shm: open_or_create creates once, then opens; sizes must fit", "[region]") {
  shm_guard g{unique_name("ooc")};
  auto a = region::open_or_create_shm(g.name, 2 * page);
  CHECK(a.created());
  fill(a.bytes(), 4);
  auto b = region::open_or_create_shm(g.name, page);  // smaller: the whole object is mapped
  CHECK_FALSE(b.created());
  CHECK(b.size() == 2 * page);
  CHECK(holds(b.bytes(), 4));

  auto e = error_of([&] { (void)region::open_or_create_shm(g.name, 3 * page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);
  CHECK_THAT(e->what(), Contains(g.name));
}

TEST_CASE("shm: the mode is exactly the one asked for, whatever the umask", "[region]") {
  const mode_t old = ::umask(077);
  shm_guard g1{unique_name("mode")};
  shm_guard g2{unique_name("mode")};
  auto dflt = region::create_shm(g1.name, page);
  auto group = region::open_or_create_shm(g2.name, page, 0640);
  ::umask(old);
  CHECK(mode_of(dflt.fd()) == 0600);
  CHECK(mode_of(group.fd()) == 0640);
}

TEST_CASE("shm: existing objects are mapped at their size, never past it", "[region]") {
  shm_guard g{unique_name("foreign")};
  // Made without shmbus: an odd size, and at first none at all.
  const int raw = ::shm_open(g.name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  REQUIRE(raw >= 0);
  shmbus::unique_fd owner(raw);

  auto e = error_of([&] { (void)region::open_shm(g.name); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);
  CHECK_THAT(e->what(), Contains(g.name));
  e = error_of([&] { (void)region::open_or_create_shm(g.name, page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);

  REQUIRE(::ftruncate(owner.get(), 5000) == 0);
  auto r = region::open_shm(g.name);
  CHECK(r.size() == 5000);
  r.data()[4999] = std::byte{7};
  CHECK(region::open_or_create_shm(g.name, 5000).size() == 5000);
  e = error_of([&] { (void)region::open_or_create_shm(g.name, 5001); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);
}

TEST_CASE("shm: exclusive create of an existing name and opening a missing one", "[region]") {
  shm_guard g{unique_name("excl")};
  auto a = region::create_shm(g.name, page);
  fill(a.bytes(), 5);
  auto e = error_of([&] { (void)region::create_shm(g.name, page); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::file_exists);
  CHECK_THAT(e->what(), Contains(g.name));
  CHECK(holds(a.bytes(), 5));  // the loser touched nothing
  CHECK(leftover_temporaries("/dev/shm", ::getpid()) == 0);

  const std::string missing = unique_name("missing");
  e = error_of([&] { (void)region::open_shm(missing); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);
  CHECK_THAT(e->what(), Contains(missing));
  CHECK(e->operation() == "shm_open");
  CHECK_FALSE(region::unlink_shm(missing));
}

TEST_CASE("shm: something other than a regular file under the name is refused, not waited on", "[region]") {
  shm_guard g{unique_name("fifo")};
  REQUIRE(::mkfifo(("/dev/shm" + g.name).c_str(), 0600) == 0);
  // Without O_NONBLOCK a read-only open of a FIFO would block forever.
  auto e = error_of([&] { (void)region::open_shm(g.name, access_mode::read_only); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains(g.name));
}

TEST_CASE("names are validated before they reach a system call", "[region]") {
  const std::vector<std::string> bad = {"",           "/",          "a/b",      "/a/b",     "//a",
                                        ".hidden",    "/.",         "..",       "tab\tname", "bell\x07",
                                        "del\x7f",    "high\xc3\xa9", std::string(region::max_name_length + 1, 'x'),
                                        "/" + std::string(region::max_name_length + 1, 'y')};
  for (const std::string& name : bad) {
    CAPTURE(name);
    for (auto call : std::vector<std::function<void()>>{
             [&] { (void)region::create_shm(name, page); }, [&] { (void)region::open_shm(name); },
             [&] { (void)region::open_or_create_shm(name, page); }, [&] { (void)region::unlink_shm(name); },
             [&] { (void)region::create_memfd(name, page); }}) {
      auto e = error_of(call);
      REQUIRE(e);
      CHECK(e->code() == shmbus::errc::bad_name);
      CHECK_THAT(e->what(), Contains(name));
    }
  }
  // The longest accepted name works end to end.
  const std::string prefix = unique_name("long");
  shm_guard g{prefix + std::string(region::max_name_length + 1 - prefix.size(), 'z')};
  REQUIRE(g.name.size() == region::max_name_length + 1);
  CHECK(region::create_shm(g.name, page).size() == page);

  auto e = error_of([] { (void)region::open_file("", page, open_mode::create_only); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_name);
  e = error_of([] { (void)region::open_sysv_key(region::private_key); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_name);
  CHECK_THAT(e->what(), Contains("sysv:private"));
}

// --- memfd and adopted descriptors ---------------------------------------------

TEST_CASE("memfd: create, write, share through a second mapping", "[region]") {
  auto m = region::create_memfd("plain", 2 * page);
  CHECK(m.kind() == region_kind::memfd);
  CHECK(m.name() == "plain");
  CHECK(m.created());
  CHECK(all_zero(m.bytes()));
  CHECK((::fcntl(m.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  fill(m.bytes(), 6);
  auto other = region::adopt_fd(m.dup_fd(), "plain again");
  CHECK(holds(other.bytes(), 6));

  // Unsealed: grow works and keeps the data.
  m.grow(4 * page);
  CHECK(m.size() == 4 * page);
  CHECK(file_size(m.fd()) == static_cast<off_t>(4 * page));
  CHECK(holds(m.bytes().first(2 * page), 6));
  CHECK(all_zero(m.bytes().subspan(2 * page)));
}

TEST_CASE("memfd: seals stop ftruncate, fallocate and grow", "[region]") {
  auto m = region::create_memfd("sealed", 2 * page, memfd_seal::fixed_size);
  const int seals = ::fcntl(m.fd(), F_GET_SEALS);
  REQUIRE(seals != -1);
  CHECK((seals & F_SEAL_GROW) != 0);
  CHECK((seals & F_SEAL_SHRINK) != 0);
  CHECK((seals & F_SEAL_SEAL) != 0);
  CHECK((seals & F_SEAL_WRITE) == 0);

  errno = 0;
  CHECK(::ftruncate(m.fd(), static_cast<off_t>(3 * page)) == -1);
  CHECK(errno == EPERM);
  errno = 0;
  CHECK(::ftruncate(m.fd(), static_cast<off_t>(page)) == -1);
  CHECK(errno == EPERM);
  errno = 0;
  CHECK(::fallocate(m.fd(), 0, 0, static_cast<off_t>(3 * page)) == -1);
  CHECK(errno == EPERM);
  errno = 0;
  CHECK(::fcntl(m.fd(), F_ADD_SEALS, F_SEAL_WRITE) == -1);
  CHECK(errno == EPERM);

  auto e = error_of([&] { m.grow(3 * page); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::operation_not_permitted);
  CHECK_THAT(e->what(), Contains("sealed"));
  CHECK(m.size() == 2 * page);
  m.data()[m.size() - 1] = std::byte{1};  // still mapped and writable

  // Growth alone sealed: shrinking stays possible for whoever holds the fd.
  auto g = region::create_memfd("grow-sealed", page, memfd_seal::grow);
  const int gs = ::fcntl(g.fd(), F_GET_SEALS);
  CHECK((gs & F_SEAL_GROW) != 0);
  CHECK((gs & F_SEAL_SHRINK) == 0);
  CHECK((gs & F_SEAL_SEAL) == 0);
  CHECK(::ftruncate(g.fd(), static_cast<off_t>(2 * page)) == -1);
}

TEST_CASE("adopt_fd maps a descriptor at its fstat size and refuses what it cannot map", "[region]") {
  auto m = region::create_memfd("source", 3 * page);
  fill(m.bytes(), 7);

  SECTION("a memfd, made close-on-exec") {
    auto fd = m.dup_fd(false);
    REQUIRE((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) == 0);
    auto a = region::adopt_fd(std::move(fd), "adopted");
    CHECK(a.kind() == region_kind::adopted);
    CHECK(a.name() == "adopted");
    CHECK_FALSE(a.created());
    CHECK(a.size() == 3 * page);
    CHECK(holds(a.bytes(), 7));
    CHECK((::fcntl(a.fd(), F_GETFD) & FD_CLOEXEC) != 0);
    // Growing an adopted (unsealed) object works too.
    a.grow(4 * page);
    CHECK(file_size(m.fd()) == static_cast<off_t>(4 * page));
  }
  SECTION("a shm descriptor opened without shmbus") {
    shm_guard g{unique_name("adopt")};
    const int raw = ::shm_open(g.name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(raw >= 0);
    REQUIRE(::ftruncate(raw, 100) == 0);
    auto a = region::adopt_fd(shmbus::unique_fd(raw));
    CHECK(a.size() == 100);
    CHECK_THAT(a.name(), Contains("fd "));
  }
  SECTION("a read-only descriptor maps read-only, and only if asked") {
    const std::string path = fmt::format("/proc/self/fd/{}", m.fd());
    const int ro = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(ro >= 0);
    auto e = error_of([&] { (void)region::adopt_fd(shmbus::unique_fd(::dup(ro)), "ro-fd"); });
    REQUIRE(e);
    CHECK(e->code() == std::errc::permission_denied);
    CHECK_THAT(e->what(), Contains("ro-fd"));
    auto a = region::adopt_fd(shmbus::unique_fd(ro), "ro-fd", access_mode::read_only);
    CHECK(a.read_only());
    CHECK(map_perms(a.data()) == "r--s");
    CHECK(holds(a.bytes(), 7));
  }
  SECTION("a pipe is not a shared object") {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    shmbus::unique_fd keep(p[0]);
    auto e = error_of([&] { (void)region::adopt_fd(shmbus::unique_fd(p[1]), "a-pipe"); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::not_supported);
    CHECK_THAT(e->what(), Contains("a-pipe"));
  }
  SECTION("a directory is not a shared object") {
    const int d = ::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(d >= 0);
    auto e = error_of([&] { (void)region::adopt_fd(shmbus::unique_fd(d), "a-dir", access_mode::read_only); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::not_supported);
    CHECK_THAT(e->what(), Contains("a-dir"));
  }
  SECTION("an empty memfd would be mapped past its end") {
    const int raw = ::memfd_create("empty", MFD_CLOEXEC);
    REQUIRE(raw >= 0);
    auto e = error_of([&] { (void)region::adopt_fd(shmbus::unique_fd(raw), "empty-memfd"); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("empty-memfd"));
  }
  SECTION("no descriptor at all") {
    auto e = error_of([&] { (void)region::adopt_fd(shmbus::unique_fd(), "nothing"); });
    REQUIRE(e);
    CHECK(e->code() == std::errc::bad_file_descriptor);
    CHECK_THAT(e->what(), Contains("nothing"));
  }
}

TEST_CASE("dup_fd gives a descriptor of the same object, close-on-exec or not", "[region]") {
  auto m = region::create_memfd("dup", page);
  auto keep = m.dup_fd();
  auto pass = m.dup_fd(false);
  CHECK((::fcntl(keep.get(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(pass.get(), F_GETFD) & FD_CLOEXEC) == 0);
  struct stat a {};
  struct stat b {};
  REQUIRE(::fstat(m.fd(), &a) == 0);
  REQUIRE(::fstat(pass.get(), &b) == 0);
  CHECK(a.st_ino == b.st_ino);
  CHECK(a.st_dev == b.st_dev);

  auto anon = region::create_anonymous(page);
  CHECK(anon.fd() == -1);
  auto e = error_of([&] { (void)anon.dup_fd(); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains("anonymous"));
}

// --- regular files ---------------------------------------------------------------

TEST_CASE("file: create, write, grow keeps the data and maps allocated new space", "[region]") {
  temp_dir dir;
  const fs::path path = dir.path / "segment";
  auto f = region::open_file(path, page, open_mode::create_only);
  CHECK(f.kind() == region_kind::file);
  CHECK(f.name() == path.string());
  CHECK(f.created());
  CHECK_FALSE(f.fallocate_emulated());
  CHECK(mode_of(f.fd()) == 0600);
  fill(f.bytes(), 8);

  f.grow(3 * page + 1);
  CHECK(f.size() == 4 * page);
  CHECK(fs::file_size(path) == 4 * page);
  CHECK(holds(f.bytes().first(page), 8));
  CHECK(all_zero(f.bytes().subspan(page)));
  f.data()[f.size() - 1] = std::byte{9};  // the new space is mapped and writable
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(static_cast<std::size_t>(st.st_blocks) * 512 >= 4 * page);  // allocated, not a hole

  f.grow(2 * page);  // smaller: nothing to do
  CHECK(f.size() == 4 * page);

  // Another process's view follows growth by asking for the same size.
  auto first = region::open_file(path, 0, open_mode::open_only);
  CHECK(first.size() == 4 * page);
  f.grow(8 * page);
  first.grow(8 * page);
  CHECK(first.size() == 8 * page);
  first.data()[8 * page - 1] = std::byte{10};
  CHECK(f.data()[8 * page - 1] == std::byte{10});

  // What was written through the mapping is what the file holds.
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes(page);
  in.read(bytes.data(), static_cast<std::streamsize>(page));
  CHECK(holds(std::as_bytes(std::span(bytes)), 8));
}

TEST_CASE("file: sync flushes ranges, the start rounded down to a page", "[region]") {
  temp_dir dir;
  auto f = region::open_file(dir.path / "synced", 4 * page, open_mode::create_only);
  fill(f.bytes(), 11);
  CHECK_NOTHROW(f.sync(1, 10));                          // unaligned start: msync alone would say EINVAL
  CHECK_NOTHROW(f.sync(page + 3, 2 * page, sync_mode::async));
  CHECK_NOTHROW(f.sync(f.size(), 0));
  CHECK_NOTHROW(f.sync());
  CHECK_NOTHROW(f.sync(sync_mode::async));
  for (auto range : std::vector<std::pair<std::size_t, std::size_t>>{
           {0, 4 * page + 1}, {4 * page + 1, 0}, {1, SIZE_MAX}, {SIZE_MAX, 2}}) {
    CAPTURE(range.first, range.second);
    auto e = error_of([&] { f.sync(range.first, range.second); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains("synced"));
  }
  // msync on the other backends is harmless.
  CHECK_NOTHROW(region::create_anonymous(page).sync());
  CHECK_NOTHROW(region::create_memfd("s", page).sync(0, page, sync_mode::async));
}

TEST_CASE("file: open modes, sizes and errors", "[region]") {
  temp_dir dir;
  const std::string path = (dir.path / "f").string();

  auto e = error_of([&] { (void)region::open_file(path, 0, open_mode::open_only); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);
  CHECK_THAT(e->what(), Contains(path));

  auto a = region::open_file(path, page, open_mode::open_or_create);
  CHECK(a.created());
  fill(a.bytes(), 12);
  auto b = region::open_file(path, page / 2, open_mode::open_or_create);
  CHECK_FALSE(b.created());
  CHECK(b.size() == page);
  CHECK(holds(b.bytes(), 12));

  e = error_of([&] { (void)region::open_file(path, page, open_mode::create_only); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::file_exists);
  CHECK_THAT(e->what(), Contains(path));

  for (auto how : {open_mode::open_only, open_mode::open_or_create}) {
    e = error_of([&] { (void)region::open_file(path, page + 1, how); });
    REQUIRE(e);
    CHECK(e->code() == shmbus::errc::bad_size);
    CHECK_THAT(e->what(), Contains(path));
  }
  e = error_of([&] { (void)region::open_file(path, region::max_size + 1, open_mode::open_only); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);

  auto ro = region::open_file(path, 0, open_mode::open_only, access_mode::read_only);
  CHECK(ro.read_only());
  CHECK(map_perms(ro.data()) == "r--s");
  e = error_of([&] { (void)region::open_file(path, page, open_mode::open_or_create, access_mode::read_only); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::invalid_argument);
  CHECK_THAT(e->what(), Contains(path));

  const std::string odd = (dir.path / "odd").string();
  { std::ofstream out(odd); out << std::string(5000, 'x'); }
  auto o = region::open_file(odd, 0, open_mode::open_only);
  CHECK(o.size() == 5000);
  CHECK(o.data()[4999] == std::byte{'x'});

  const std::string empty = (dir.path / "empty").string();
  { std::ofstream out(empty); }
  e = error_of([&] { (void)region::open_file(empty, 0, open_mode::open_or_create); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::bad_size);
  CHECK_THAT(e->what(), Contains(empty));

  e = error_of([&] { (void)region::open_file(dir.path, 0, open_mode::open_only); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::is_a_directory);
  CHECK_THAT(e->what(), Contains(dir.path.string()));

  const std::string fifo = (dir.path / "fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  e = error_of([&] { (void)region::open_file(fifo, 0, open_mode::open_only, access_mode::read_only); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains(fifo));

  const std::string nowhere = (dir.path / "no" / "such" / "dir").string();
  e = error_of([&] { (void)region::open_file(nowhere, page, open_mode::create_only); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);
  CHECK_THAT(e->what(), Contains(nowhere));

  const mode_t old = ::umask(077);
  auto shared = region::open_file(dir.path / "group", page, open_mode::create_only, access_mode::read_write, 0644);
  ::umask(old);
  CHECK(mode_of(shared.fd()) == 0644);
  CHECK(leftover_temporaries(dir.path, ::getpid()) == 0);
}

// --- anonymous and System V ------------------------------------------------------

TEST_CASE("anonymous: zeroed, writable, shared with a forked child", "[region]") {
  auto a = region::create_anonymous(2 * page);
  CHECK(a.kind() == region_kind::anonymous);
  CHECK(a.created());
  CHECK(all_zero(a.bytes()));
  CHECK(map_perms(a.data()) == "rw-s");
  fill(a.bytes().first(page), 13);
  const int status = run_in_child([&] {
    if (!holds(a.bytes().first(page), 13)) return 1;
    fill(a.bytes().subspan(page), 14);
    return 0;
  });
  CHECK(status == 0);
  CHECK(holds(a.bytes().subspan(page), 14));
}

TEST_CASE("sysv: private and keyed segments, attached by key and by id", "[region]") {
  auto p = region::create_sysv(region::private_key, 2 * page);
  sysv_guard pg{p.sysv_id()};
  CHECK(p.kind() == region_kind::sysv);
  CHECK(p.created());
  CHECK(p.fd() == -1);
  CHECK(all_zero(p.bytes()));
  fill(p.bytes(), 15);
  {
    auto again = region::attach_sysv(p.sysv_id());
    CHECK_FALSE(again.created());
    CHECK(again.size() == 2 * page);
    CHECK(holds(again.bytes(), 15));
    shmid_ds ds{};
    REQUIRE(::shmctl(p.sysv_id(), IPC_STAT, &ds) == 0);
    CHECK(ds.shm_nattch == 2);
  }
  shmid_ds ds{};
  REQUIRE(::shmctl(p.sysv_id(), IPC_STAT, &ds) == 0);
  CHECK(ds.shm_nattch == 1);  // the destructor detached

  const key_t key = unique_key();
  auto k = region::create_sysv(key, 3 * page, 0640);
  sysv_guard kg{k.sysv_id()};
  REQUIRE(::shmctl(k.sysv_id(), IPC_STAT, &ds) == 0);
  CHECK((ds.shm_perm.mode & 0777) == 0640);
  fill(k.bytes(), 16);
  const std::string label = fmt::format("sysv:key=0x{:08x}", static_cast<unsigned>(key));
  CHECK(k.name() == label);

  auto byk = region::open_sysv_key(key);
  CHECK(byk.size() == 3 * page);
  CHECK(byk.sysv_id() == k.sysv_id());
  CHECK(holds(byk.bytes(), 16));
  auto ro = region::open_sysv_key(key, access_mode::read_only);
  CHECK(ro.read_only());
  CHECK(map_perms(ro.data()) == "r--s");

  auto e = error_of([&] { (void)region::create_sysv(key, page); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::file_exists);
  CHECK_THAT(e->what(), Contains(label));

  // The nginx way: remove at once, keep using it while attached.
  k.destroy();
  k.destroy();  // once is enough
  CHECK(holds(k.bytes(), 16));
  e = error_of([&] { (void)region::open_sysv_key(key); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);
  CHECK_THAT(e->what(), Contains(label));

  e = error_of([&] { (void)region::attach_sysv(-1); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::invalid_argument);
  CHECK_THAT(e->what(), Contains("sysv:shmid=-1"));
}

TEST_CASE("grow is refused where the backend cannot grow", "[region]") {
  auto a = region::create_anonymous(page);
  auto e = error_of([&] { a.grow(2 * page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains("anonymous"));

  auto s = region::create_sysv(region::private_key, page);
  sysv_guard g{s.sysv_id()};
  e = error_of([&] { s.grow(2 * page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
  CHECK_THAT(e->what(), Contains(s.name()));

  region empty;
  CHECK_FALSE(empty);
  CHECK(empty.kind() == region_kind::none);
  e = error_of([&] { empty.grow(page); });
  REQUIRE(e);
  CHECK(e->code() == shmbus::errc::not_supported);
}

// --- lifetime --------------------------------------------------------------------

TEST_CASE("moves transfer the mapping; destruction unmaps or detaches", "[region]") {
  auto a = region::create_memfd("moved", page);
  std::byte* p = a.data();
  const int fd = a.fd();
  region b = std::move(a);
  CHECK_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is specified empty
  CHECK(a.kind() == region_kind::none);
  CHECK(a.size() == 0);
  CHECK(a.fd() == -1);
  CHECK(b.data() == p);
  CHECK(b.fd() == fd);
  CHECK(b.name() == "moved");

  region c = region::create_anonymous(page);
  std::byte* q = c.data();
  c = std::move(b);  // c's anonymous mapping goes away
  CHECK_FALSE(is_mapped(q));
  CHECK(c.data() == p);
  {
    region d = std::move(c);
    CHECK(is_mapped(p));
  }
  CHECK_FALSE(is_mapped(p));
  CHECK(::fcntl(fd, F_GETFD) == -1);  // and closed
}

TEST_CASE("destroy removes the name, keeps the mapping, and spares a replacement", "[region]") {
  shm_guard g{unique_name("destroy")};
  auto a = region::create_shm(g.name, page);
  fill(a.bytes(), 17);
  a.destroy();
  CHECK(holds(a.bytes(), 17));
  auto e = error_of([&] { (void)region::open_shm(g.name); });
  REQUIRE(e);
  CHECK(e->code() == std::errc::no_such_file_or_directory);

  // Someone else now owns the name: a late destroy() must leave it alone.
  auto b = region::create_shm(g.name, page);
  auto late = region::open_shm(g.name);
  CHECK(region::unlink_shm(g.name));
  auto c = region::create_shm(g.name, page);
  late.destroy();
  CHECK(region::open_shm(g.name).size() == page);

  temp_dir dir;
  auto f = region::open_file(dir.path / "gone", page, open_mode::create_only);
  fill(f.bytes(), 18);
  f.destroy();
  CHECK_FALSE(fs::exists(dir.path / "gone"));
  CHECK(holds(f.bytes(), 18));

  auto m = region::create_memfd("nameless", page);
  CHECK_NOTHROW(m.destroy());
}

// --- failures that need a process of their own ------------------------------------

TEST_CASE("permission denied on someone else's object names the object", "[region]") {
  // Root passes every permission check, so the child becomes nobody; without
  // root, mode 0 refuses even the owner.
  const bool root = ::geteuid() == 0;
  const mode_t mode = root ? 0600 : 0;
  shm_guard g{unique_name("perm")};
  auto s = region::create_shm(g.name, page, mode);
  temp_dir dir;
  ::chmod(dir.path.c_str(), 0755);
  const std::string path = (dir.path / "private").string();
  auto f = region::open_file(path, page, open_mode::create_only, access_mode::read_write, mode);
  const key_t key = unique_key();
  auto v = region::create_sysv(key, page);
  sysv_guard vg{v.sysv_id()};
  if (!root) {
    // Mode 0 from the start would keep even the creator from attaching.
    shmid_ds ds{};
    REQUIRE(::shmctl(v.sysv_id(), IPC_STAT, &ds) == 0);
    ds.shm_perm.mode = 0;
    REQUIRE(::shmctl(v.sysv_id(), IPC_SET, &ds) == 0);
  }
  const std::string label = v.name();

  const int status = run_in_child([&] {
    if (root && (::setgid(65534) != 0 || ::setuid(65534) != 0)) return 90;
    child_checks check;
    const auto denied = std::make_error_condition(std::errc::permission_denied);
    check.throws([&] { (void)region::open_shm(g.name); }, denied, g.name, "open_shm");
    check.throws([&] { (void)region::open_shm(g.name, access_mode::read_only); }, denied, g.name, "open_shm ro");
    check.throws([&] { (void)region::open_or_create_shm(g.name, page); }, denied, g.name, "open_or_create_shm");
    check.throws([&] { (void)region::open_file(path, 0, open_mode::open_only); }, denied, path, "open_file");
    check.throws([&] { (void)region::open_sysv_key(key); }, denied, label, "open_sysv_key");
    check.throws([&] { (void)region::attach_sysv(v.sysv_id()); }, denied, std::to_string(v.sysv_id()),
                 "attach_sysv");
    return check.failed;
  });
  CHECK(status == 0);
}

TEST_CASE("a file-size limit fails creation and growth with EFBIG, never SIGBUS", "[region]") {
  temp_dir dir;
  shm_guard g{unique_name("efbig")};
  const std::string path = (dir.path / "big").string();
  const std::string grown = (dir.path / "grown").string();
  pid_t child_pid = 0;
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);

  const int status = run_in_child([&] {
    const pid_t self = ::getpid();
    (void)!::write(pipefd[1], &self, sizeof self);
    // The kernel raises SIGXFSZ before returning EFBIG; we want the error.
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1 << 20, 1 << 20};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 90;
    child_checks check;
    const auto too_large = std::make_error_condition(std::errc::file_too_large);
    check.throws([&] { (void)region::create_shm(g.name, 4 << 20); }, too_large, g.name, "create_shm");
    check.throws([&] { (void)region::open_or_create_shm(g.name, 4 << 20); }, too_large, g.name, "open_or_create_shm");
    check.throws([&] { (void)region::create_memfd("efbig-memfd", 4 << 20); }, too_large, "efbig-memfd", "memfd");
    check.throws([&] { (void)region::open_file(path, 4 << 20, open_mode::create_only); }, too_large, path, "file");

    auto r = region::open_file(grown, 512 << 10, open_mode::create_only);
    fill(r.bytes(), 19);
    check.throws([&] { r.grow(4 << 20); }, too_large, grown, "grow");
    check(r.size() == 512 << 10, "size kept after failed grow");
    check(holds(r.bytes(), 19), "data kept after failed grow");
    return check.failed;
  });
  REQUIRE(::read(pipefd[0], &child_pid, sizeof child_pid) == sizeof child_pid);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
  CHECK(status == 0);
  // Failed creations left no object, name or temporary behind.
  CHECK_FALSE(region::unlink_shm(g.name));
  CHECK_FALSE(fs::exists(path));
  CHECK(fs::exists(grown));
  CHECK(leftover_temporaries("/dev/shm", child_pid) == 0);
  CHECK(leftover_temporaries(dir.path, child_pid) == 0);
}

TEST_CASE("a full tmpfs fails creation with ENOSPC; ramfs falls back to posix_fallocate", "[region]") {
  // A private mount namespace needs CAP_SYS_ADMIN; without it this is skipped
  // (the EFBIG test above covers the same paths without privileges).
  temp_dir small;
  temp_dir ram;
  shm_guard g{unique_name("enospc")};
  const std::string path = (small.path / "full").string();

  const int status = run_in_child([&] {
    if (::unshare(CLONE_NEWNS) != 0) return 77;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 77;
    if (::mount("shmbus-test", small.path.c_str(), "tmpfs", 0, "size=1m") != 0) return 77;
    child_checks check;
    const auto no_space = std::make_error_condition(std::errc::no_space_on_device);
    check.throws([&] { (void)region::open_file(path, 4 << 20, open_mode::create_only); }, no_space, path, "file");
    check(!fs::exists(path), "no file left behind");
    check(leftover_temporaries(small.path, ::getpid()) == 0, "no temporary file left behind");

    // This /dev/shm exists only in our namespace.
    if (::mount("shmbus-test", "/dev/shm", "tmpfs", 0, "size=1m") == 0) {
      check.throws([&] { (void)region::create_shm(g.name, 4 << 20); }, no_space, g.name, "create_shm");
      check.throws([&] { (void)region::open_or_create_shm(g.name, 4 << 20); }, no_space, g.name, "open_or_create_shm");
      check(leftover_temporaries("/dev/shm", ::getpid()) == 0, "no temporary shm left behind");
      check(region::create_shm(g.name, 512 << 10).size() == 512 << 10, "what fits is created");
    }

    if (::mount("shmbus-test", ram.path.c_str(), "ramfs", 0, nullptr) == 0) {
      auto r = region::open_file(ram.path / "emulated", 3 * page, open_mode::create_only);
      check(r.fallocate_emulated(), "ramfs has no fallocate: emulated");
      fill(r.bytes(), 20);
      r.grow(5 * page);
      check(holds(r.bytes().first(3 * page), 20), "data kept across emulated grow");
      check(all_zero(r.bytes().subspan(3 * page)), "emulated growth is zeroed");
    } else {
      std::fprintf(stderr, "ramfs mount refused: %s\n", std::strerror(errno));
    }
    return check.failed;
  });
  if (status == 77) {
    WARN("no private mount namespace here (needs CAP_SYS_ADMIN): tmpfs ENOSPC check skipped");
    return;
  }
  CHECK(status == 0);
}
