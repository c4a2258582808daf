// The region type itself, and the backends that have no name to look up:
// anonymous shared mappings, memfds and adopted descriptors.
#include <shmbus/region.hpp>

#include "region/region_impl.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

// Debian 12's kernel headers (6.1) predate these (Linux 6.3).
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

namespace shmbus {

using detail::region_factory;

region::region(region&& other) noexcept
    : m_data(std::exchange(other.m_data, nullptr)),
      m_size(std::exchange(other.m_size, 0)),
      m_fd(std::move(other.m_fd)),
      m_sysv_id(std::exchange(other.m_sysv_id, -1)),
      m_kind(std::exchange(other.m_kind, region_kind::none)),
      m_read_only(std::exchange(other.m_read_only, false)),
      m_created(std::exchange(other.m_created, false)),
      m_destroyed(std::exchange(other.m_destroyed, false)),
      m_fallocate_emulated(std::exchange(other.m_fallocate_emulated, false)),
      m_name(std::exchange(other.m_name, {})) {}

region& region::operator=(region&& other) noexcept {
  if (this != &other) {
    release();
    m_data = std::exchange(other.m_data, nullptr);
    m_size = std::exchange(other.m_size, 0);
    m_fd = std::move(other.m_fd);
    m_sysv_id = std::exchange(other.m_sysv_id, -1);
    m_kind = std::exchange(other.m_kind, region_kind::none);
    m_read_only = std::exchange(other.m_read_only, false);
    m_created = std::exchange(other.m_created, false);
    m_destroyed = std::exchange(other.m_destroyed, false);
    m_fallocate_emulated = std::exchange(other.m_fallocate_emulated, false);
    m_name = std::exchange(other.m_name, {});
  }
  return *this;
}

region::~region() { release(); }

void region::release() noexcept {
  if (m_data != nullptr) {
    // Failures here mean our own bookkeeping is broken; there is nobody to tell.
    if (m_kind == region_kind::sysv)
      ::shmdt(m_data);
    else
      ::munmap(m_data, m_size);
  }
  m_data = nullptr;
  m_size = 0;
  m_fd.reset();
  m_sysv_id = -1;
  m_kind = region_kind::none;
}

std::size_t region::page_size() noexcept {
  static const std::size_t size = [] {
    const long v = ::sysconf(_SC_PAGESIZE);
    return v > 0 ? static_cast<std::size_t>(v) : std::size_t{4096};
  }();
  return size;
}

// --- anonymous ---------------------------------------------------------------

region region::create_anonymous(std::size_t size) {
  constexpr std::string_view label = "anonymous";
  const std::size_t bytes = detail::region_round_size(size, "create_anonymous", label);
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) throw_errno(errno, "mmap", label, fmt::format("{} bytes", bytes));
  region_factory::parts parts;
  parts.kind = region_kind::anonymous;
  parts.name = std::string(label);
  parts.data = static_cast<std::byte*>(addr);
  parts.size = bytes;
  parts.created = true;
  return region_factory::make(std::move(parts));
}

// --- memfd -------------------------------------------------------------------

region region::create_memfd(std::string_view name, std::size_t size, memfd_seal seals) {
  constexpr std::string_view op = "create_memfd";
  // Same rules as shm names, so a label can later become a name; the kernel
  // shows it as "/memfd:<name>" without the slash we add.
  const std::string label = detail::region_shm_name(name, op).substr(1);
  const std::size_t bytes = detail::region_round_size(size, op, label);

  // MFD_NOEXEC_SEAL: nobody needs to exec shared memory, and kernels >= 6.3
  // warn (or, with vm.memfd_noexec=2, refuse) without it; older kernels
  // reject the unknown flag with EINVAL, and then we go without.
  constexpr unsigned base = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  int fd = ::memfd_create(label.c_str(), base | MFD_NOEXEC_SEAL);
  if (fd == -1 && errno == EINVAL) fd = ::memfd_create(label.c_str(), base);
  if (fd == -1) throw_errno(errno, "memfd_create", label);
  unique_fd owned(fd);

  // Allocate first: once F_SEAL_GROW is on, nobody (us included) can.
  const bool emulated = detail::region_allocate(owned.get(), 0, bytes, label);
  int kernel_seals = 0;
  if ((seals & memfd_seal::grow) != memfd_seal::none) kernel_seals |= F_SEAL_GROW;
  if ((seals & memfd_seal::shrink) != memfd_seal::none) kernel_seals |= F_SEAL_SHRINK;
  if ((seals & memfd_seal::seal) != memfd_seal::none) kernel_seals |= F_SEAL_SEAL;
  if (kernel_seals != 0 && ::fcntl(owned.get(), F_ADD_SEALS, kernel_seals) == -1)
    throw_errno(errno, "fcntl(F_ADD_SEALS)", label);

  region_factory::parts parts;
  parts.kind = region_kind::memfd;
  parts.name = label;
  parts.fd = std::move(owned);
  parts.size = bytes;
  parts.created = true;
  parts.fallocate_emulated = emulated;
  return region_factory::map_fd(std::move(parts));
}

