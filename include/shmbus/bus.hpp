// bus: a named set of channels on one host, found without a daemon.
//
// A bus is a small directory region plus one region per channel, all POSIX
// shared-memory objects named after the bus:
//
//   /dev/shm/shmbus.<bus>              the directory: a header page, channel
//                                      entries, participant entries
//                                      (docs/LAYOUT.md, "Bus directory")
//   /dev/shm/shmbus.<bus>.<channel>    one channel region each (docs/LAYOUT.md)
//
// Names of buses and channels are 1..48 characters of [A-Za-z0-9_-], not
// starting with '-'; so a '.' always separates the bus from the channel and
// nothing a user names can collide with another bus's objects. Names are
// checked before any system call (errc::bad_name).
//
// The directory is a listing, not an authority. A channel exists when its
// region exists; its entry, written after the region, lets tools list it
// without scanning /dev/shm. Opening a channel records its entry if it is
// missing (a creator that crashed in between, a race with remove_unused()),
// so the listing heals itself. Entries and participant slots change only by
// compare-and-swap on a state+generation word (docs/BUS.md explains each
// protocol and its races).
//
// Every handle holds one participant entry naming its process (pid and
// start time) and frees it when destroyed; the entry of a process that died
// without doing so is reclaimed by whoever next needs a slot, and
// participants() reports it as not alive meanwhile.
//
// Thread-safety: a bus handle may be used by several threads at once (all
// members are safe to call concurrently, except moving and destroying it);
// the channels, publishers and subscribers it hands out follow their own
// rules (channel.hpp).
#pragma once

#include <shmbus/channel.hpp>
#include <shmbus/error.hpp>
#include <shmbus/export.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus {

/// How a bus handle creates objects. Only creation reads these: opening an
/// existing bus or channel keeps the mode, group and sizes it was made with.
struct bus_options {
  /// Permission bits of the directory and channel regions this handle
  /// creates (exactly these: the umask does not apply). Must include 0600.
  /// With a `group` and the default 0600, the objects get 0660.
  mode_t mode = 0600;
  /// Group that owns what this handle creates (fchown), e.g. to share a bus
  /// between services running as different users. The creator must belong
  /// to it (or be root).
  std::optional<gid_t> group;
  /// Channel entries of a new directory: at most this many channels are
  /// listed at once (1..4096).
  std::uint32_t max_channels = 64;
  /// Participant entries of a new directory: at most this many bus handles,
  /// in live processes, at once (1..4096).
  std::uint32_t max_participants = 128;
  /// How long an opener waits for a concurrent creator to finish writing a
  /// directory or channel header (or to grant its group access) before it
  /// gives up with errc::timed_out.
  std::chrono::milliseconds init_timeout{1000};
};

/// One channel of a bus, as channels() reports it.
struct channel_info {
  std::string name;             ///< the channel's name (without the bus)
  std::string type_name;        ///< payload type's name; empty for byte channels
  std::uint32_t type_size = 0;  ///< sizeof the payload; 0 for byte channels
  std::uint32_t type_align = 0;
  overflow_policy policy = overflow_policy::block;
  std::uint64_t capacity = 0;      ///< ring bytes
  std::uint32_t max_message = 0;   ///< largest payload in bytes
  std::uint64_t created_ns = 0;    ///< when it was recorded (CLOCK_REALTIME ns)
  /// True when the channel's region was opened and validated: then the
  /// fields above come from its header and `stats` is a live snapshot.
  /// False: the fields come from the directory entry, and `problem` says why
  /// the region could not be read (removed, not initialised, corrupt...).
  bool available = false;
  std::string problem;
  channel::statistics stats;  ///< publishers, subscribers, parked, published, tail
};

/// One bus handle, as participants() reports it.
struct participant_info {
  std::uint32_t slot = 0;        ///< index of its participant entry
  std::int32_t pid = 0;
  std::uint64_t start_time = 0;  ///< clock ticks since boot (/proc/<pid>/stat field 22)
  std::uint64_t joined_ns = 0;   ///< when it opened the bus (CLOCK_REALTIME ns)
  bool alive = false;            ///< the process (pid and start time) still runs
};

namespace detail {
struct bus_state;
}  // namespace detail

/// A named bus: opens channels by name, lists them and the processes using
/// it, and cleans up. Move-only; a moved-from bus may only be assigned to or
/// destroyed.
class SHMBUS_API bus {
 public:
  /// Longest bus or channel name.
  static constexpr std::size_t max_name_length = 48;

  /// Whether `name` is a valid bus or channel name: 1..48 characters of
  /// [A-Za-z0-9_-], not starting with '-'. noexcept.
  static bool valid_name(std::string_view name) noexcept;
  /// The shared-memory object name of a bus directory ("/shmbus.<bus>") or,
  /// with a channel, of a channel region ("/shmbus.<bus>.<channel>"); its
  /// file is "/dev/shm" + that. Throws errc::bad_name.
  static std::string object_name(std::string_view bus_name, std::string_view channel_name = {});

