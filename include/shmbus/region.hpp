// shmbus::region: one mapped shared object, whatever the kernel calls it.
//
// Every way Linux offers to share pages between processes ends in the same
// thing, a MAP_SHARED mapping, so they sit behind one move-only type:
//
//   backend     made by                        shared with                        lifetime of the object
//   ---------   ----------------------------   --------------------------------   -------------------------------
//   shm         shm_open, /dev/shm/<name>      any process that knows the name    until destroy()/unlink_shm()
//   memfd       memfd_create, sealable         whoever gets the fd (fork, exec,   until the last fd and mapping
//                                              SCM_RIGHTS), then adopt_fd()       are gone
//   file        open(2) on a path, fallocate   any process that knows the path;   until destroy() or rm;
//                                              msync makes it durable             survives reboots
//   anonymous   mmap(MAP_SHARED|MAP_ANONYMOUS) children forked after creation     until the last mapping is gone
//   sysv        shmget / shmat                 any process that knows the key     until destroy() (IPC_RMID) and
//                                              or the shmid                       the last shmdt
//
// The no-SIGBUS invariant. Touching a page of a MAP_SHARED mapping that lies
// wholly past the end of the object raises SIGBUS, and so does touching a
// page that tmpfs or the disk cannot back. So no path of this type maps a
// byte it has not made sure of:
//   - what we create is sized and its space allocated with fallocate(2)
//     *before* it is mapped (a full tmpfs or disk fails the call, with a
//     shmbus::error, instead of killing the process on first touch), and a
//     named object becomes visible under its name only once it is fully sized
//     (it is built under a temporary name and published with link(2));
//   - what we open or adopt is mapped at exactly its current size (fstat, or
//     IPC_STAT for System V); asking for more than it has is errc::bad_size;
//   - grow() allocates the new space before the mapping covers it.
// A process that truncates a shared object behind our back can still cause
// SIGBUS; seals (memfd) and permissions (named objects) are the defence.
//
// Sizes are rounded up to the page size of the running system
// (sysconf(_SC_PAGESIZE)); every descriptor is close-on-exec.
#pragma once

