// The backends reached by name: POSIX shared memory and regular files.
//
// Creating a named object safely: open, size, allocate, map.
//
// A named object created in place is visible to other processes from the
// moment open(O_CREAT) returns, still empty. Whoever opens it then sees a size
// of 0 (or a short one, mid-fallocate), and a process that trusted the size it
// meant to have would SIGBUS. So creation is staged:
//
//   1. create "<dir>/.shmbus-tmp-<pid>-<n>" with O_CREAT|O_EXCL (shm_open for
//      shared memory, open(2) for files), mode as asked, then fchmod to that
//      exact mode (the umask narrowed it, and it is still private to us);
//   2. fallocate the full size (ENOSPC/EFBIG surface here, as errors);
//   3. mmap it;
//   4. link(2) it to the real name: atomic, and it fails with EEXIST if the
//      name exists — the exclusivity O_EXCL would have given;
//   5. unlink the temporary name (also on every failure path).
//
// Openers therefore find either nothing or a fully sized object. A crash
// between 1 and 5 leaves a ".shmbus-tmp-<pid>-*" entry behind, which a
// cleaner can recognize by its dead pid. Names starting with '.' are refused
// for users so that these never collide with real objects.
#include <shmbus/region.hpp>

#include "core/syscall.hpp"
#include "region/region_impl.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <optional>
#include <utility>

namespace shmbus {
namespace {

using detail::region_factory;

// glibc's shm_open is open(2) below this fixed directory; link(2) needs the path.
constexpr std::string_view shm_directory = "/dev/shm";

// How one named object is reached.
struct target {
  region_kind kind;       // shm or file
  std::string object;     // the name for errors and region::name()
  std::string open_name;  // what shm_open/open receive
  std::string directory;  // where the temporary object goes, without trailing '/'
  std::string link_path;  // the object's path for link(2)

  bool shm() const noexcept { return kind == region_kind::shm; }
  const char* open_call() const noexcept { return shm() ? "shm_open" : "open"; }

  // Opens the existing object (never creates).
  int open_existing(int flags) const {
    // O_NONBLOCK: opening a FIFO that someone planted under our name must
    // fail the S_ISREG check, not block; region_clear_nonblock undoes it.
    flags |= O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    return detail::retry_on_eintr([&] {
      return shm() ? ::shm_open(open_name.c_str(), flags, 0) : ::open(open_name.c_str(), flags);
    });
  }
};

target shm_target(std::string_view name, std::string_view operation) {
  std::string n = detail::region_shm_name(name, operation);
  std::string path = std::string(shm_directory) + n;
  return {region_kind::shm, n, n, std::string(shm_directory), std::move(path)};
}

target file_target(const std::filesystem::path& path) {
  std::string p = path.string();
  // "x" has an empty parent; GCC 12 misreports assigning "." to it (-Wrestrict).
  std::string dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
  return {region_kind::file, p, p, std::move(dir), p};
}

std::atomic<unsigned> temporary_counter{0};

// Steps 1 and 5 of the protocol above: a temporary object that removes its
// name when it goes away.
class staged_object {
 public:
  staged_object(const target& t, mode_t mode, std::string_view operation) : m_target(t) {
    // A stale temporary from a dead process with our pid is the only thing
    // that can be in the way; step over it.
    for (int attempt = 0; attempt < 64 && !m_fd; ++attempt) {
      const std::string base =
          fmt::format(".shmbus-tmp-{}-{}", ::getpid(), temporary_counter.fetch_add(1, std::memory_order_relaxed));
      m_shm_name = "/" + base;
      m_path = t.directory + "/" + base;
      const int fd = create_exclusive(mode);
      if (fd >= 0)
        m_fd.reset(fd);
      else if (errno != EEXIST)
        throw_errno(errno, t.open_call(), t.object, fmt::format("creating '{}'", m_path));
    }
    if (!m_fd) throw error(std::make_error_code(std::errc::file_exists), operation, t.object, "no free temporary name");
    // The umask only ever removes bits; the caller asked for exactly `mode`
    // (a group it wants to grant, say), and nobody else can see it yet.
    if (::fchmod(m_fd.get(), mode) != 0) {
      const int err = errno;
      remove_name();  // no destructor runs for a constructor that throws
      throw_errno(err, "fchmod", t.object, fmt::format("mode 0{:o}", mode));
    }
  }
  staged_object(const staged_object&) = delete;
  staged_object& operator=(const staged_object&) = delete;
  ~staged_object() { remove_name(); }

