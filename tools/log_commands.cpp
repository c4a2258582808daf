// shmbus log stat, log dump, log verify: a log's files, read without changing them.
#include "log_walk.hpp"
#include "tool.hpp"

#include "log/log_layout.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <set>

namespace shmbus::tool {

namespace {

namespace ll = detail::log_layout;

std::string records_type(const log_meta_view& m) {
  if (m.type_size == 0) return "bytes (variable length)";
  return fmt::format("{} ({} B)", m.type_name.empty() ? "?" : m.type_name, m.type_size);
}

std::string slots_string(const std::vector<log_meta_view::slot>& slots) {
  std::string out;
  for (const auto& s : slots) out += fmt::format("{}pid {} {}", out.empty() ? ": " : ", ", s.pid, s.alive ? "alive" : "dead");
  return out;
}

/// A progress bar on stderr, drawn only when asked to and stderr is a terminal.
class progress_bar {
 public:
  progress_bar(bool shown, std::uint64_t total) : m_shown(shown), m_total(total) {}
  ~progress_bar() { finish(); }
  void update(std::uint64_t done) {
    if (!m_shown || m_total == 0) return;
    const auto percent = static_cast<int>(done * 100 / m_total);
    const auto now = std::chrono::steady_clock::now();
    if (percent == m_percent && now - m_drawn < std::chrono::milliseconds(200)) return;
    m_percent = percent;
    m_drawn = now;
    constexpr int width = 40;
    const int filled = percent * width / 100;
    fmt::print(stderr, "\rverifying [{}{}] {:3}%  {} of {}", std::string(static_cast<std::size_t>(filled), '#'),
               std::string(static_cast<std::size_t>(width - filled), ' '), percent, human_bytes(done),
               human_bytes(m_total));
    std::fflush(stderr);
  }
  void finish() {
    if (!m_shown || m_percent < 0) return;
    fmt::print(stderr, "\r\x1b[K");  // erase the bar's line
    std::fflush(stderr);
    m_percent = -1;
  }

