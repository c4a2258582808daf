// directory: the protocol of a bus directory region (layout:
// directory_layout.hpp, docs/LAYOUT.md "Bus directory"). Process-local logic
// over shared data; nothing here knows about channels' rings, names in
// /dev/shm or coroutines.
//
// Every entry (channel or participant) starts with one 8-byte word,
// {state, generation}, that changes only by compare-and-swap, so a change
// always names the incarnation it acts on:
//
//   participant   free{g} --join: CAS--> active{g+1} --leave: CAS--> free{g+1}
//                 active{g} (owner dead) --reclaim: CAS--> active{g+1} (taken
//                 over at once by the reclaimer) or free{g} (remove_unused)
//
//   channel       free{g} --CAS--> creating{g+1} --store--> active{g+1}
//                 active{g} or creating{g} (recorder dead) --CAS--> free{g}
//
// The identity rule. An entry's pid/start time are written by its owner
// *after* the CAS that took it, so for a moment they still name the
// previous owner, who may be dead. To never mistake a live newcomer for
// that corpse, the owner writes pid and start time, then stores the entry's
// current generation into a second word (identity_generation /
// owner_generation, release). A reader trusts the identity only when that
// word equals the generation of the state word it read, and only if the
// state word is unchanged after reading (acquire loads, re-load): a
// seqlock whose sequence is the state word itself.
//
// Every field is read through std::atomic_ref (other processes write the
// same bytes), and every value is validated before use: names must be
// valid names, identities must pass the rule above; what fails is reported
// (an invalid entry) or skipped, never trusted.
#pragma once

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/region.hpp>

#include "bus/directory_layout.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shmbus::detail {

/// Whether `name` is a valid bus or channel name (bus::valid_name).
bool valid_bus_name(std::string_view name) noexcept;

/// CLOCK_REALTIME in nanoseconds.
std::uint64_t realtime_ns() noexcept;

/// What a channel entry records about its channel. Information only: the
/// channel's own header is authoritative.
struct channel_description {
  std::uint32_t type_size = 0;
  std::uint32_t type_align = 0;
  std::uint64_t type_hash = 0;
  std::uint64_t capacity = 0;
  std::uint32_t max_message = 0;
  std::uint32_t policy = 0;
};

/// A consistent snapshot of one channel entry that was not free.
struct channel_record {
  std::uint32_t index = 0;
  std::uint64_t incarnation = 0;  ///< the state word the snapshot was taken under
  std::string name;               ///< valid only if valid_name
  bool valid_name = false;        ///< NUL-terminated and a valid channel name
  channel_description description;
  std::uint64_t created_ns = 0;
  std::optional<process_identity> owner;  ///< once the recorder has written it

  std::uint32_t state() const noexcept { return bus_layout::state_of(incarnation); }
};

/// A consistent snapshot of one participant entry whose owner has written
/// its identity.
struct participant_record {
  std::uint32_t index = 0;
  std::uint64_t incarnation = 0;
  process_identity id;
  std::uint64_t joined_ns = 0;
};

/// A validated, mapped bus directory.
class directory {
 public:
  /// Bytes of a directory with these entry counts (not page-rounded).
  static std::size_t region_size(std::uint32_t channels, std::uint32_t participants) noexcept;
  /// Writes a fresh directory into zero-filled `bytes` (at least
  /// region_size()), storing the magic last (release).
  static void initialize(std::span<std::byte> bytes, std::uint32_t channels, std::uint32_t participants,
                         const process_identity& creator) noexcept;
  /// Validates `r` as a directory and keeps it. If the magic is still 0 (a
  /// creator is writing the header) waits up to `init_timeout`. Throws
  /// shmbus::error naming r.name(): errc::region_corrupt, version_mismatch,
  /// timed_out.
  static directory attach(region r, std::chrono::milliseconds init_timeout);

  directory() noexcept = default;

  const region& backing() const noexcept { return m_region; }
  std::uint32_t channel_entries() const noexcept { return m_channels; }
  std::uint32_t participant_entries() const noexcept { return m_participants; }

  // ---- participants ----------------------------------------------------------

  struct membership {
    std::uint32_t index = 0;
    std::uint32_t generation = 0;
  };
  /// Takes a free participant entry, or else the entry of a dead process;
  /// std::nullopt when every entry belongs to a live (or joining) process.
  std::optional<membership> join(const process_identity& me, std::uint64_t now_ns) noexcept;
  /// Frees the entry taken by join() (only if it is still that incarnation).
  void leave(const membership& m) noexcept;
  /// The entry `i` if it is active and its identity written.
  std::optional<participant_record> read_participant(std::uint32_t i) const noexcept;
  /// Frees the entries of dead processes; returns how many.
  std::uint32_t free_dead_participants() noexcept;

  // ---- channels --------------------------------------------------------------

  /// The entry `i` unless it is free (or changing too fast to snapshot).
  std::optional<channel_record> read_channel(std::uint32_t i) const;
  /// The lowest active entry with this name.
  std::optional<channel_record> find_channel(std::string_view name) const;

  enum class record_status : std::uint8_t { present, recorded, full };
  /// Makes sure an active entry lists `name`: present if one did, recorded
  /// if this call wrote one, full if no entry was free. Concurrent calls
  /// for one name leave exactly one entry (see directory.cpp).
  record_status record_channel(std::string_view name, const channel_description& d, const process_identity& me,
                               std::uint64_t now_ns);
  /// Frees the entry if it is still the incarnation `r` was read under.
  bool free_channel(const channel_record& r) noexcept;
  /// Frees every non-free entry that is broken (bad name, unknown state, a
  /// recorder that died while `creating`) or for which `stale` says so
  /// (active entries with a valid name only). Returns how many.
  std::uint32_t free_stale_channels(const std::function<bool(const channel_record&)>& stale);

 private:
  bus_layout::channel_entry& channel_at(std::uint32_t i) const noexcept { return m_channel_entries[i]; }
  bus_layout::participant_entry& participant_at(std::uint32_t i) const noexcept {
    return m_participant_entries[i];
  }
  bool take_participant(std::uint32_t i, std::uint64_t expected, const process_identity& me,
                        std::uint64_t now_ns) noexcept;
  void remove_duplicates(std::uint32_t mine, std::uint64_t my_incarnation, std::string_view name);

  region m_region;
  bus_layout::channel_entry* m_channel_entries = nullptr;
  bus_layout::participant_entry* m_participant_entries = nullptr;
  std::uint32_t m_channels = 0;
  std::uint32_t m_participants = 0;
};

}  // namespace shmbus::detail
