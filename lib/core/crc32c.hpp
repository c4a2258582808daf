// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
// ext4 and many logs: the checksum of durable log records.
//
// Debian packages no C or C++ CRC32C library (only Python, Go and Rust
// ones), so it is here: the SSE4.2 `crc32` instruction, 8 bytes at a time,
// where the CPU has it (checked once with cpuid), else a byte-wise table.
// Test vector: crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace shmbus::detail {

/// Continues a CRC32C: crc32c(b, crc32c(a)) == crc32c(a ++ b). Start at 0.
std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept;

}  // namespace shmbus::detail
