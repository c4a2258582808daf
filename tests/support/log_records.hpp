// Records that multi-process log tests append: who wrote it, its index,
// a length that varies with the index, and bytes a checker can predict.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace shmbus::test {

struct log_record_id {
  std::uint32_t writer;
  std::uint32_t length;
  std::uint64_t index;
};

inline void make_log_record(std::vector<std::byte>& out, std::uint32_t writer, std::uint64_t index) {
  const std::uint32_t length = static_cast<std::uint32_t>(sizeof(log_record_id) + (index * 37 + writer) % 700);
  out.resize(length);
  const log_record_id id{writer, length, index};
  std::memcpy(out.data(), &id, sizeof id);
  for (std::size_t k = sizeof id; k < length; ++k) out[k] = static_cast<std::byte>((index + k + writer) & 0xff);
}

/// True if `data` is a whole record as make_log_record writes it.
inline bool parse_log_record(std::span<const std::byte> data, log_record_id& id) {
  if (data.size() < sizeof id) return false;
  std::memcpy(&id, data.data(), sizeof id);
  if (id.length != data.size()) return false;
  for (std::size_t k = sizeof id; k < data.size(); ++k)
    if (data[k] != static_cast<std::byte>((id.index + k + id.writer) & 0xff)) return false;
  return true;
}

}  // namespace shmbus::test
