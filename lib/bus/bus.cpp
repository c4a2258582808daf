// bus: names, objects in /dev/shm, and the directory (directory.{hpp,cpp}).
//
// Opening or creating a named object, for the directory and for channels
// alike (docs/BUS.md, "Opening and creating"):
//
//   1. open it (region::open_shm); found → validate it (a creator may still
//      be writing its header: wait up to init_timeout for the magic);
//   2. not there → create it exclusively (region::create_shm: the object
//      appears fully sized, zero-filled), grant the group if asked, write
//      the header, magic last;
//   3. the create found the name taken (someone created it between 1 and
//      2) → back to 1. A bounded number of rounds: only a remover racing us
//      in a loop can make it go round.
//
// Granting a group. region::create_shm publishes the object under its name
// with the mode it is given, so with a group the object is created
// owner-only, then fchown'd to the group, then fchmod'ed to the full mode:
// never, even briefly, open to the creator's default group. An opener of
// the group that comes in between gets EACCES; it retries while the object
// was created or changed less than init_timeout ago (stat(2) of
// /dev/shm/<name> shows its ctime without opening it). Not "while it is
// still owner-only": the grant may land between the failed open and the
// stat, and the opener must then try again, not give up.
//
// Channels in use. Every channel this bus hands out holds a shared flock(2)
// on its object for as long as its region lives (the lock belongs to the
// open file, so the kernel drops it when the last handle goes or the
// process dies). remove_unused() unlinks a channel only while it holds the
// exclusive lock. An opener takes its shared lock right after opening (or
// creating) the object and then checks the object still has a name: if a
// collector unlinked it in between, it opens again. So a channel that a
// live process has opened is never collected, even before that process
// makes a publisher or subscriber on it.
#include <shmbus/bus.hpp>

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/detail/ring_layout.hpp>

#include "bus/directory.hpp"
#include "bus/grant_retry.hpp"
#include "region/region_impl.hpp"
#include "ring/ring.hpp"

#include <fmt/format.h>

#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <map>
#include <optional>
#include <set>
#include <thread>

namespace shmbus {
namespace detail {

struct bus_state {
  std::string name;
  std::string object;  // "/shmbus.<name>"
  bus_options options;
  directory dir;
  std::optional<directory::membership> member;
  std::int32_t pid = 0;  // the process that joined (see the destructor)

