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

  claim_ticket() noexcept = default;
  // Copied field by field. A ticket is copied (into a loan) right after
  // the ring stored it one field at a time, and a compiler copies a
  // struct in 16-byte pieces. A load that spans two younger stores cannot
  // take their data from the store buffer: it waits until every older
  // store has reached the cache, the last message's payload among them,
  // whose lines a subscriber may be holding: 15 ns per 4 KiB loan in one
  // thread, and some per cent of a zero-copy stream between processes.
  // Loads through volatile are made as written, each the width of one
  // field.
  claim_ticket(const claim_ticket& other) noexcept { copy_fields(other); }
  claim_ticket& operator=(const claim_ticket& other) noexcept {
    copy_fields(other);
    return *this;
  }

 private:
  void copy_fields(const volatile claim_ticket& other) noexcept {
    claim_position = other.claim_position;
    frame_position = other.frame_position;
    sequence = other.sequence;
    payload = other.payload;
    length = other.length;
  }
};

}  // namespace shmbus::detail
