// The records multi-process channel tests publish, and their checker:
// variable lengths (so padding frames occur at the wrap), a checksum of
// (publisher, sequence), and filler bytes derived from the sequence.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

namespace shmbus::test {

struct record_head {
  std::uint32_t publisher;
  std::uint32_t length;
  std::uint64_t sequence;
  std::uint64_t checksum;
};

inline constexpr std::size_t max_record_length = sizeof(record_head) + 2 * 40;

inline std::uint64_t record_checksum(std::uint32_t p, std::uint64_t s) { return (s * 0x9e3779b97f4a7c15ull) ^ (p + 1); }
inline std::uint32_t record_length(std::uint64_t s) { return static_cast<std::uint32_t>(sizeof(record_head) + (s % 3) * 40); }

/// Fills `buffer` (max_record_length bytes) with record s of publisher p.
inline std::span<const std::byte> make_record(std::vector<std::byte>& buffer, std::uint32_t p, std::uint64_t s) {
  const std::uint32_t length = record_length(s);
  const record_head head{p, length, s, record_checksum(p, s)};
  std::memcpy(buffer.data(), &head, sizeof head);
  std::memset(buffer.data() + sizeof head, static_cast<int>(s & 0xff), length - sizeof head);
  return {buffer.data(), length};
}

/// The burst sizes of the "bursts" helper, 1..300, drawn from `seed`: the
/// helper and the test draw the same sequence (minstd_rand's output is
/// fixed by the standard, so it is the same in both processes).
class burst_sizes {
 public:
  explicit burst_sizes(std::uint64_t seed) : m_engine(static_cast<std::uint_fast32_t>(seed % 2147483647)) {}
  std::uint32_t operator()() { return static_cast<std::uint32_t>(m_engine() % 300) + 1; }

 private:
  std::minstd_rand m_engine;
};

/// Checks records in arrival order; at most 64 publishers.
class record_checker {
 public:
  explicit record_checker(std::uint32_t publishers) : m_publishers(publishers) {}

  /// nullptr if `data` is the next record of its publisher, else why not.
  const char* operator()(std::span<const std::byte> data) {
    record_head head{};
    if (data.size() < sizeof head) return "too short";
    std::memcpy(&head, data.data(), sizeof head);
    if (head.publisher >= m_publishers) return "unknown publisher";
    if (head.length != data.size() || head.length != record_length(head.sequence)) return "wrong length";
    if (head.sequence != m_next[head.publisher]) return "out of order, lost or duplicated";
    if (head.checksum != record_checksum(head.publisher, head.sequence)) return "bad checksum";
    for (std::size_t i = sizeof head; i < data.size(); ++i)
      if (data[i] != static_cast<std::byte>(head.sequence & 0xff)) return "bad filler";
    ++m_next[head.publisher];
    return nullptr;
  }
  bool complete(std::uint64_t count) const {
    for (std::uint32_t p = 0; p < m_publishers; ++p)
      if (m_next[p] != count) return false;
    return true;
  }

 private:
  std::uint32_t m_publishers;
  std::array<std::uint64_t, 64> m_next{};
};

}  // namespace shmbus::test