  /// Opens the bus `name`, creating its directory if there is none (with
  /// `options`), and registers this handle as a participant. Throws
  /// shmbus::error: errc::bad_name (before any system call),
  /// errc::region_corrupt (an object of that name that is not a bus
  /// directory), errc::version_mismatch, errc::timed_out (a creator never
  /// finished), errc::would_block (every participant entry is held by a
  /// live process), or the errno of a refused open (EACCES: someone else's
  /// bus) or create.
  static bus open(std::string_view name, bus_options options = {});

  bus(bus&&) noexcept;
  bus& operator=(bus&&) noexcept;
  bus(const bus&) = delete;
  bus& operator=(const bus&) = delete;
  /// Frees this handle's participant entry; channels stay.
  ~bus();

  const std::string& name() const noexcept;
  /// Entries of this bus's directory (fixed when it was created).
  std::uint32_t max_channels() const noexcept;
  std::uint32_t max_participants() const noexcept;
  /// Index of this handle's participant entry.
  std::uint32_t participant_slot() const noexcept;
  explicit operator bool() const noexcept { return m_state != nullptr; }

  // ---- channels ----------------------------------------------------------------

  /// Opens the channel `name`, creating it with `options` and `type` if it
  /// does not exist (options apply only then), and makes sure the directory
  /// lists it. An existing channel must carry `type` (size, alignment and
  /// name hash; a byte channel is size 0), else errc::type_mismatch.
  /// Throws errc::bad_name, errc::bad_size (options), errc::region_corrupt,
  /// errc::version_mismatch, errc::timed_out, errc::would_block (creating
  /// a channel when every channel entry is taken), or an errno.
  channel open_channel(std::string_view name, const channel_options& options, const payload_type& type);
  /// Attaches to an existing channel whatever it carries (for tools: a
  /// byte view of a typed channel). Throws like open_channel, and
  /// std::errc::no_such_file_or_directory when there is no such channel.
  channel attach_channel(std::string_view name) const;

  /// A publisher of Ts on channel `name`, created on first use.
  template <channel_payload T>
  shmbus::publisher<T> publisher(std::string_view channel_name, const channel_options& options = {},
                                 publisher_options publishing = {}) {
    return shmbus::publisher<T>(open_channel(channel_name, options, payload_type_of<T>()), publishing);
  }
  /// A subscriber to Ts on channel `name`, created on first use.
  template <channel_payload T>
  shmbus::subscriber<T> subscriber(std::string_view channel_name, subscriber_options subscribing = {},
                                   const channel_options& options = {}) {
    return shmbus::subscriber<T>(open_channel(channel_name, options, payload_type_of<T>()), subscribing);
  }
  /// A publisher of variable-length bytes (a byte channel: payload size 0).
  shmbus::byte_publisher bytes_publisher(std::string_view channel_name, const channel_options& options = {},
                                         publisher_options publishing = {});
  /// A subscriber to a byte channel.
  shmbus::byte_subscriber bytes_subscriber(std::string_view channel_name, subscriber_options subscribing = {},
                                           const channel_options& options = {});

  // ---- listing (for tools) ---------------------------------------------------------

  /// The channels the directory lists, sorted by name, each with a live
  /// snapshot of its counters. Never waits for a half-created channel: it is
  /// reported unavailable. Throws only on allocation failure.
  std::vector<channel_info> channels() const;
  /// The participant entries in use, by slot, alive or not. A handle still
  /// writing its entry is left out.
  std::vector<participant_info> participants() const;
  /// The buses found in /dev/shm (objects named shmbus.<name>, <name>
  /// valid), sorted. Throws if /dev/shm cannot be read.
  static std::vector<std::string> list();

  // ---- removal --------------------------------------------------------------------

  /// Removes the bus `name`: unlinks every channel region the directory
  /// lists or /dev/shm holds under shmbus.<name>.*, then the directory.
  /// Mappings stay valid; handles keep working but are unreachable by name.
  /// Returns false if there was nothing to remove. Throws errc::bad_name, or
  /// the errno of a refused unlink (someone else's object).
  static bool remove(std::string_view name);
  /// Unlinks the channels of this bus that nobody uses (no live process
  /// has a channel handle from a bus on it, and no active publisher or
  /// subscriber slot is held by a live process), frees their entries, frees
  /// the entries of dead participants and broken entries, and returns the
  /// names it unlinked. Channels that cannot be opened or validated, and
  /// objects this user may not unlink, are left alone. Every channel handle
  /// a bus makes holds a shared flock(2) on the channel's object, and the
  /// channel is unlinked only under the exclusive lock, so a channel being
  /// opened concurrently is either kept or opened anew (the `shmbus gc`
  /// tool).
  std::vector<std::string> remove_unused();

 private:
  explicit bus(std::unique_ptr<detail::bus_state> s) noexcept;
  std::unique_ptr<detail::bus_state> m_state;
};

}  // namespace shmbus
