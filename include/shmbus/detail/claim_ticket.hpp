// claim_ticket: room claimed in a channel's ring, not yet committed.
// Carried by publishers' loans and awaitables; filled by the ring.
#pragma once

#include <shmbus/detail/fresh_copy.hpp>

#include <cstddef>
#include <cstdint>

namespace shmbus::detail {

struct claim_ticket {
  std::uint64_t claim_position = 0;  ///< start of the claim (a padding frame may come first)
  std::uint64_t frame_position = 0;  ///< start of the data frame
  std::uint64_t sequence = 0;        ///< the data frame's sequence number
  std::byte* payload = nullptr;      ///< where the payload goes, in shared memory
  std::uint32_t length = 0;          ///< payload bytes

  claim_ticket() noexcept = default;
  // Copied field by field: a ticket is copied right after the ring stored
  // it (see fresh_copy.hpp).
  claim_ticket(const claim_ticket& other) noexcept { copy_fields(other); }
  claim_ticket& operator=(const claim_ticket& other) noexcept {
    copy_fields(other);
    return *this;
  }

 private:
  void copy_fields(const claim_ticket& other) noexcept {
    std::uint64_t claim = other.claim_position, frame = other.frame_position, seq = other.sequence;
    std::byte* data = other.payload;
    std::uint32_t n = other.length;
    in_registers(claim, frame, seq, data, n);
    claim_position = claim;
    frame_position = frame;
    sequence = seq;
    payload = data;
    length = n;
  }
};

}  // namespace shmbus::detail
