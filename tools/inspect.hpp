// Read-only views of buses and channels, for ls, stat and gc.
//
// A bus is read without joining it: its directory and its channels are
// opened O_RDONLY and mapped PROT_READ, validated by the library's own
// attach code (detail::directory, channel::attach, detail::ring), and their
// slots are read the way publishers read them (atomic loads). Nothing is
// written, so looking at a bus never changes it, and a bus that this user
// may read but not write (a group's bus) can still be listed.
//
// What the views hold is a snapshot: slots change while they are read, so
// a subscriber may appear a moment after it left, and counts may disagree
// by one with the listing.
#pragma once

#include <shmbus/channel.hpp>

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shmbus::tool {

/// Owner and permissions of a /dev/shm object (stat(2) of its file).
struct object_owner {
  bool known = false;  ///< false when stat failed (the object went away)
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t mode = 0;
  std::uint64_t changed_ns = 0;  ///< st_ctim
};
object_owner owner_of(const std::string& object);

/// One publisher or subscriber slot in use.
struct slot_view {
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;  ///< tells a slot's incarnations apart between samples
  std::int32_t pid = 0;
  std::uint64_t start_time = 0;
  bool starting = false;  ///< taken, its owner has not written its pid yet
  bool alive = false;     ///< its process runs (a starting slot counts as alive)
  // subscribers
  std::uint64_t position = 0;  ///< the next position it will read
  std::uint64_t sequence = ~std::uint64_t{0};  ///< the sequence it expects next (NONE: unknown)
  bool parked = false;  ///< asleep on its doorbell (else spinning, or handling a message)
  // Not shown: the slots' counters (subscribers' received/missed,
  // publishers' published) are never reset when a slot changes owner, so
  // they mix the counts of every process that held it.
};

struct channel_view {
  std::string name;    ///< the channel's name
  std::string object;  ///< "/shmbus.<bus>.<channel>"
  bool listed = false; ///< the bus directory lists it (else only found in /dev/shm)
  /// The region was opened and validated; else `problem` says why not and
  /// only the listing's fields are filled.
  bool available = false;
  std::string problem;
  std::string type_name;  ///< empty for a byte channel
  std::uint32_t type_size = 0;
  std::uint32_t type_align = 0;
  overflow_policy policy = overflow_policy::block;
  std::uint64_t capacity = 0;
  std::uint32_t max_message = 0;
  std::uint64_t tail_position = 0;
  std::uint64_t published = 0;  ///< data frames claimed (tail sequence)
  std::uint64_t created_ns = 0;
  std::vector<slot_view> publishers;
  std::vector<slot_view> subscribers;
  object_owner owner;

  /// A publisher or subscriber slot is held by a live (or starting) process.
  bool in_use() const noexcept;
  /// "bytes" or "name (8 B)".
  std::string type_string() const;
};

struct participant_view {
  std::uint32_t slot = 0;
  std::int32_t pid = 0;
  bool alive = false;
  std::uint64_t joined_ns = 0;
};

struct bus_view {
  std::string name;
  std::string object;  ///< "/shmbus.<bus>"
  object_owner owner;
  std::uint32_t max_channels = 0;
  std::uint32_t max_participants = 0;
  std::vector<participant_view> participants;
  std::vector<channel_view> channels;  ///< listed or found in /dev/shm, by name

  std::size_t live_participants() const noexcept;
};

/// How opening a bus directory read-only went.
enum class bus_problem : std::uint8_t {
  none,
  missing,        ///< no such object
  refused,        ///< permission denied
  invalid,        ///< not a bus directory, another version, corrupt
  uninitialised,  ///< its magic is still 0 (being created, or its creator died)
};

/// Reads the bus `name` without joining it. On a problem, returns nothing
/// and sets `problem` and `why` (a sentence naming the object).
std::optional<bus_view> try_inspect_bus(const std::string& name, bus_problem& problem, std::string& why);
/// Same; a problem is a failure (exit 1) with a one-line message.
bus_view inspect_bus(const std::string& name);
/// Reads one channel region read-only; never throws for a bad region
/// (available == false, problem says why).
channel_view inspect_channel(const std::string& bus_name, const std::string& channel_name);

/// The names of the objects in /dev/shm that start with "shmbus.", sorted.
std::vector<std::string> shmbus_objects();

}  // namespace shmbus::tool
