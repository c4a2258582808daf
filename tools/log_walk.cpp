// A read-only walk over a durable log's files (log_walk.hpp).
#include "log_walk.hpp"

#include "tool.hpp"

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/error.hpp>
#include <shmbus/fd.hpp>

#include "core/crc32c.hpp"
#include "log/log_layout.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>

namespace shmbus::tool {

namespace ll = detail::log_layout;

namespace {

template <class T>
T load(T& word, std::memory_order order = std::memory_order_acquire) noexcept {
  // The files are mapped PROT_READ: only loads, never a read-modify-write.
  return std::atomic_ref<T>(word).load(order);
}

std::uint32_t frame_crc(const ll::record_header& h, std::span<const std::byte> payload) noexcept {
  // Over a copy of the first 16 header bytes: the same bytes the writer summed.
  std::array<std::byte, 16> head{};
  std::memcpy(head.data(), &h, head.size());
  return detail::crc32c(payload, detail::crc32c(head));
}

std::uint64_t parse_segment_name(const std::string& name, bool& ok) {
  ok = name.size() == 24 && name.ends_with(".seg") &&
       std::all_of(name.begin(), name.begin() + 20, [](char c) { return c >= '0' && c <= '9'; });
  return ok ? std::strtoull(name.c_str(), nullptr, 10) : 0;
}

}  // namespace

log_walk::log_walk(std::filesystem::path dir) : m_dir(std::move(dir)) {
  std::error_code ec;
  const std::string shown = m_dir.string();
  if (!std::filesystem::exists(m_dir, ec)) fail(fmt::format("no log at {} (no such directory)", shown));
  if (!std::filesystem::is_directory(m_dir, ec)) fail(fmt::format("{} is not a directory, so not a shmbus log", shown));
  const auto meta_path = m_dir / "log.meta";
  if (!std::filesystem::exists(meta_path, ec)) fail(fmt::format("{} is not a shmbus log (it has no log.meta)", shown));
  try {
    m_meta = region::open_file(meta_path, 0, open_mode::open_only, access_mode::read_only);
  } catch (const error& e) {
    if (e.code() == errc::bad_size) fail(fmt::format("{} is not a shmbus log (its log.meta is empty)", shown));
    fail(fmt::format("cannot read the log at {}: {}", shown, e.what()));
  }
  if (m_meta.size() < ll::meta_size)
    fail(fmt::format("{} is not a shmbus log (its log.meta has {} bytes, not {})", shown, m_meta.size(), ll::meta_size));
  auto& m = *reinterpret_cast<ll::meta*>(m_meta.data());
  const std::uint64_t magic = load(m.magic);
  if (magic == 0) fail(fmt::format("the log at {} is not initialised (being created, or its creator died)", shown));
  if (magic != ll::meta_magic)
    fail(fmt::format("{} is not a shmbus log (log.meta has magic {:#018x}, not \"SHMBUSLG\")", shown, magic));
  const std::uint32_t version = load(m.version);
  if (version != ll::version)
    fail(fmt::format("the log at {} has layout version {}; this tool reads version {}", shown, version, ll::version));
  if (load(m.kind) != ll::kind_log) fail(fmt::format("{} is not a shmbus log (log.meta has kind {})", shown, load(m.kind)));
  m_segment_size = load(m.segment_size);
  m_max_record = load(m.max_record);
  m_salt = load(m.commit_salt);
  if (!std::has_single_bit(m_segment_size) || m_segment_size < ll::min_segment_size ||
      m_segment_size > ll::max_segment_size)
    fail(fmt::format("the log at {} is corrupt: segment size {} is not a power of two in [64 KiB, 16 GiB]", shown,
                     m_segment_size));
  if (m_max_record > m_segment_size - ll::frame_header_size)
    fail(fmt::format("the log at {} is corrupt: max_record {} does not fit a segment", shown, m_max_record));
  if (m_salt == 0) fail(fmt::format("the log at {} is corrupt: its commit salt is zero", shown));
}

log_meta_view log_walk::meta() const {
  auto& m = *reinterpret_cast<ll::meta*>(m_meta.data());
  log_meta_view v;
  v.version = load(m.version);
  v.segment_size = m_segment_size;
  v.max_record = m_max_record;
  v.salt = m_salt;
  v.created_ns = load(m.created_ns);
  v.type_size = load(m.type_size);
  v.type_align = load(m.type_align);
  v.type_name.assign(m.type_name, ::strnlen(m.type_name, sizeof m.type_name));
  v.first = load(m.first_position);
  v.durable = load(m.durable_position);
  v.durable_sequence = load(m.durable_sequence);
  v.tail = load(m.tail_position);
  v.tail_sequence = load(m.tail_sequence);
  const auto slots = [](ll::slot* table, std::uint32_t count, std::vector<log_meta_view::slot>& out) {
    for (std::uint32_t i = 0; i < count; ++i) {
      ll::slot& s = table[i];
      if (load(s.state) != 1) continue;
      log_meta_view::slot o;
      o.index = i;
      o.pid = load(s.pid);
      const std::uint64_t start = load(s.start_time);
      o.alive = o.pid <= 0 || detail::is_alive(detail::process_identity(o.pid, start));
      o.position = load(s.position);
      out.push_back(o);
    }
  };
  slots(m.writers, ll::writer_slots, v.writers);
  slots(m.readers, ll::reader_slots, v.readers);
  return v;
}

std::vector<segment_file> log_walk::segments() const {
  std::vector<segment_file> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(m_dir, ec)) {
    bool ok = false;
    const std::uint64_t start = parse_segment_name(e.path().filename().string(), ok);
    if (!ok) continue;
    std::error_code size_ec;
    const auto size = std::filesystem::file_size(e.path(), size_ec);
    out.push_back({start, e.path(), size_ec ? 0 : static_cast<std::uint64_t>(size)});
  }
  if (ec) fail(fmt::format("cannot list {}: {}", m_dir.string(), ec.message()));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
  return out;
}