 private:
  bool m_shown;
  std::uint64_t m_total;
  int m_percent = -1;
  std::chrono::steady_clock::time_point m_drawn{};
};

// A walk over the log below this size finishes before a bar is worth drawing.
constexpr std::uint64_t progress_threshold = std::uint64_t{64} << 20;

std::string frame_line(const log_frame& f, output_format format) {
  const char* kind = f.type == ll::frame_padding ? "padding" : f.type == ll::frame_aborted ? "aborted" : "data";
  switch (format) {
    case output_format::json:
      if (f.type != ll::frame_data)
        return fmt::format("{{\"position\":{},\"type\":\"{}\",\"sequence\":{},\"length\":{}}}", f.at, kind, f.sequence,
                           f.length);
      return fmt::format("{{\"position\":{},\"sequence\":{},\"length\":{},{}}}", f.at, f.sequence, f.length,
                         json_payload_field(f.payload));
    case output_format::hex:
      if (f.type != ll::frame_data) return fmt::format("@{} {} ({} B)", f.at, kind, f.length);
      return fmt::format("@{} #{} {} B: {}", f.at, f.sequence, f.length, hex_of(f.payload));
    case output_format::text:
      break;
  }
  if (f.type != ll::frame_data) return fmt::format("@{} {} ({} B)", f.at, kind, f.length);
  return fmt::format("@{} #{} {} B: {}", f.at, f.sequence, f.length, text_of(f.payload));
}

}  // namespace

int run_log_stat(const log_cli_options& o) {
  const log_walk walk(o.dir);
  const log_meta_view m = walk.meta();
  const auto segments = walk.segments();
  const auto cursors = walk.cursors();
  fmt::print("log {}\n", o.dir);
  fmt::print("  layout version {}, segment size {}, max record {}, records {}, created {}\n", m.version,
             human_bytes(m.segment_size), human_bytes(m.max_record), records_type(m), time_string(m.created_ns));
  fmt::print("  first position {}\n", m.first);
  fmt::print("  tail position {} (sequence {})\n", m.tail, m.tail_sequence);
  fmt::print("  durable position {} (sequence {}){}\n", m.durable, m.durable_sequence,
             m.durable < m.tail ? fmt::format(", {} not yet durable", human_bytes(m.tail - m.durable)) : "");
  std::uint64_t bytes = 0;
  for (const auto& s : segments) bytes += s.size;
  fmt::print("  segments {} ({} on disk)\n", segments.size(), human_bytes(bytes));
  for (const auto& s : segments)
    fmt::print("    {}  positions {} .. {}{}\n", s.path.filename().string(), s.start, s.start + m.segment_size,
               s.size == m.segment_size ? "" : fmt::format("  ({} bytes: wrong size)", s.size));
  fmt::print("  cursors {}\n", cursors.size());
  for (const auto& c : cursors) {
    if (c.position)
      fmt::print("    {}  position {}{}\n", c.name, *c.position,
                 *c.position <= m.tail ? fmt::format(", {} behind the tail", human_bytes(m.tail - *c.position)) : "");
    else
      fmt::print("    {}  unreadable: {}\n", c.name, c.problem);
  }
  fmt::print("  handles {}{}\n", m.writers.size(), slots_string(m.writers));
  fmt::print("  readers {}{}\n", m.readers.size(), slots_string(m.readers));
  return exit_ok;
}

int run_log_dump(const log_cli_options& o) {
  log_walk walk(o.dir);
  const log_meta_view m = walk.meta();
  std::uint64_t p = o.from.value_or(m.first);
  if (p < m.first) fail(fmt::format("position {} was dropped by retention; the oldest kept is {}", p, m.first));
  if (p > m.tail) fail(fmt::format("position {} is past the tail {}", p, m.tail));
  if (!ll::frame_aligned(p)) fail(fmt::format("position {} is not a record position (a multiple of 32)", p));
  std::uint64_t shown = 0;
  while (p < m.tail && (o.count == 0 || shown < o.count)) {
    const log_frame f = walk.read(p);
    if (f.state == log_frame::status::uncommitted && p >= m.durable) {
      fmt::print(stderr, "shmbus log dump: stopped at position {}: not committed yet (being written, or a torn tail)\n", p);
      break;
    }
    if (f.state != log_frame::status::ok) {
      std::fflush(stdout);
      fail(fmt::format("{}: the record at position {} {}", o.dir, p, f.why));
    }
    if (f.type == ll::frame_data || o.all_frames) {
      fmt::print("{}\n", frame_line(f, o.format));
      if (f.type == ll::frame_data) ++shown;
    }
    p = f.next;
  }
  return exit_ok;
}

int run_log_verify(const log_cli_options& o) {
  log_walk walk(o.dir);
  const log_meta_view m = walk.meta();
  std::vector<std::string> problems;
  const auto problem = [&](std::string s) { problems.push_back(std::move(s)); };

  // log.meta's words must agree with each other.
  if (m.first % m.segment_size != 0)
    problem(fmt::format("log.meta: the first position {} is not the start of a segment", m.first));
  if (m.durable > m.tail) problem(fmt::format("log.meta: the durable position {} is past the tail {}", m.durable, m.tail));
  if (m.first > m.durable)
    problem(fmt::format("log.meta: the first position {} is past the durable position {}", m.first, m.durable));
  if (!ll::frame_aligned(m.tail)) problem(fmt::format("log.meta: the tail {} is not a record position", m.tail));
  for (const auto& s : walk.segments())
    if (s.size < m.segment_size)
      problem(fmt::format("segment file {} has {} bytes, the log's segments have {}", s.path.filename().string(), s.size,
                          m.segment_size));

  // Every frame from the first position to the tail.
  const auto cursors = walk.cursors();
  std::set<std::uint64_t> cursor_positions;
  for (const auto& c : cursors)
    if (c.position) cursor_positions.insert(*c.position);
  std::set<std::uint64_t> frame_starts;  // those that cursors name
  const bool live_writer = std::any_of(m.writers.begin(), m.writers.end(), [](const auto& w) { return w.alive; });
  std::uint64_t records = 0, padding = 0, aborted = 0;
  std::optional<std::uint64_t> expected;  // the sequence the next frame must carry
  if (m.first == 0) expected = 0;
  std::uint64_t p = m.first;
  std::optional<std::uint64_t> uncommitted_from;
  bool walk_failed = false;
  {
    progress_bar bar(o.progress && stderr_is_tty() && m.tail - std::min(m.first, m.tail) >= progress_threshold,
                     m.tail - std::min(m.first, m.tail));
    while (p < m.tail) {
      bar.update(p - m.first);
      if (cursor_positions.count(p) != 0) frame_starts.insert(p);
      const log_frame f = walk.read(p);
      if (f.state == log_frame::status::uncommitted && p >= m.durable) {
        uncommitted_from = p;  // the committed prefix ends here
        break;
      }
      if (f.state != log_frame::status::ok) {
        problem(fmt::format("the first bad record is at position {}: it {}{}", p, f.why,
                            f.state == log_frame::status::uncommitted
                                ? fmt::format(", below the durable position {}", m.durable)
                                : ""));
        walk_failed = true;
        break;
      }
      if (expected && f.sequence != *expected) {
        problem(fmt::format("the first bad record is at position {}: it has sequence {}, the one before it implies {}",
                            p, f.sequence, *expected));
        walk_failed = true;
        break;
      }
      switch (f.type) {
        case ll::frame_padding: ++padding; expected = f.sequence; break;
        case ll::frame_aborted: ++aborted; expected = f.sequence + 1; break;
        default: ++records; expected = f.sequence + 1; break;
      }
      p = f.next;
    }
    bar.finish();
  }
  if (p == m.tail) frame_starts.insert(p);
  const bool walked_all = !walk_failed && !uncommitted_from && p == m.tail;
  if (walked_all && !live_writer && expected && *expected != m.tail_sequence)
    problem(fmt::format("log.meta: the tail sequence {} disagrees with the records, which end at sequence {}",
                        m.tail_sequence, *expected));

  for (const auto& c : cursors) {
    if (!c.position) {
      problem(fmt::format("cursor {}: {}", c.name, c.problem));
    } else if (*c.position > m.tail) {
      problem(fmt::format("cursor {}: position {} is past the tail {}", c.name, *c.position, m.tail));
    } else if (*c.position < m.first) {
      // Not corruption: its reader fell behind retention and will be told so.
    } else if (walked_all && frame_starts.count(*c.position) == 0) {
      problem(fmt::format("cursor {}: position {} is not the start of a record", c.name, *c.position));
    }
  }

  fmt::print("{}: checked {} records ({} padding, {} aborted frames) from position {} to {}, {} cursors\n", o.dir,
             records, padding, aborted, m.first, p, cursors.size());
  if (uncommitted_from)
    fmt::print("{}: the committed records end at position {}; the {} bytes after it up to the tail {} are not "
               "committed (a writer is at work, or a torn tail that the next opener's recovery cuts)\n",
               o.dir, *uncommitted_from, m.tail - *uncommitted_from, m.tail);
  if (problems.empty()) {
    fmt::print("{}: ok\n", o.dir);
    return exit_ok;
  }
  std::fflush(stdout);
  for (const auto& s : problems) fmt::print(stderr, "shmbus log verify: {}: {}\n", o.dir, s);
  return exit_problem;
}

}  // namespace shmbus::tool
