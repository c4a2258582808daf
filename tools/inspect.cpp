// Read-only views of buses and channels (inspect.hpp).
#include "inspect.hpp"

#include "tool.hpp"

#include <shmbus/bus.hpp>
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/detail/ring_layout.hpp>
#include <shmbus/error.hpp>
#include <shmbus/region.hpp>

#include "bus/directory.hpp"
#include "region/region_impl.hpp"
#include "ring/ring.hpp"

#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>

namespace shmbus::tool {

namespace {

constexpr std::string_view shm_dir = "/dev/shm";
constexpr std::string_view prefix = "shmbus.";

std::uint64_t load(std::uint64_t& word) noexcept {
  // acquire: pairs with the owner's release stores (the position above all).
  return std::atomic_ref<std::uint64_t>(word).load(std::memory_order_acquire);
}

slot_view slot_of(std::uint32_t index, const detail::ring::slot_owner& o) {
  slot_view v;
  v.slot = index;
  v.generation = static_cast<std::uint32_t>(o.incarnation >> 32);
  v.pid = o.pid;
  v.start_time = o.start_time;
  v.starting = o.pid <= 0;
  v.alive = v.starting || detail::is_alive(detail::process_identity(o.pid, o.start_time));
  return v;
}

bool active(const detail::ring::slot_owner& o) noexcept {
  return static_cast<std::uint32_t>(o.incarnation) == detail::layout::slot_active;
}

}  // namespace

object_owner owner_of(const std::string& object) {
  object_owner o;
  struct stat st {};
  if (::stat(fmt::format("{}{}", shm_dir, object).c_str(), &st) != 0) return o;
  o.known = true;
  o.uid = st.st_uid;
  o.gid = st.st_gid;
  o.mode = st.st_mode;
  o.changed_ns = static_cast<std::uint64_t>(st.st_ctim.tv_sec) * 1'000'000'000u +
                 static_cast<std::uint64_t>(st.st_ctim.tv_nsec);
  return o;
}

bool channel_view::in_use() const noexcept {
  const auto live = [](const slot_view& s) { return s.alive; };
  return std::any_of(publishers.begin(), publishers.end(), live) ||
         std::any_of(subscribers.begin(), subscribers.end(), live);
}

std::string channel_view::type_string() const {
  if (type_size == 0) return "bytes";
  return fmt::format("{} ({} B)", type_name.empty() ? "?" : type_name, type_size);
}

std::size_t bus_view::live_participants() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(participants.begin(), participants.end(), [](const participant_view& p) { return p.alive; }));
}

channel_view inspect_channel(const std::string& bus_name, const std::string& channel_name) {
  channel_view v;
  v.name = channel_name;
  v.object = bus::object_name(bus_name, channel_name);
  v.owner = owner_of(v.object);
  try {
    region r = region::open_shm(v.object, access_mode::read_only);
    // Never waits for a half-made channel: it is reported as a problem.
    const channel ch = channel::attach(std::move(r), nullptr, channel_name, std::chrono::milliseconds(0));
    const detail::ring view = detail::ring::attach(ch.backing().bytes(), v.object, nullptr);
    const payload_type t = ch.type();
    v.type_name = std::string(t.name);
    v.type_size = t.size;
    v.type_align = t.align;
    v.policy = ch.policy();
    v.capacity = ch.capacity();
    v.max_message = ch.max_message();
    const detail::ring_cursor tail = view.newest();  // position and sequence, read consistently
    v.tail_position = tail.position;
    v.published = tail.sequence;
    auto& header = view.header();
    v.created_ns = header.created_ns;
    const std::uint64_t parked = load(header.parked_subscribers);
    for (std::uint32_t i = 0; i < view.publisher_slots(); ++i) {
      const auto o = view.publisher_owner(i);
      if (!active(o)) continue;
      v.publishers.push_back(slot_of(i, o));
    }
    for (std::uint32_t i = 0; i < view.subscriber_slots(); ++i) {
      const auto o = view.subscriber_owner(i);
      if (!active(o)) continue;
      slot_view s = slot_of(i, o);
      auto& slot = view.subscriber(i);
      s.position = load(slot.position);
      s.sequence = load(slot.sequence);
      s.parked = ((parked >> i) & 1u) != 0;
      v.subscribers.push_back(s);
    }
    v.available = true;
  } catch (const error& e) {
    if (e.code() == std::errc::no_such_file_or_directory)
      v.problem = "its region is gone (removed)";
    else if (e.code() == errc::bad_size)
      v.problem = fmt::format("/dev/shm{} is not a shmbus channel (an empty object)", v.object);
    else if (e.code() == errc::timed_out)
      v.problem = "not initialised (being created, or its creator died)";
    else
      v.problem = e.what();
  }
  return v;
}

