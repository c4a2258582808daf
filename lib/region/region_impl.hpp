// Private helpers shared by the region backends (lib/region/*.cpp).
#pragma once

#include <shmbus/error.hpp>
#include <shmbus/fd.hpp>
#include <shmbus/region.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus::detail {

/// Builds regions from their parts; the one friend of shmbus::region.
struct region_factory {
  /// Everything a region holds. `data` is a live mapping of `size` bytes.
  struct parts {
    region_kind kind = region_kind::none;
    std::string name;
    unique_fd fd;
    std::byte* data = nullptr;
    std::size_t size = 0;
    int sysv_id = -1;
    bool read_only = false;
    bool created = false;
    bool fallocate_emulated = false;
  };

  /// Wraps an existing mapping. noexcept.
  static region make(parts p) noexcept;

  /// Maps `p.size` bytes of `p.fd` MAP_SHARED (PROT_READ only when read_only)
  /// and wraps it. Throws; `p.fd` is closed on failure.
  static region map_fd(parts p);
};

/// Checks a requested size (not 0, at most region::max_size) and rounds it up
/// to the page size. Throws errc::bad_size naming `operation` and `object`.
std::size_t region_round_size(std::size_t size, std::string_view operation, std::string_view object);

/// Checks a shared-memory or memfd name (see region::create_shm) and returns
/// it with exactly one leading '/'. Throws errc::bad_name.
std::string region_shm_name(std::string_view name, std::string_view operation);

/// Unlinks the shared-memory object `name` only while the name still refers
/// to the object `fd` has open (the check and the unlink are two calls: a
/// replacement in between can still be hit); true if it unlinked it.
/// Throws errc::bad_name, or the errno of a failed stat or shm_unlink.
bool region_unlink_shm_if_same(std::string_view name, int fd);

/// The names (without '/') of the POSIX shared-memory objects that start
/// with `prefix`, sorted: the entries of /dev/shm, where glibc keeps them.
/// Throws (opendir, readdir).
std::vector<std::string> region_shm_objects(std::string_view prefix);

/// The size of the object behind `fd` (fstat), refusing what cannot be
/// mapped without SIGBUS: not a regular file (errc::not_supported), empty or
/// absurdly large (errc::bad_size). Throws.
std::size_t region_existing_size(int fd, std::string_view operation, std::string_view object);

/// Reserves [offset, offset + length) of `fd` and extends the file to cover
/// it, with fallocate(2); where the filesystem answers EOPNOTSUPP, with
/// posix_fallocate(3), and then returns true. Throws (ENOSPC, EFBIG, EPERM
/// from seals...) naming `object`.
bool region_allocate(int fd, std::size_t offset, std::size_t length, std::string_view object);

/// Clears O_NONBLOCK, which opening set only so that a FIFO planted under our
/// name cannot block us. Throws.
void region_clear_nonblock(int fd, std::string_view object);

}  // namespace shmbus::detail