region region::adopt_fd(unique_fd fd, std::string_view name, access_mode access) {
  constexpr std::string_view op = "adopt_fd";
  std::string label = name.empty() ? fmt::format("fd {}", fd.get()) : std::string(name);
  if (!fd) throw error(std::make_error_code(std::errc::bad_file_descriptor), op, label);

  // An fd inherited through exec lost FD_CLOEXEC on purpose; it should not
  // leak into our own children now.
  const int fd_flags = ::fcntl(fd.get(), F_GETFD);
  if (fd_flags == -1 || ::fcntl(fd.get(), F_SETFD, fd_flags | FD_CLOEXEC) == -1)
    throw_errno(errno, "fcntl(F_SETFD)", label);

  // What the object is matters more than how the fd was opened.
  const std::size_t size = detail::region_existing_size(fd.get(), op, label);
  const bool read_only = access == access_mode::read_only;
  const int status = ::fcntl(fd.get(), F_GETFL);
  if (status == -1) throw_errno(errno, "fcntl(F_GETFL)", label);
  const int acc = status & O_ACCMODE;
  if (acc == O_WRONLY || (!read_only && acc == O_RDONLY))
    throw error(std::make_error_code(std::errc::permission_denied), op, label,
                acc == O_WRONLY ? "the descriptor is write-only" : "the descriptor is read-only");

  region_factory::parts parts;
  parts.kind = region_kind::adopted;
  parts.name = std::move(label);
  parts.fd = std::move(fd);
  parts.size = size;
  parts.read_only = read_only;
  return region_factory::map_fd(std::move(parts));
}

// --- operations --------------------------------------------------------------

void region::grow(std::size_t new_size) {
  constexpr std::string_view op = "grow";
  switch (m_kind) {
    case region_kind::shm:
    case region_kind::memfd:
    case region_kind::adopted:
    case region_kind::file: break;
    case region_kind::none: throw error(errc::not_supported, op, m_name, "empty region");
    case region_kind::anonymous:
    case region_kind::sysv:
      throw error(errc::not_supported, op, m_name, "anonymous and System V regions have a fixed size");
  }
  if (m_read_only) throw error(errc::not_supported, op, m_name, "the region is read-only");
  const std::size_t bytes = detail::region_round_size(new_size, op, m_name);
  if (bytes <= m_size) return;

  // Allocate before the mapping covers the new pages: past EOF they would
  // SIGBUS, and unbacked they would SIGBUS when tmpfs or the disk is full.
  // If another process grew the object already, this reserves nothing new.
  const bool emulated = detail::region_allocate(m_fd.get(), m_size, bytes - m_size, m_name);
  // MAYMOVE: the pages after ours are rarely free; callers re-read data().
  void* addr = ::mremap(m_data, m_size, bytes, MREMAP_MAYMOVE);
  if (addr == MAP_FAILED) throw_errno(errno, "mremap", m_name, fmt::format("{} to {} bytes", m_size, bytes));
  m_data = static_cast<std::byte*>(addr);
  m_size = bytes;
  m_fallocate_emulated = m_fallocate_emulated || emulated;
}

void region::sync(std::size_t offset, std::size_t length, sync_mode mode) {
  if (m_data == nullptr) throw error(errc::not_supported, "msync", m_name, "empty region");
  if (offset > m_size || length > m_size - offset)
    throw error(errc::bad_size, "msync", m_name,
                fmt::format("range [{}, +{}) is outside the region's {} bytes", offset, length, m_size));
  if (length == 0) return;
  // msync wants a page-aligned start; the mapping itself starts on a page.
  const std::size_t start = offset / page_size() * page_size();
  const int flags = mode == sync_mode::sync ? MS_SYNC : MS_ASYNC;
  if (::msync(m_data + start, offset + length - start, flags) != 0)
    throw_errno(errno, "msync", m_name, fmt::format("range [{}, +{})", offset, length));
}

void region::sync(sync_mode mode) { sync(0, m_size, mode); }

unique_fd region::dup_fd(bool cloexec) const {
  if (!m_fd) throw error(errc::not_supported, "dup_fd", m_name, "this kind of region has no descriptor");
  const int fd = ::fcntl(m_fd.get(), cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
  if (fd == -1) throw_errno(errno, cloexec ? "fcntl(F_DUPFD_CLOEXEC)" : "fcntl(F_DUPFD)", m_name);
  return unique_fd(fd);
}

}  // namespace shmbus