  int fd() const noexcept { return m_fd.get(); }
  unique_fd take_fd() noexcept { return std::move(m_fd); }

  // Step 4: false if the name exists.
  bool publish() const {
    if (::link(m_path.c_str(), m_target.link_path.c_str()) == 0) return true;
    if (errno == EEXIST) return false;
    throw_errno(errno, "link", m_target.object, fmt::format("publishing '{}'", m_path));
  }

 private:
  int create_exclusive(mode_t mode) const {
    constexpr int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY;
    return detail::retry_on_eintr([&] {
      return m_target.shm() ? ::shm_open(m_shm_name.c_str(), flags, mode) : ::open(m_path.c_str(), flags, mode);
    });
  }

  void remove_name() const noexcept {
    if (m_target.shm())
      ::shm_unlink(m_shm_name.c_str());
    else
      ::unlink(m_path.c_str());
  }

  const target& m_target;
  std::string m_shm_name;  // "/.shmbus-tmp-<pid>-<n>", for shm_open/shm_unlink
  std::string m_path;      // the same in the target's directory, for open/link/unlink
  unique_fd m_fd;
};

// Creates the object as the protocol above says; nullopt if the name exists.
std::optional<region> try_create(const target& t, std::size_t bytes, mode_t mode, std::string_view operation) {
  staged_object staged(t, mode, operation);
  const bool emulated = detail::region_allocate(staged.fd(), 0, bytes, t.object);
  region_factory::parts parts;
  parts.kind = t.kind;
  parts.name = t.object;
  parts.fd = staged.take_fd();
  parts.size = bytes;
  parts.created = true;
  parts.fallocate_emulated = emulated;
  region r = region_factory::map_fd(std::move(parts));
  if (!staged.publish()) return std::nullopt;
  return std::optional<region>(std::move(r));
}

// Opens an existing object; nullopt if it does not exist. `wanted` (0 = any)
// is the least size the caller needs: more than the object has is refused
// rather than mapped past its end.
std::optional<region> try_open(const target& t, access_mode access, std::size_t wanted, std::string_view operation) {
  const bool read_only = access == access_mode::read_only;
  unique_fd fd(t.open_existing(read_only ? O_RDONLY : O_RDWR));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    throw_errno(errno, t.open_call(), t.object);
  }
  const std::size_t size = detail::region_existing_size(fd.get(), operation, t.object);
  if (wanted > size)
    throw error(errc::bad_size, operation, t.object,
                fmt::format("asked for {} bytes, the object has {}", wanted, size));
  detail::region_clear_nonblock(fd.get(), t.object);
  region_factory::parts parts;
  parts.kind = t.kind;
  parts.name = t.object;
  parts.fd = std::move(fd);
  parts.size = size;
  parts.read_only = read_only;
  return region_factory::map_fd(std::move(parts));
}

region open_named(const target& t, std::size_t size, open_mode how, access_mode access, mode_t mode,
                  std::string_view operation) {
  if (how == open_mode::open_only) {
    if (size > region::max_size)
      throw error(errc::bad_size, operation, t.object,
                  fmt::format("{} bytes is more than the limit of {} (2^46)", size, region::max_size));
    if (auto r = try_open(t, access, size, operation)) return std::move(*r);
    throw_errno(ENOENT, t.open_call(), t.object);
  }
  const std::size_t bytes = detail::region_round_size(size, operation, t.object);
  if (how == open_mode::create_only) {
    if (auto r = try_create(t, bytes, mode, operation)) return std::move(*r);
    throw error(std::make_error_code(std::errc::file_exists), operation, t.object);
  }
  // open_or_create: each miss means someone removed or created the name
  // between our two calls; a few rounds settle any honest race.
  for (int attempt = 0; attempt < 16; ++attempt) {
    if (auto r = try_open(t, access, size, operation)) return std::move(*r);
    if (auto r = try_create(t, bytes, mode, operation)) return std::move(*r);
  }
  throw error(std::make_error_code(std::errc::resource_unavailable_try_again), operation, t.object,
              "the name kept appearing and disappearing");
}

// Removes `path` only while it is still the object `fd` refers to, so that
// destroy() after someone else replaced the name leaves theirs alone.
// (A replacement between the check and the unlink can still be hit; the
// kernel offers no unlink-if-same-inode.)
template <class Unlink>
bool unlink_if_same(const std::string& path, int fd, const std::string& object, const char* call, Unlink unlink) {
  struct stat by_fd {};
  struct stat by_path {};
  if (::fstat(fd, &by_fd) != 0) throw_errno(errno, "fstat", object);
  if (::stat(path.c_str(), &by_path) != 0) {
    if (errno == ENOENT) return false;
    throw_errno(errno, "stat", object);
  }
  if (by_fd.st_dev != by_path.st_dev || by_fd.st_ino != by_path.st_ino) return false;
  if (unlink() == 0) return true;
  if (errno != ENOENT) throw_errno(errno, call, object);
  return false;
}

bool unlink_shm_if_same(const std::string& name, int fd) {
  return unlink_if_same(std::string(shm_directory) + name, fd, name, "shm_unlink",
                        [&] { return ::shm_unlink(name.c_str()); });
}

}  // namespace