std::optional<bus_view> try_inspect_bus(const std::string& name, bus_problem& problem, std::string& why) {
  problem = bus_problem::none;
  const std::string object = bus::object_name(name);
  const std::string path = fmt::format("{}{}", shm_dir, object);
  std::optional<detail::directory> dir;
  try {
    region r = region::open_shm(object, access_mode::read_only);
    dir = detail::directory::attach(std::move(r), std::chrono::milliseconds(0));
  } catch (const error& e) {
    if (e.code() == std::errc::no_such_file_or_directory) {
      problem = bus_problem::missing;
      why = fmt::format("no bus '{}' (there is no {})", name, path);
    } else if (e.code() == std::errc::permission_denied) {
      const object_owner o = owner_of(object);
      problem = bus_problem::refused;
      why = o.known ? fmt::format("bus '{}': permission denied ({} belongs to {}, mode {})", name, path,
                                  user_string(o.uid), mode_string(o.mode))
                    : fmt::format("bus '{}': permission denied", name);
    } else if (e.code() == errc::bad_size) {
      problem = bus_problem::invalid;
      why = fmt::format("{} is not a shmbus bus directory (an empty object)", path);
    } else if (e.code() == errc::timed_out) {
      problem = bus_problem::uninitialised;
      why = fmt::format("{} is not initialised (being created, or its creator died)", path);
    } else if (e.code() == errc::region_corrupt || e.code() == errc::version_mismatch) {
      problem = bus_problem::invalid;
      why = fmt::format("{} is not a valid shmbus bus directory: {}", path, e.what());
    } else {
      problem = bus_problem::invalid;
      why = fmt::format("bus '{}': {}", name, e.what());
    }
    return std::nullopt;
  }

  bus_view v;
  v.name = name;
  v.object = object;
  v.owner = owner_of(object);
  v.max_channels = dir->channel_entries();
  v.max_participants = dir->participant_entries();
  for (std::uint32_t i = 0; i < dir->participant_entries(); ++i)
    if (auto p = dir->read_participant(i))
      v.participants.push_back({p->index, p->id.pid, detail::is_alive(p->id), p->joined_ns});

  // Channels the directory lists, and those only /dev/shm has (a creator
  // that died before listing one; the directory heals on the next open).
  std::map<std::string, bool> names;  // name -> listed
  for (std::uint32_t i = 0; i < dir->channel_entries(); ++i) {
    const auto rec = dir->read_channel(i);
    if (rec && rec->state() == detail::bus_layout::channel_active && rec->valid_name) names[rec->name] = true;
  }
  const std::string channel_prefix = fmt::format("{}{}.", prefix, name);
  for (const auto& object_name : shmbus_objects()) {
    if (!object_name.starts_with(channel_prefix)) continue;
    const std::string rest = object_name.substr(channel_prefix.size());
    if (bus::valid_name(rest)) names.try_emplace(rest, false);
  }
  for (const auto& [channel_name, listed] : names) {
    channel_view c = inspect_channel(name, channel_name);
    c.listed = listed;
    v.channels.push_back(std::move(c));
  }
  return v;
}

bus_view inspect_bus(const std::string& name) {
  bus_problem problem = bus_problem::none;
  std::string why;
  auto v = try_inspect_bus(name, problem, why);
  if (!v) fail(why);
  return std::move(*v);
}

std::vector<std::string> shmbus_objects() { return detail::region_shm_objects(prefix); }

}  // namespace shmbus::tool