#include <shmbus/error.hpp>
#include <shmbus/export.hpp>
#include <shmbus/fd.hpp>

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace shmbus {

namespace detail {
struct region_factory;
}  // namespace detail

/// The backend a region lives in.
enum class region_kind : std::uint8_t {
  none,       ///< an empty (default-constructed or moved-from) region
  shm,        ///< a named POSIX shared-memory object (shm_open)
  memfd,      ///< an anonymous file made by memfd_create
  adopted,    ///< a regular or shared-memory file given as a descriptor
  file,       ///< a regular file opened by path
  anonymous,  ///< a MAP_SHARED|MAP_ANONYMOUS mapping, shared with forked children
  sysv,       ///< a System V shared-memory segment (shmget/shmat)
};

/// How an existing object is opened and mapped.
enum class access_mode : std::uint8_t {
  read_write,  ///< O_RDWR and PROT_READ|PROT_WRITE
  read_only,   ///< O_RDONLY and PROT_READ: writing to the bytes faults
};

/// What open_file does when the path does or does not exist.
enum class open_mode : std::uint8_t {
  create_only,     ///< create it; std::errc::file_exists if it exists
  open_only,       ///< open it; std::errc::no_such_file_or_directory if it does not exist
  open_or_create,  ///< open it if it exists, else create it
};

/// Whether sync() waits for the write-back.
enum class sync_mode : std::uint8_t {
  sync,   ///< msync(MS_SYNC): returns once the range is on stable storage
  async,  ///< msync(MS_ASYNC): schedules the write-back and returns
};

/// Seals for create_memfd (see fcntl(2), "File Sealing"); combine with `|`.
enum class memfd_seal : unsigned {
  none = 0,        ///< no seal: the fd's holders may resize the object
  grow = 1u << 0,    ///< F_SEAL_GROW: nobody can make the object larger
  shrink = 1u << 1,  ///< F_SEAL_SHRINK: nobody can make the object smaller
  seal = 1u << 2,    ///< F_SEAL_SEAL: nobody can change the set of seals
  /// grow | shrink | seal: a receiver may trust the size it sees forever.
  fixed_size = grow | shrink | seal,
};

/// Union of two seal sets. noexcept.
constexpr memfd_seal operator|(memfd_seal a, memfd_seal b) noexcept {
  return static_cast<memfd_seal>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
/// Intersection of two seal sets. noexcept.
constexpr memfd_seal operator&(memfd_seal a, memfd_seal b) noexcept {
  return static_cast<memfd_seal>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}

/// A mapped shared object: owns the mapping (and the descriptor, if any).
///
/// Move-only. The destructor unmaps (shmdt for System V) and closes; it never
/// removes the named object: destroy() does that. Factories and mutators throw
/// shmbus::error naming the operation, the object and the cause.
///
/// Thread safety: like any value. Const members may be called concurrently;
/// grow(), destroy(), assignment and destruction need exclusive access. The
/// mapped bytes themselves are shared with other threads and processes:
/// synchronizing access to them (std::atomic_ref) is the caller's job.
class SHMBUS_API region {
 public:
  /// The largest size a region may have (64 TiB); larger requests are errc::bad_size.
  static constexpr std::size_t max_size = std::size_t{1} << 46;
  /// The longest name accepted, without the leading '/': NAME_MAX (255) less
  /// room for suffixes that layers above append.
  static constexpr std::size_t max_name_length = 255 - 32;
  /// The System V key that creates a segment nobody can open by key (IPC_PRIVATE).
  static constexpr key_t private_key = 0;

  /// An empty region (kind() == region_kind::none). noexcept.
  region() noexcept = default;
  /// Takes over `other`'s mapping and descriptor; `other` becomes empty. noexcept.
  region(region&& other) noexcept;
  /// Releases this region's mapping (as the destructor does), then takes over `other`'s. noexcept.
  region& operator=(region&& other) noexcept;
  /// Not copyable: a copy would unmap the same pages twice.
  region(const region&) = delete;
  /// Not copyable.
  region& operator=(const region&) = delete;
  /// Unmaps (shmdt for System V) and closes the descriptor. noexcept.
  ~region();

  /// The system page size, from sysconf(_SC_PAGESIZE). Thread-safe, noexcept.
  static std::size_t page_size() noexcept;

  // --- POSIX named shared memory ------------------------------------------

  /// Creates the named object exclusively with `size` bytes (rounded up to the
  /// page size), allocated, with exactly `mode` (the umask does not apply).
  /// `name` is "/body" or "body": printable, no further '/', not starting with
  /// '.', at most max_name_length. Throws (std::errc::file_exists if it exists).
  static region create_shm(std::string_view name, std::size_t size, mode_t mode = 0600);
  /// Opens and maps an existing named object at its current size. Throws
  /// (std::errc::no_such_file_or_directory, permission_denied, errc::bad_size if empty).
  static region open_shm(std::string_view name, access_mode access = access_mode::read_write);
  /// Opens the named object, or creates it as create_shm does; created() says
  /// which happened. An existing object smaller than `size` is errc::bad_size;
  /// a larger one is mapped whole. Throws.
  static region open_or_create_shm(std::string_view name, std::size_t size, mode_t mode = 0600);
  /// Removes a name (shm_unlink); mappings stay valid. Returns false if there
  /// was no such object. Throws on other failures.
  static bool unlink_shm(std::string_view name);

  // --- memfd ---------------------------------------------------------------

  /// Creates an anonymous file of `size` bytes (rounded up), allocated, then
  /// sealed with `seals`. `name` only labels /proc/<pid>/fd. Throws.
  static region create_memfd(std::string_view name, std::size_t size, memfd_seal seals = memfd_seal::none);
  /// Takes ownership of a descriptor of a regular or shared-memory file (a
  /// memfd received over a socket, inherited through exec...) and maps its
  /// current size (fstat). Sets FD_CLOEXEC on it. `name` labels errors.
  /// Throws: errc::not_supported for other kinds of file, errc::bad_size if empty.
  static region adopt_fd(unique_fd fd, std::string_view name = {}, access_mode access = access_mode::read_write);

  // --- regular files ---------------------------------------------------------

  /// Opens and/or creates a regular file and maps it MAP_SHARED. A created file
  /// gets `size` bytes (rounded up), allocated, with exactly `mode`. An existing
  /// one is mapped at its current size; `size` (0 = any) must not exceed it,
  /// else errc::bad_size. read_only access only opens (else invalid_argument). Throws.
  static region open_file(const std::filesystem::path& path, std::size_t size, open_mode how,
                          access_mode access = access_mode::read_write, mode_t mode = 0600);

  // --- anonymous shared mapping --------------------------------------------

  /// Maps `size` bytes (rounded up) of zeroed memory shared with every child
  /// forked afterwards. Throws.
  static region create_anonymous(std::size_t size);

  // --- System V --------------------------------------------------------------

  /// Creates a segment of `size` bytes (rounded up) with `mode` and attaches
  /// it; exclusive for a key (std::errc::file_exists), always new for
  /// private_key. Calling destroy() right away (IPC_RMID) keeps it alive for
  /// those attached and their forked children only, as nginx does. Throws.
  static region create_sysv(key_t key, std::size_t size, mode_t mode = 0600);
  /// Attaches the existing segment of `key` (not private_key) at its size (IPC_STAT). Throws.
  static region open_sysv_key(key_t key, access_mode access = access_mode::read_write);
  /// Attaches the existing segment `shmid` at its size (IPC_STAT). Throws.
  static region attach_sysv(int shmid, access_mode access = access_mode::read_write);

  // --- operations ------------------------------------------------------------

  /// Makes the object at least `new_size` bytes (rounded up) — space allocated
  /// first — and remaps it; data is kept, data() may move. No-op if already that
  /// large. Also follows growth made by another process. shm, memfd, adopted and
  /// file regions only, read-write only (else errc::not_supported). On failure
  /// the mapping is unchanged. Throws.
  void grow(std::size_t new_size);
  /// msync of [offset, offset + length), the start rounded down to a page.
  /// Throws (errc::bad_size if the range leaves the region).
  void sync(std::size_t offset, std::size_t length, sync_mode mode = sync_mode::sync);
  /// msync of the whole region. Throws.
  void sync(sync_mode mode = sync_mode::sync);
  /// Removes the object's name: shm_unlink, unlink(2) of a file, IPC_RMID of a
  /// segment; does nothing for memfd, adopted and anonymous regions, or the
  /// second time. The mapping stays valid. Throws.
  void destroy();
  /// A new descriptor for the same object, to pass to a child (cloexec = false
  /// lets it survive exec; make it just before fork and close it after) or
  /// over a socket. errc::not_supported for anonymous and sysv regions. Throws.
  [[nodiscard]] unique_fd dup_fd(bool cloexec = true) const;

  // --- accessors (noexcept) ----------------------------------------------------

  /// First mapped byte, or nullptr for an empty region.
  std::byte* data() const noexcept { return m_data; }
  /// Bytes of the object that are mapped (its size; page-rounded when we created it).
  std::size_t size() const noexcept { return m_size; }
  /// data() and size() together.
  std::span<std::byte> bytes() const noexcept { return {m_data, m_size}; }
  /// The descriptor, or -1 (anonymous, sysv, empty). Still owned by the region.
  int fd() const noexcept { return m_fd.get(); }
  /// The System V shmid, or -1 for other kinds.
  int sysv_id() const noexcept { return m_sysv_id; }
  /// The backend.
  region_kind kind() const noexcept { return m_kind; }
  /// The name used in errors: "/body" for shm, the path for files, a label otherwise.
  const std::string& name() const noexcept { return m_name; }
  /// Whether the mapping is PROT_READ only.
  bool read_only() const noexcept { return m_read_only; }
  /// Whether the factory created the object (false when it opened or adopted one).
  bool created() const noexcept { return m_created; }
  /// True when the filesystem refused fallocate(2) (EOPNOTSUPP) and space was
  /// reserved with posix_fallocate's writes instead: slower, and on such a
  /// filesystem a full disk may still surface late.
  bool fallocate_emulated() const noexcept { return m_fallocate_emulated; }
  /// False for an empty region.
  explicit operator bool() const noexcept { return m_data != nullptr; }

 private:
  friend struct detail::region_factory;  // lib/region/region_impl.hpp builds regions from parts
  void release() noexcept;

  std::byte* m_data = nullptr;
  std::size_t m_size = 0;
  unique_fd m_fd;
  int m_sysv_id = -1;
  region_kind m_kind = region_kind::none;
  bool m_read_only = false;
  bool m_created = false;
  bool m_destroyed = false;
  bool m_fallocate_emulated = false;
  std::string m_name;
};

}  // namespace shmbus