bool detail::region_unlink_shm_if_same(std::string_view name, int fd) {
  return unlink_shm_if_same(detail::region_shm_name(name, "unlink_shm"), fd);
}

region region::create_shm(std::string_view name, std::size_t size, mode_t mode) {
  return open_named(shm_target(name, "create_shm"), size, open_mode::create_only, access_mode::read_write, mode,
                    "create_shm");
}

region region::open_shm(std::string_view name, access_mode access) {
  return open_named(shm_target(name, "open_shm"), 0, open_mode::open_only, access, 0, "open_shm");
}

region region::open_or_create_shm(std::string_view name, std::size_t size, mode_t mode) {
  return open_named(shm_target(name, "open_or_create_shm"), size, open_mode::open_or_create, access_mode::read_write,
                    mode, "open_or_create_shm");
}

bool region::unlink_shm(std::string_view name) {
  const std::string n = detail::region_shm_name(name, "unlink_shm");
  if (::shm_unlink(n.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  throw_errno(errno, "shm_unlink", n);
}

region region::open_file(const std::filesystem::path& path, std::size_t size, open_mode how, access_mode access,
                         mode_t mode) {
  constexpr std::string_view op = "open_file";
  if (path.empty()) throw error(errc::bad_name, op, "", "empty path");
  if (access == access_mode::read_only && how != open_mode::open_only)
    throw error(std::make_error_code(std::errc::invalid_argument), op, path.string(),
                "read-only access can only open an existing file");
  return open_named(file_target(path), size, how, access, mode, op);
}

void region::destroy() {
  if (m_destroyed) return;
  switch (m_kind) {
    case region_kind::shm:
      unlink_shm_if_same(m_name, m_fd.get());
      break;
    case region_kind::file:
      unlink_if_same(m_name, m_fd.get(), m_name, "unlink", [&] { return ::unlink(m_name.c_str()); });
      break;
    case region_kind::sysv:
      if (::shmctl(m_sysv_id, IPC_RMID, nullptr) != 0) throw_errno(errno, "shmctl(IPC_RMID)", m_name);
      break;
    case region_kind::none:
    case region_kind::memfd:
    case region_kind::adopted:
    case region_kind::anonymous: break;
  }
  m_destroyed = true;
}

}  // namespace shmbus
