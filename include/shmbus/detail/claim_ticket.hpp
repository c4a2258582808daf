// claim_ticket: room claimed in a channel's ring, not yet committed.
// Carried by publishers' loans and awaitables; filled by the ring.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmbus::detail {

struct claim_ticket {
  std::uint64_t claim_position = 0;  ///< start of the claim (a padding frame may come first)
  std::uint64_t frame_position = 0;  ///< start of the data frame
  std::uint64_t sequence = 0;        ///< the data frame's sequence number
  std::byte* payload = nullptr;      ///< where the payload goes, in shared memory
  std::uint32_t length = 0;          ///< payload bytes
};

}  // namespace shmbus::detail
