#include "region/region_impl.hpp"

#include "core/syscall.hpp"

#include <fmt/format.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>

namespace shmbus::detail {

static_assert(NAME_MAX == 255, "region::max_name_length assumes NAME_MAX == 255");

region region_factory::make(parts p) noexcept {
  region r;
  r.m_kind = p.kind;
  r.m_name = std::move(p.name);
  r.m_fd = std::move(p.fd);
  r.m_data = p.data;
  r.m_size = p.size;
  r.m_sysv_id = p.sysv_id;
  r.m_read_only = p.read_only;
  r.m_created = p.created;
  r.m_fallocate_emulated = p.fallocate_emulated;
  return r;
}

region region_factory::map_fd(parts p) {
  const int prot = p.read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* addr = ::mmap(nullptr, p.size, prot, MAP_SHARED, p.fd.get(), 0);
  if (addr == MAP_FAILED) throw_errno(errno, "mmap", p.name, fmt::format("{} bytes", p.size));
  p.data = static_cast<std::byte*>(addr);
  return make(std::move(p));
}

std::size_t region_round_size(std::size_t size, std::string_view operation, std::string_view object) {
  if (size == 0) throw error(errc::bad_size, operation, object, "size 0");
  // The limit also keeps the rounding below from overflowing.
  if (size > region::max_size)
    throw error(errc::bad_size, operation, object,
                fmt::format("{} bytes is more than the limit of {} (2^46)", size, region::max_size));
  const std::size_t page = region::page_size();
  return (size + page - 1) / page * page;
}

std::string region_shm_name(std::string_view name, std::string_view operation) {
  std::string_view body = name;
  if (!body.empty() && body.front() == '/') body.remove_prefix(1);
  auto refuse = [&](std::string_view why) { throw error(errc::bad_name, operation, name, why); };
  if (body.empty()) refuse("empty name");
  if (body.size() > region::max_name_length)
    refuse(fmt::format("{} characters, at most {}", body.size(), region::max_name_length));
  // A leading '.' would also make "." and ".."; shmbus keeps it for its
  // temporary objects (".shmbus-tmp-*", see region_named.cpp).
  if (body.front() == '.') refuse("starts with '.'");
  for (char c : body) {
    if (c == '/') refuse("'/' after the leading one");
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e) refuse(fmt::format("non-printable character 0x{:02x}", u));
  }
  // Appended rather than "/" + std::string(body): g++ 12 at -O3 warns
  // (-Wrestrict) about the latter for no reason.
  std::string shm_name(1, '/');
  return shm_name.append(body);
}

std::vector<std::string> region_shm_objects(std::string_view prefix) {
  constexpr const char* shm_directory = "/dev/shm";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(shm_directory), &::closedir);
  if (!dir) throw_errno(errno, "opendir", shm_directory);
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) throw_errno(errno, "readdir", shm_directory);
      break;
    }
    const std::string_view n = entry->d_name;
    if (n.starts_with(prefix)) names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::size_t region_existing_size(int fd, std::string_view operation, std::string_view object) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno(errno, "fstat", object);
  if (!S_ISREG(st.st_mode))
    throw error(errc::not_supported, operation, object,
                fmt::format("not a regular file or shared-memory object (mode 0{:o})", st.st_mode));
  // Mapping anything of an empty object would map past its end: SIGBUS.
  if (st.st_size <= 0) throw error(errc::bad_size, operation, object, "the object is empty");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size > region::max_size)
    throw error(errc::bad_size, operation, object,
                fmt::format("{} bytes is more than the limit of {} (2^46)", size, region::max_size));
  return size;
}

bool region_allocate(int fd, std::size_t offset, std::size_t length, std::string_view object) {
  const auto off = static_cast<off_t>(offset);
  const auto len = static_cast<off_t>(length);
  // Mode 0 both reserves the blocks and extends the file size.
  if (retry_on_eintr([&] { return ::fallocate(fd, 0, off, len); }) == 0) return false;
  const int err = errno;
  if (err != EOPNOTSUPP)
    throw_errno(err, "fallocate", object, fmt::format("{} bytes at offset {}", length, offset));
  // Only a filesystem without fallocate (ramfs, some FUSE and network ones)
  // gets here; glibc then writes a byte per block, which reserves space too.
  int r = 0;
  do r = ::posix_fallocate(fd, off, len);  // returns the error, leaves errno alone
  while (r == EINTR);
  if (r != 0) throw_errno(r, "posix_fallocate", object, fmt::format("{} bytes at offset {}", length, offset));
  return true;
}

void region_clear_nonblock(int fd, std::string_view object) {
  // Left set, O_NONBLOCK would make io_uring reads of this fd fail with
  // EAGAIN instead of waiting, for whoever takes it through fd()/dup_fd().
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags == -1 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1) throw_errno(errno, "fcntl(F_SETFL)", object);
}

}  // namespace shmbus::detail