std::vector<cursor_entry> log_walk::cursors() const {
  std::vector<cursor_entry> out;
  std::error_code ec;
  const auto dir = m_dir / "cursors";
  if (!std::filesystem::exists(dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    if (!name.ends_with(".cursor")) continue;
    cursor_entry c;
    c.name = name.substr(0, name.size() - 7);
    unique_fd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
    ll::cursor_file f{};
    if (!fd) {
      c.problem = fmt::format("cannot open it: {}", std::strerror(errno));
    } else if (::read(fd.get(), &f, sizeof f) != static_cast<ssize_t>(sizeof f)) {
      c.problem = "it is not 16 bytes long";
    } else if (f.magic != ll::cursor_magic) {
      c.problem = "bad magic";
    } else if (f.crc32c != detail::crc32c({reinterpret_cast<const std::byte*>(&f.position), 8})) {
      c.problem = "bad CRC";
    } else {
      c.position = f.position;
    }
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

log_frame log_walk::read(std::uint64_t p) {
  log_frame f;
  f.at = p;
  const std::uint64_t index = p / m_segment_size;
  if (index != m_segment_index) {
    release();
    m_segment_index = index;
    m_segment_missing = false;
    m_segment_problem.clear();
    const auto path = m_dir / fmt::format("{:020}.seg", index * m_segment_size);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      m_segment_missing = true;
    } else {
      try {
        m_segment = region::open_file(path, 0, open_mode::open_only, access_mode::read_only);
        if (m_segment.size() < m_segment_size)
          m_segment_problem = fmt::format("its segment file {} has {} bytes, the log's segments have {}",
                                          path.filename().string(), m_segment.size(), m_segment_size);
      } catch (const error& e) {
        m_segment_problem = fmt::format("its segment file cannot be read: {}", e.what());
      }
    }
  }
  if (m_segment_missing) {
    f.state = log_frame::status::missing;
    f.why = fmt::format("lies in segment file {:020}.seg, which is missing", index * m_segment_size);
    return f;
  }
  if (!m_segment_problem.empty()) {
    f.state = log_frame::status::bad;
    f.why = m_segment_problem;
    return f;
  }
  const std::uint64_t offset = p % m_segment_size;
  if (!ll::frame_aligned(offset) || offset + ll::frame_header_size > m_segment_size) {
    f.state = log_frame::status::bad;
    f.why = "is not at a frame boundary";
    return f;
  }
  auto& h = *reinterpret_cast<ll::record_header*>(m_segment.data() + offset);
  // seq_cst, as the library's reader: the commit word is stored last.
  if (load(h.commit, std::memory_order_seq_cst) != (p ^ m_salt)) {
    f.state = log_frame::status::uncommitted;
    f.why = "has no valid commit word (not committed, or torn)";
    return f;
  }
  f.length = load(h.length, std::memory_order_relaxed);
  f.type = load(h.type, std::memory_order_relaxed);
  f.sequence = load(h.sequence, std::memory_order_relaxed);
  std::uint32_t payload_length = 0;
  if (f.type == ll::frame_padding) {
    if (offset + ll::frame_header_size + f.length != m_segment_size) {
      f.state = log_frame::status::bad;
      f.why = fmt::format("is a padding frame of {} bytes that does not reach the end of its segment", f.length);
      return f;
    }
    f.next = p + (m_segment_size - offset);
  } else if (f.type == ll::frame_data || f.type == ll::frame_aborted) {
    if (f.length > m_max_record) {
      f.state = log_frame::status::bad;
      f.why = fmt::format("has a length of {} bytes, more than the log's max_record {}", f.length, m_max_record);
      return f;
    }
    if (offset + ll::frame_size(f.length) > m_segment_size) {
      f.state = log_frame::status::bad;
      f.why = fmt::format("has a length of {} bytes that runs past the end of its segment", f.length);
      return f;
    }
    f.next = p + ll::frame_size(f.length);
    payload_length = f.length;
  } else {
    f.state = log_frame::status::bad;
    f.why = fmt::format("has an unknown frame type {}", f.type);
    return f;
  }
  f.payload = {m_segment.data() + offset + ll::frame_header_size, payload_length};
  const std::uint32_t stored = load(h.crc32c, std::memory_order_relaxed);
  const std::uint32_t computed = frame_crc(h, f.payload);
  if (stored != computed) {
    f.state = log_frame::status::bad;
    f.why = fmt::format("fails its CRC32C (stored {:#010x}, computed {:#010x})", stored, computed);
    return f;
  }
  f.state = log_frame::status::ok;
  return f;
}

}  // namespace shmbus::tool