  bus_state() = default;
  bus_state(const bus_state&) = delete;
  bus_state& operator=(const bus_state&) = delete;
  ~bus_state() {
    // A handle copied into a forked child is still the parent's: the child
    // must not free the parent's entry.
    if (member && ::getpid() == pid) dir.leave(*member);
  }
};

}  // namespace detail

namespace {

using detail::channel_record;
using detail::directory;
namespace bl = detail::bus_layout;

constexpr std::string_view shm_directory = "/dev/shm";
constexpr std::string_view object_prefix = "shmbus.";

// A name as it may appear in a message: printable ASCII, at most 64 characters.
std::string shown(std::string_view name) {
  std::string s;
  for (char c : name.substr(0, 64)) {
    const auto u = static_cast<unsigned char>(c);
    s += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  if (name.size() > 64) s += "...";
  return s;
}

void check_name(std::string_view name, std::string_view operation, std::string_view what) {
  if (detail::valid_bus_name(name)) return;
  std::string why;
  if (name.empty()) {
    why = fmt::format("empty {} name", what);
  } else if (name.size() > bus::max_name_length) {
    why = fmt::format("{} name of {} characters, at most {}", what, name.size(), bus::max_name_length);
  } else if (name.front() == '-') {
    why = fmt::format("{} name starts with '-'", what);
  } else {
    for (char c : name) {
      if (detail::valid_bus_name(std::string_view(&c, 1)) || c == '-') continue;
      const auto u = static_cast<unsigned char>(c);
      why = (u > 0x20 && u < 0x7f) ? fmt::format("character '{}' in a {} name (only A-Z a-z 0-9 _ -)", c, what)
                                   : fmt::format("byte 0x{:02x} in a {} name (only A-Z a-z 0-9 _ -)", u, what);
      break;
    }
  }
  throw error(errc::bad_name, operation, shown(name), why);
}

std::string directory_object(std::string_view bus_name) { return fmt::format("/{}{}", object_prefix, bus_name); }
std::string channel_object(std::string_view bus_name, std::string_view channel_name) {
  return fmt::format("/{}{}.{}", object_prefix, bus_name, channel_name);
}
std::string path_of(std::string_view object) { return fmt::format("{}{}", shm_directory, object); }

void check_options(const bus_options& o, std::string_view object) {
  if ((o.mode & ~mode_t{0777}) != 0)
    throw error(std::make_error_code(std::errc::invalid_argument), "open bus", object,
                fmt::format("mode 0{:o} has bits outside 0777", o.mode));
  if ((o.mode & 0600) != 0600)
    throw error(std::make_error_code(std::errc::invalid_argument), "open bus", object,
                fmt::format("mode 0{:o} does not let the owner read and write", o.mode));
  if (o.max_channels == 0 || o.max_channels > bl::max_entries || o.max_participants == 0 ||
      o.max_participants > bl::max_entries)
    throw error(errc::bad_size, "open bus", object,
                fmt::format("{} channel and {} participant entries, each must be 1..{}", o.max_channels,
                            o.max_participants, bl::max_entries));
}

mode_t full_mode(const bus_options& o) noexcept { return o.group && o.mode == 0600 ? mode_t{0660} : o.mode; }
// What an object is created with: with a group, owner-only until granted.
mode_t initial_mode(const bus_options& o) noexcept { return o.group ? (full_mode(o) & 0700) : full_mode(o); }

bool exists(std::string_view object) {
  struct stat st {};
  return ::stat(path_of(object).c_str(), &st) == 0;
}

// Step 1 of the file comment; std::nullopt when there is no such object.
std::optional<region> open_existing(const std::string& object, const bus_options& o, std::string_view what,
                                    access_mode access = access_mode::read_write) {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  for (;;) {
    try {
      return region::open_shm(object, access);
    } catch (const error& e) {
      if (e.code() == std::errc::no_such_file_or_directory) return std::nullopt;
      // region refuses empty (and absurdly large) objects: whatever it is, it is not ours.
      if (e.code() == errc::bad_size)
        throw error(errc::region_corrupt, "open", object, fmt::format("not a shmbus {} ({})", what, e.what()));
      if (e.code() != std::errc::permission_denied || !detail::may_be_granted_soon(object, o.init_timeout)) throw;
      const auto now = std::chrono::steady_clock::now();
      if (!deadline) deadline = now + o.init_timeout;
      if (now >= *deadline) throw;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void unlink_quietly(const std::string& object) noexcept {
  try {
    region::unlink_shm(object);
  } catch (...) {
    // Best effort on a path that is already failing; the caller's error is the one to report.
  }
}

// Step 2 of the file comment, up to the header; std::nullopt when the name is taken.
std::optional<region> create_new(const std::string& object, std::size_t size, const bus_options& o) {
  std::optional<region> r;
  try {
    r = region::create_shm(object, size, initial_mode(o));
  } catch (const error& e) {
    if (e.code() == std::errc::file_exists) return std::nullopt;
    throw;
  }
  if (o.group) {
    if (::fchown(r->fd(), static_cast<uid_t>(-1), *o.group) != 0) {
      const int err = errno;
      unlink_quietly(object);
      throw_errno(err, "fchown", object, fmt::format("granting group {}", *o.group));
    }
    if (::fchmod(r->fd(), full_mode(o)) != 0) {
      const int err = errno;
      unlink_quietly(object);
      throw_errno(err, "fchmod", object, fmt::format("mode 0{:o}", full_mode(o)));
    }
  }
  return r;
}

// The entries of /dev/shm named <prefix><rest>, with <rest> a valid name:
// the <rest>s, sorted.
std::vector<std::string> shm_names(std::string_view prefix) {
  std::vector<std::string> names;
  for (const std::string& n : detail::region_shm_objects(prefix)) {
    const std::string_view rest = std::string_view(n).substr(prefix.size());
    if (!rest.empty() && detail::valid_bus_name(rest)) names.emplace_back(rest);
  }
  return names;
}

/// Takes the shared "in use" lock on a channel object just opened or
/// created; false if the object lost its name meanwhile (a collector
/// removed it): the caller opens again.
bool hold_in_use(const region& r, const std::string& object) {
  while (::flock(r.fd(), LOCK_SH) != 0)
    if (errno != EINTR) throw_errno(errno, "flock", object);
  struct stat st {};
  if (::fstat(r.fd(), &st) != 0) throw_errno(errno, "fstat", object);
  return st.st_nlink > 0;
}

/// The collector's side: the exclusive lock, if no handle holds the shared one.
bool lock_unused(const region& r, const std::string& object) {
  while (::flock(r.fd(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return false;
    if (errno != EINTR) throw_errno(errno, "flock", object);
  }
  return true;
}

constexpr std::int64_t attempts = 16;

[[noreturn]] void kept_changing(std::string_view operation, std::string_view object) {
  throw error(errc::timed_out, operation, object,
              fmt::format("the object was removed and created by others {} times in a row", attempts));
}

// Whether a channel has a publisher or subscriber slot held by a live
// process. A slot taken by a process still writing its identity (pid 0)
// counts as used.
bool in_use(const channel& ch) {
  const detail::ring view = detail::ring::attach(ch.backing().bytes(), ch.name(), nullptr);
  auto held = [](const detail::ring::slot_owner& o) {
    if (static_cast<std::uint32_t>(o.incarnation) != detail::layout::slot_active) return false;
    return o.pid <= 0 || detail::is_alive(detail::process_identity(o.pid, o.start_time));
  };
  for (std::uint32_t i = 0; i < view.publisher_slots(); ++i)
    if (held(view.publisher_owner(i))) return true;
  for (std::uint32_t i = 0; i < view.subscriber_slots(); ++i)
    if (held(view.subscriber_owner(i))) return true;
  return false;
}

detail::channel_description describe(const channel& ch) {
  detail::channel_description d;
  const payload_type t = ch.type();
  d.type_size = t.size;
  d.type_align = t.align;
  // The header's own hash (the name stored beside it may be truncated).
  const auto& h = *reinterpret_cast<detail::layout::channel_header*>(ch.backing().data());
  d.type_hash = std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(h.type_hash)).load(std::memory_order_relaxed);
  d.capacity = ch.capacity();
  d.max_message = ch.max_message();
  d.policy = static_cast<std::uint32_t>(ch.policy());
  return d;
}

}  // namespace

bool detail::may_be_granted_soon(std::string_view object, std::chrono::milliseconds timeout) {
  struct stat st {};
  if (::stat(path_of(object).c_str(), &st) != 0) return false;
  const std::uint64_t changed = static_cast<std::uint64_t>(st.st_ctim.tv_sec) * 1'000'000'000u +
                                static_cast<std::uint64_t>(st.st_ctim.tv_nsec);
  const std::uint64_t now = realtime_ns();
  return now < changed + static_cast<std::uint64_t>(std::max<std::int64_t>(0, timeout.count())) * 1'000'000u;
}

// ---- names --------------------------------------------------------------------------

bool bus::valid_name(std::string_view name) noexcept { return detail::valid_bus_name(name); }

std::string bus::object_name(std::string_view bus_name, std::string_view channel_name) {
  check_name(bus_name, "object name", "bus");
  if (channel_name.empty()) return directory_object(bus_name);
  check_name(channel_name, "object name", "channel");
  return channel_object(bus_name, channel_name);
}

// ---- opening ------------------------------------------------------------------------

bus::bus(std::unique_ptr<detail::bus_state> s) noexcept : m_state(std::move(s)) {}
bus::bus(bus&&) noexcept = default;
bus& bus::operator=(bus&&) noexcept = default;
bus::~bus() = default;

bus bus::open(std::string_view name, bus_options options) {
  check_name(name, "open bus", "bus");
  auto st = std::make_unique<detail::bus_state>();
  st->name = std::string(name);
  st->object = directory_object(name);
  check_options(options, st->object);
  st->options = options;
  const detail::process_identity me = detail::process_identity::self();

  const std::size_t size = directory::region_size(options.max_channels, options.max_participants);
  for (std::int64_t attempt = 0;; ++attempt) {
    if (attempt == attempts) kept_changing("open bus", st->object);
    if (auto r = open_existing(st->object, options, "bus directory")) {
      st->dir = directory::attach(std::move(*r), options.init_timeout);
      break;
    }
    if (auto r = create_new(st->object, size, options)) {
      directory::initialize(r->bytes(), options.max_channels, options.max_participants, me);
      st->dir = directory::attach(std::move(*r), std::chrono::milliseconds(0));
      break;
    }
  }

  st->member = st->dir.join(me, detail::realtime_ns());
  if (!st->member)
    throw error(errc::would_block, "open bus", st->object,
                fmt::format("all {} participant entries are held by live processes", st->dir.participant_entries()));
  st->pid = me.pid;
  return bus(std::move(st));
}

const std::string& bus::name() const noexcept { return m_state->name; }
std::uint32_t bus::max_channels() const noexcept { return m_state->dir.channel_entries(); }
std::uint32_t bus::max_participants() const noexcept { return m_state->dir.participant_entries(); }
std::uint32_t bus::participant_slot() const noexcept { return m_state->member ? m_state->member->index : 0; }

// ---- channels -------------------------------------------------------------------------

namespace {

// Lists `ch` in the directory; on a full directory, first frees the entries
// of channels whose region is gone.
directory::record_status record(const detail::bus_state& st, directory& dir, const channel& ch,
                                std::string_view name) {
  const detail::channel_description d = describe(ch);
  // Asked each time, not kept: a handle may have crossed a fork.
  const detail::process_identity me = detail::process_identity::self();
  auto status = dir.record_channel(name, d, me, detail::realtime_ns());
  if (status == directory::record_status::full &&
      dir.free_stale_channels([&](const channel_record& r) { return !exists(channel_object(st.name, r.name)); }) > 0)
    status = dir.record_channel(name, d, me, detail::realtime_ns());
  return status;
}

}  // namespace

channel bus::open_channel(std::string_view name, const channel_options& options, const payload_type& type) {
  check_name(name, "open channel", "channel");
  detail::bus_state& st = *m_state;
  const std::string object = channel_object(st.name, name);
  for (std::int64_t attempt = 0; attempt < attempts; ++attempt) {
    if (auto r = open_existing(object, st.options, "channel")) {
      if (!hold_in_use(*r, object)) continue;
      channel ch = channel::attach(std::move(*r), &type, name, st.options.init_timeout);
      // Heals a listing that lacks it; a full directory does not stop us
      // using a channel that exists.
      record(st, st.dir, ch, name);
      return ch;
    }
    // Only a creator needs the options: an opener must not fail on options
    // it does not use (a subscriber of a large type with default options).
    const std::size_t size = channel::region_size(options, type, name);
    if (auto r = create_new(object, size, st.options)) {
      if (!hold_in_use(*r, object)) continue;
      channel ch;
      try {
        ch = channel::create(std::move(*r), options, type, name);
      } catch (...) {
        unlink_quietly(object);
        throw;
      }
      if (record(st, st.dir, ch, name) == directory::record_status::full) {
        unlink_quietly(object);
        throw error(errc::would_block, "open channel", object,
                    fmt::format("all {} channel entries of bus '{}' are taken (remove_unused() frees unused ones)",
                                st.dir.channel_entries(), st.name));
      }
      return ch;
    }
  }
  kept_changing("open channel", object);
}

channel bus::attach_channel(std::string_view name) const {
  check_name(name, "attach channel", "channel");
  const detail::bus_state& st = *m_state;
  const std::string object = channel_object(st.name, name);
  for (std::int64_t attempt = 0; attempt < attempts; ++attempt) {
    auto r = open_existing(object, st.options, "channel");
    if (!r) throw_errno(ENOENT, "open channel", object);
    if (hold_in_use(*r, object)) return channel::attach(std::move(*r), nullptr, name, st.options.init_timeout);
  }
  kept_changing("attach channel", object);
}

byte_publisher bus::bytes_publisher(std::string_view channel_name, const channel_options& options,
                                    publisher_options publishing) {
  return shmbus::byte_publisher(open_channel(channel_name, options, payload_type{}), publishing);
}

byte_subscriber bus::bytes_subscriber(std::string_view channel_name, subscriber_options subscribing,
                                      const channel_options& options) {
  return shmbus::byte_subscriber(open_channel(channel_name, options, payload_type{}), subscribing);
}

// ---- listing --------------------------------------------------------------------------

std::vector<channel_info> bus::channels() const {
  const detail::bus_state& st = *m_state;
  std::vector<channel_info> out;
  std::set<std::string> seen;  // a name listed twice (a duplicate being removed) is shown once
  for (std::uint32_t i = 0; i < st.dir.channel_entries(); ++i) {
    const auto rec = st.dir.read_channel(i);
    if (!rec || rec->state() != bl::channel_active || !rec->valid_name || !seen.insert(rec->name).second) continue;
    channel_info info;
    info.name = rec->name;
    info.type_size = rec->description.type_size;
    info.type_align = rec->description.type_align;
    info.policy = static_cast<overflow_policy>(rec->description.policy);
    info.capacity = rec->description.capacity;
    info.max_message = rec->description.max_message;
    info.created_ns = rec->created_ns;
    try {
      // Read-only, and never waiting for a half-made channel.
      region r = region::open_shm(channel_object(st.name, rec->name), access_mode::read_only);
      const channel ch = channel::attach(std::move(r), nullptr, rec->name, std::chrono::milliseconds(0));
      const payload_type t = ch.type();
      info.type_name = std::string(t.name);
      info.type_size = t.size;
      info.type_align = t.align;
      info.policy = ch.policy();
      info.capacity = ch.capacity();
      info.max_message = ch.max_message();
      info.stats = ch.stats();
      info.available = true;
    } catch (const error& e) {
      info.problem = e.what();
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const channel_info& a, const channel_info& b) { return a.name < b.name; });
  return out;
}

std::vector<participant_info> bus::participants() const {
  const detail::bus_state& st = *m_state;
  std::vector<participant_info> out;
  for (std::uint32_t i = 0; i < st.dir.participant_entries(); ++i) {
    const auto rec = st.dir.read_participant(i);
    if (!rec) continue;
    out.push_back({rec->index, rec->id.pid, rec->id.start_time, rec->joined_ns, detail::is_alive(rec->id)});
  }
  return out;
}

std::vector<std::string> bus::list() { return shm_names(object_prefix); }

// ---- removal --------------------------------------------------------------------------

bool bus::remove(std::string_view name) {
  check_name(name, "remove bus", "bus");
  const std::string object = directory_object(name);
  std::set<std::string> names;
  try {
    region r = region::open_shm(object, access_mode::read_only);
    const directory dir = directory::attach(std::move(r), std::chrono::milliseconds(0));
    for (std::uint32_t i = 0; i < dir.channel_entries(); ++i)
      if (auto rec = dir.read_channel(i); rec && rec->state() == bl::channel_active && rec->valid_name)
        names.insert(rec->name);
  } catch (const error&) {
    // Absent, unreadable, half-made or not a directory: whatever it is, the
    // name belongs to this bus, and the scan below finds its channels.
  }
  for (auto& n : shm_names(fmt::format("{}{}.", object_prefix, name))) names.insert(std::move(n));
  bool removed = false;
  for (const auto& n : names) removed = region::unlink_shm(channel_object(name, n)) || removed;
  removed = region::unlink_shm(object) || removed;
  return removed;
}

std::vector<std::string> bus::remove_unused() {
  detail::bus_state& st = *m_state;
  directory& dir = st.dir;
  dir.free_dead_participants();
  dir.free_stale_channels([](const channel_record&) { return false; });  // only the broken ones

  // Every channel of this bus: listed, or only present in /dev/shm.
  std::map<std::string, std::optional<channel_record>> candidates;
  for (std::uint32_t i = 0; i < dir.channel_entries(); ++i)
    if (auto rec = dir.read_channel(i); rec && rec->state() == bl::channel_active && rec->valid_name)
      candidates.try_emplace(rec->name, std::move(*rec));
  for (auto& n : shm_names(fmt::format("{}{}.", object_prefix, st.name))) candidates.try_emplace(std::move(n));

  std::vector<std::string> removed;
  for (const auto& [name, rec] : candidates) {
    const std::string object = channel_object(st.name, name);
    std::optional<channel> unused;
    try {
      region r = region::open_shm(object, access_mode::read_only);
      if (!lock_unused(r, object)) continue;  // a handle is open somewhere
      // The lock stays with the region, now the channel's, until the unlink.
      channel ch = channel::attach(std::move(r), nullptr, name, std::chrono::milliseconds(0));
      // Slots of live processes that mapped the channel without a bus
      // handle (so without the lock) count too.
      if (!in_use(ch)) unused = std::move(ch);
    } catch (const error& e) {
      // Gone: only its entry is left to free. Anything else (refused, half
      // made, corrupt, another layout version) is not ours to judge.
      if (e.code() == std::errc::no_such_file_or_directory && rec) dir.free_channel(*rec);
      continue;
    }
    if (!unused) continue;
    try {
      // Someone else removed it (or its name) meanwhile?
      if (!detail::region_unlink_shm_if_same(object, unused->backing().fd())) continue;
    } catch (const error& e) {
      if (e.code() == std::errc::operation_not_permitted || e.code() == std::errc::permission_denied) continue;
      throw;
    }
    unused.reset();  // drops the lock: an opener waiting on it sees the object has no name
    removed.push_back(name);
    if (rec) dir.free_channel(*rec);
    // Created again since we unlinked it, and its creator found our entry
    // still there? Then list it again.
    if (exists(object)) {
      try {
        if (auto r = open_existing(object, st.options, "channel"))
          record(st, dir, channel::attach(std::move(*r), nullptr, name, st.options.init_timeout), name);
      } catch (const error&) {
        // Its next opener lists it.
      }
    }
  }
  return removed;
}

}  // namespace shmbus
