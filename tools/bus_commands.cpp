// shmbus ls, shmbus stat, shmbus gc: buses and channels, read from the side.
#include "inspect.hpp"
#include "tool.hpp"

#include <shmbus/bus.hpp>
#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>
#include <shmbus/region.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <set>

namespace shmbus::tool {

namespace {

std::string policy_string(overflow_policy p) { return p == overflow_policy::block ? "block" : "overwrite"; }

std::string owner_string(const object_owner& o) {
  if (!o.known) return "owner unknown";
  return fmt::format("owner {}, mode {}", user_string(o.uid), mode_string(o.mode));
}

std::string slot_state(const slot_view& s) {
  if (s.starting) return "starting";
  if (!s.alive) return "dead";
  return s.parked ? "parked" : "spinning";
}

std::string counted(std::size_t n, std::string_view noun) { return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s"); }

std::string pid_string(const slot_view& s) { return s.starting ? "?" : fmt::format("{}", s.pid); }

/// Rows of cells printed with aligned columns, two spaces apart.
class table {
 public:
  void add(std::vector<std::string> row) { m_rows.push_back(std::move(row)); }
  std::string render(std::string_view indent) const {
    std::vector<std::size_t> width;
    for (const auto& r : m_rows)
      for (std::size_t i = 0; i < r.size(); ++i) {
        if (width.size() <= i) width.push_back(0);
        width[i] = std::max(width[i], r[i].size());
      }
    std::string out;
    for (const auto& r : m_rows) {
      std::string line(indent);
      for (std::size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line.append(width[i] - r[i].size() + 2, ' ');
      }
      out += line + '\n';
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> m_rows;
};

// ---- ls ------------------------------------------------------------------------------

void print_bus(const bus_view& b) {
  fmt::print("bus {} (/dev/shm{}, {})\n", b.name, b.object, owner_string(b.owner));
  std::string who;
  for (const auto& p : b.participants)
    who += fmt::format("{}pid {} {}", who.empty() ? ": " : ", ", p.pid, p.alive ? "alive" : "dead");
  fmt::print("  participants {} of {} entries, {} alive{}\n", b.participants.size(), b.max_participants,
             b.live_participants(), who);
  if (b.channels.empty()) fmt::print("  no channels\n");
  for (const auto& c : b.channels) {
    fmt::print("  channel {} ({}){}\n", c.name, owner_string(c.owner), c.listed ? "" : ", not listed in the directory");
    if (!c.available) {
      fmt::print("    unavailable: {}\n", c.problem);
      continue;
    }
    fmt::print("    type {}, policy {}, capacity {}, max message {}\n", c.type_string(), policy_string(c.policy),
               human_bytes(c.capacity), human_bytes(c.max_message));
    fmt::print("    published {}, publishers {}, subscribers {}\n", c.published, c.publishers.size(),
               c.subscribers.size());
    for (const auto& s : c.publishers)
      fmt::print("    publisher slot {}: pid {} {}\n", s.slot, pid_string(s),
                 s.starting ? "starting" : (s.alive ? "alive" : "dead"));
    for (const auto& s : c.subscribers)
      fmt::print("    subscriber slot {}: pid {} {}, position {}, lag {}\n", s.slot, pid_string(s),
                 s.starting ? "starting" : (s.alive ? "alive" : "dead"), s.position,
                 human_bytes(c.tail_position >= s.position ? c.tail_position - s.position : 0));
  }
}

// ---- stat ------------------------------------------------------------------------------

struct sample {
  bus_view bus;
  std::chrono::steady_clock::time_point at;
};

sample take_sample(const std::string& name) { return {inspect_bus(name), std::chrono::steady_clock::now()}; }

std::string rate(double per_second, int decimals) {
  return decimals == 0 ? fmt::format("{:.0f}", per_second) : fmt::format("{:.2f}", per_second);
}

std::string render_stat(const sample& before, const sample& after) {
  const double seconds = std::chrono::duration<double>(after.at - before.at).count();
  const auto per_second = [&](std::uint64_t a, std::uint64_t b) {
    return seconds > 0 && b >= a ? static_cast<double>(b - a) / seconds : 0.0;
  };
  std::map<std::string, const channel_view*> old_channels;
  for (const auto& c : before.bus.channels) old_channels[c.name] = &c;

  const bus_view& b = after.bus;
  std::string out = fmt::format("bus {}: {}, {} ({} alive), sampled over {:.2f} s at {}\n", b.name,
                                counted(b.channels.size(), "channel"), counted(b.participants.size(), "participant"),
                                b.live_participants(), seconds,
                                time_string(static_cast<std::uint64_t>(
                                    std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count())));
  for (const auto& c : b.channels) {
    out += '\n';
    if (!c.available) {
      out += fmt::format("channel {}: unavailable: {}\n", c.name, c.problem);
      continue;
    }
    const channel_view* old = old_channels.count(c.name) != 0 && old_channels[c.name]->available
                                  ? old_channels[c.name]
                                  : nullptr;
    table t;
    t.add({"CHANNEL", "TYPE", "POLICY", "TAIL", "PUBLISHED", "MSG/S", "MB/S", "PUBS", "SUBS"});
    t.add({c.name, c.type_string(), policy_string(c.policy), fmt::format("{}", c.tail_position),
           fmt::format("{}", c.published), old ? rate(per_second(old->published, c.published), 0) : "-",
           old ? rate(per_second(old->tail_position, c.tail_position) / 1e6, 2) : "-",
           fmt::format("{}", c.publishers.size()), fmt::format("{}", c.subscribers.size())});
    out += t.render("");
    if (c.subscribers.empty()) continue;
    table s;
    s.add({"SUBSCRIBER", "PID", "STATE", "POSITION", "LAG", "LAG MSGS", "MSG/S", "MB/S"});
    for (const auto& sub : c.subscribers) {
      const slot_view* prev = nullptr;
      if (old)
        for (const auto& o : old->subscribers)
          if (o.slot == sub.slot && o.generation == sub.generation) prev = &o;
      const std::uint64_t lag = c.tail_position >= sub.position ? c.tail_position - sub.position : 0;
      // The slot's sequence (the next one it expects) is written with its
      // position; NONE until it has read a message when it started at the
      // oldest message of a ring that had wrapped.
      const auto known = [&](const slot_view& v) { return v.sequence != ~std::uint64_t{0} && v.sequence <= c.published; };
      s.add({fmt::format("{}", sub.slot), pid_string(sub), slot_state(sub), fmt::format("{}", sub.position),
             fmt::format("{} B", lag), known(sub) ? fmt::format("{}", c.published - sub.sequence) : "-",
             prev && known(*prev) && known(sub) ? rate(per_second(prev->sequence, sub.sequence), 0) : "-",
             prev ? rate(per_second(prev->position, sub.position) / 1e6, 2) : "-"});
    }
    out += s.render("  ");
  }
  return out;
}

// ---- gc --------------------------------------------------------------------------------

// Objects younger than this that are not initialised may still be being
// created: gc leaves them alone.
constexpr std::uint64_t creation_grace_ns = 10'000'000'000u;

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

bool young(const object_owner& o) { return o.known && now_ns() < o.changed_ns + creation_grace_ns; }

/// The shmbus objects of one bus found in /dev/shm.
struct bus_objects {
  bool directory = false;
  std::set<std::string> channels;        // valid channel names
  std::vector<std::string> strays;       // "shmbus.<bus>.<not a valid name>"
};

class collector {
 public:
  explicit collector(const gc_options& o) : m_options(o) {}

  int run() {
    std::map<std::string, bus_objects> buses;
    std::vector<std::string> strays;  // objects whose name is no shmbus name at all
    for (const auto& object : shmbus_objects()) {
      const std::string rest = object.substr(7);  // after "shmbus."
      if (bus::valid_name(rest)) {
        buses[rest].directory = true;
        continue;
      }
      const auto dot = rest.find('.');
      const std::string b = dot == std::string::npos ? std::string() : rest.substr(0, dot);
      if (!bus::valid_name(b)) {
        strays.push_back(object);
        continue;
      }
      const std::string c = rest.substr(dot + 1);
      if (bus::valid_name(c))
        buses[b].channels.insert(c);
      else
        buses[b].strays.push_back(object);
    }
    if (!m_options.buses.empty()) {
      std::map<std::string, bus_objects> wanted;
      for (const auto& b : m_options.buses) {
        if (auto it = buses.find(b); it != buses.end())
          wanted.insert(*it);
        else
          note(fmt::format("bus {}: nothing in /dev/shm", b));
      }
      buses = std::move(wanted);
      strays.clear();
    }
    for (const auto& [name, objects] : buses) collect_bus(name, objects);
    for (const auto& object : strays)
      stray("/" + object, fmt::format("/dev/shm/{} has no valid shmbus object name", object), owner_of("/" + object));
    if (m_acted == 0) fmt::print("nothing to remove\n");
    return m_errors == 0 ? exit_ok : exit_problem;
  }

 private:
  void note(const std::string& line) { fmt::print("{}\n", line); }

  void error_line(const std::string& line) {
    fmt::print(stderr, "shmbus gc: {}\n", line);
    ++m_errors;
  }

  static bool not_ours(const error& e) {
    return e.code() == std::errc::operation_not_permitted || e.code() == std::errc::permission_denied;
  }

  /// An object that is no valid shmbus object: reported, removed only with
  /// --force. `why` names the object ("/dev/shm/shmbus.x is not ...").
  void stray(const std::string& object, const std::string& why, const object_owner& owner) {
    ++m_acted;
    if (!m_options.force) {
      note(fmt::format("stray: {}; kept (--force removes it)", why));
      return;
    }
    if (m_options.dry_run) {
      note(fmt::format("would remove stray: {}", why));
      return;
    }
    try {
      if (region::unlink_shm(object)) note(fmt::format("removed stray: {}", why));
    } catch (const error& e) {
      if (not_ours(e))
        note(fmt::format("stray: {}; not removed: it belongs to {}", why,
                         owner.known ? user_string(owner.uid) : "someone else"));
      else
        error_line(e.what());
    }
  }

  void remove_channel(const std::string& b, const channel_view& c) {
    ++m_acted;
    if (m_options.dry_run) {
      note(fmt::format("would remove channel {}/{} (no live publisher or subscriber)", b, c.name));
      return;
    }
    try {
      if (region::unlink_shm(c.object)) note(fmt::format("removed channel {}/{} (no live publisher or subscriber)", b, c.name));
    } catch (const error& e) {
      if (not_ours(e))
        note(fmt::format("channel {}/{} is unused but not yours to remove ({})", b, c.name, owner_string(c.owner)));
      else
        error_line(e.what());
    }
  }

  void collect_bus(const std::string& b, const bus_objects& objects) {
    for (const auto& s : objects.strays)
      stray("/" + s, fmt::format("/dev/shm/{} has no valid channel name", s), owner_of("/" + s));

    std::optional<bus_view> view;
    bool directory_kept_invalid = false;  // an invalid directory left in place
    if (objects.directory) {
      bus_problem problem = bus_problem::none;
      std::string why;
      view = try_inspect_bus(b, problem, why);
      const object_owner owner = owner_of(bus::object_name(b));
      switch (problem) {
        case bus_problem::none:
          break;
        case bus_problem::missing:
          break;  // removed meanwhile
        case bus_problem::refused:
          note(fmt::format("bus {}: skipped: {}", b, why));
          return;
        case bus_problem::uninitialised:
          if (young(owner)) {
            note(fmt::format("bus {}: skipped: being created", b));
            return;
          }
          [[fallthrough]];
        case bus_problem::invalid:
          stray(bus::object_name(b), why, owner);
          directory_kept_invalid = !m_options.force || m_options.dry_run;
          break;
      }
    }

    // The channels: those the directory lists, and those /dev/shm has.
    std::vector<channel_view> channels;
    if (view) {
      channels = view->channels;
    } else {
      for (const auto& c : objects.channels) channels.push_back(inspect_channel(b, c));
    }
    bool any_in_use = false;
    bool kept_invalid = directory_kept_invalid;
    std::vector<const channel_view*> unused;
    for (const auto& c : channels) {
      if (c.available) {
        if (c.in_use())
          any_in_use = true;
        else
          unused.push_back(&c);
        continue;
      }
      if (!c.owner.known) continue;  // gone meanwhile
      if (young(c.owner)) {
        // Not initialised yet, perhaps being created: leave it, and its bus.
        note(fmt::format("channel {}/{}: skipped: {}", b, c.name, c.problem));
        kept_invalid = true;
        continue;
      }
      stray(c.object, fmt::format("/dev/shm{} is not a valid channel: {}", c.object, c.problem), c.owner);
      if (!m_options.force || m_options.dry_run) kept_invalid = true;
    }

    const std::size_t live = view ? view->live_participants() : 0;
    if (view && (live > 0 || any_in_use)) {
      // A bus in use: the library's collector frees dead entries and
      // unlinks the channels nobody uses.
      if (m_options.dry_run) {
        for (const auto* c : unused) remove_channel(b, *c);
        return;
      }
      try {
        bus handle = bus::open(b);
        for (const auto& name : handle.remove_unused()) {
          ++m_acted;
          note(fmt::format("removed channel {}/{} (no live publisher or subscriber)", b, name));
        }
      } catch (const error& e) {
        if (not_ours(e))
          note(fmt::format("bus {}: skipped: {}", b, e.what()));
        else
          error_line(e.what());
      }
      return;
    }
    if (!any_in_use && !kept_invalid) {
      // Nobody alive uses the bus: remove it whole.
      std::string names;
      for (const auto& c : channels) names += (names.empty() ? "" : ", ") + c.name;
      const std::string why = !view ? std::string(objects.directory ? "its directory was invalid" : "no directory")
                              : view->participants.empty()
                                  ? std::string("no participant")
                                  : fmt::format("no live participant, {} dead", view->participants.size());
      ++m_acted;
      if (m_options.dry_run) {
        note(fmt::format("would remove bus {} ({}; channels: {})", b, why, names.empty() ? "none" : names));
        return;
      }
      try {
        if (bus::remove(b))
          note(fmt::format("removed bus {} ({}; channels: {})", b, why, names.empty() ? "none" : names));
      } catch (const error& e) {
        if (not_ours(e))
          note(fmt::format("bus {} is unused but not yours to remove: {}", b, e.what()));
        else
          error_line(e.what());
      }
      return;
    }
    // Some channel is in use without a directory to record it, or invalid
    // objects were kept: remove only the unused channels, one by one.
    for (const auto* c : unused) remove_channel(b, *c);
  }

  const gc_options& m_options;
  std::size_t m_acted = 0;
  std::size_t m_errors = 0;
};

}  // namespace

int run_ls(const ls_options& o) {
  if (!o.buses.empty()) {
    for (const auto& b : o.buses) check_bus_name(b);
    bool first = true;
    for (const auto& b : o.buses) {
      const bus_view v = inspect_bus(b);  // a named bus that cannot be read is an error
      if (!first) fmt::print("\n");
      first = false;
      print_bus(v);
    }
    return exit_ok;
  }
  const auto names = bus::list();
  if (names.empty()) {
    fmt::print("no buses in /dev/shm\n");
    return exit_ok;
  }
  bool first = true;
  for (const auto& b : names) {
    if (!first) fmt::print("\n");
    first = false;
    bus_problem problem = bus_problem::none;
    std::string why;
    if (auto v = try_inspect_bus(b, problem, why))
      print_bus(*v);
    else if (problem != bus_problem::missing)  // removed since it was listed: say nothing
      fmt::print("bus {}: {}\n", b, why);
  }
  return exit_ok;
}

int run_stat(const stat_options& o) {
  check_bus_name(o.bus);
  const signal_block signals;
  sample before = take_sample(o.bus);
  if (!o.watch) {
    if (signals.wait(200)) return exit_ok;
    fmt::print("{}", render_stat(before, take_sample(o.bus)));
    return exit_ok;
  }
  const bool tty = stdout_is_tty();
  for (;;) {
    if (signals.wait(o.interval_ms)) return exit_ok;
    sample after = take_sample(o.bus);
    // Like top: home the cursor and clear the screen, then redraw.
    fmt::print("{}{}", tty ? "\x1b[H\x1b[2J" : "\n", render_stat(before, after));
    std::fflush(stdout);
    before = std::move(after);
  }
}

int run_gc(const gc_options& o) {
  for (const auto& b : o.buses) check_bus_name(b);
  return collector(o).run();
}

}  // namespace shmbus::tool
