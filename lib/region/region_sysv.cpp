// System V shared memory: shmget/shmat/shmdt/shmctl.
//
// There is no descriptor: a segment is named by a key (or by nothing, for
// IPC_PRIVATE) and reached by its shmid. Its size is fixed at creation, so
// there is no past-EOF to fall off: the whole segment (IPC_STAT's
// shm_segsz) is always mapped.
#include <shmbus/region.hpp>

#include "region/region_impl.hpp"

#include <fmt/format.h>

#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>

#include <cerrno>

namespace shmbus {
namespace {

using detail::region_factory;

static_assert(region::private_key == IPC_PRIVATE);

std::string key_label(key_t key) {
  if (key == IPC_PRIVATE) return "sysv:private";
  return fmt::format("sysv:key=0x{:08x}", static_cast<unsigned>(key));
}

std::string id_label(int shmid) { return fmt::format("sysv:shmid={}", shmid); }

// Attaches `shmid`, whose size is `size`; detaches nothing on failure.
region attach(int shmid, std::size_t size, bool read_only, bool created, std::string label) {
  void* addr = ::shmat(shmid, nullptr, read_only ? SHM_RDONLY : 0);
  if (addr == reinterpret_cast<void*>(-1)) throw_errno(errno, "shmat", label);
  region_factory::parts parts;
  parts.kind = region_kind::sysv;
  parts.name = std::move(label);
  parts.data = static_cast<std::byte*>(addr);
  parts.size = size;
  parts.sysv_id = shmid;
  parts.read_only = read_only;
  parts.created = created;
  return region_factory::make(std::move(parts));
}

region attach_existing(int shmid, access_mode access, std::string label) {
  shmid_ds ds{};
  if (::shmctl(shmid, IPC_STAT, &ds) != 0) throw_errno(errno, "shmctl(IPC_STAT)", label);
  // The size comes from the kernel, not from us; still refuse nonsense.
  const std::size_t size = ds.shm_segsz;
  if (size == 0 || size > region::max_size)
    throw error(errc::bad_size, "attach_sysv", label, fmt::format("segment of {} bytes", size));
  return attach(shmid, size, access == access_mode::read_only, false, std::move(label));
}

}  // namespace

region region::create_sysv(key_t key, std::size_t size, mode_t mode) {
  std::string label = key_label(key);
  const std::size_t bytes = detail::region_round_size(size, "create_sysv", label);
  // IPC_EXCL is ignored for IPC_PRIVATE, which always makes a new segment.
  const int shmid = ::shmget(key, bytes, IPC_CREAT | IPC_EXCL | static_cast<int>(mode & 0777));
  if (shmid == -1) throw_errno(errno, "shmget", label, fmt::format("{} bytes", bytes));
  if (key == IPC_PRIVATE) label = fmt::format("sysv:private shmid={}", shmid);
  try {
    return attach(shmid, bytes, false, true, std::move(label));
  } catch (...) {
    // We made it and nobody can have attached a private one; for a keyed one
    // we are still its creator, so removing it is ours to do.
    ::shmctl(shmid, IPC_RMID, nullptr);
    throw;
  }
}

region region::open_sysv_key(key_t key, access_mode access) {
  std::string label = key_label(key);
  if (key == IPC_PRIVATE)
    throw error(errc::bad_name, "open_sysv_key", label, "IPC_PRIVATE names no existing segment; use attach_sysv");
  // The permission bits asked for are checked against the segment's mode.
  const int wanted = access == access_mode::read_only ? S_IRUSR : S_IRUSR | S_IWUSR;
  const int shmid = ::shmget(key, 0, wanted);
  if (shmid == -1) throw_errno(errno, "shmget", label);
  return attach_existing(shmid, access, std::move(label));
}

region region::attach_sysv(int shmid, access_mode access) {
  return attach_existing(shmid, access, id_label(shmid));
}

}  // namespace shmbus
