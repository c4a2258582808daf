// channel_writer: publishes into a live channel for readers written in
// other languages (tests/layout/read_channel.py).
//
//   channel_writer NAME COUNT BATCH block|overwrite
//
// Creates the channel /dev/shm/NAME (64 KiB ring, messages up to 1024 B),
// prints "ready NAME" and waits for a line on stdin. Then it publishes
// COUNT messages in batches of BATCH: after each batch it prints
// "batch K" (K from 1) and waits for a line on stdin before the next. Then
// it prints "done", waits for a last line, removes the channel and exits 0.
//
// Message i (its sequence number) has the payload
//   "message <i> " followed by (i % 300) bytes, byte k being 'a' + (i + k) % 26
// so a reader can check every byte it receives.
#include <shmbus/region.hpp>

#include "ring/ring.hpp"

#include <shmbus/detail/process_identity.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

namespace {

std::string payload(std::uint64_t i) {
  std::string s = "message " + std::to_string(i) + " ";
  for (std::uint64_t k = 0; k < i % 300; ++k) s += static_cast<char>('a' + (i + k) % 26);
  return s;
}

void wait_for_line() {
  char line[64];
  if (std::fgets(line, sizeof line, stdin) == nullptr) std::exit(3);
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: channel_writer NAME COUNT BATCH block|overwrite\n");
    return 2;
  }
  try {
    const std::string name = argv[1];
    const std::uint64_t count = std::strtoull(argv[2], nullptr, 10);
    const std::uint64_t batch = std::strtoull(argv[3], nullptr, 10);
    const std::string_view policy = argv[4];
    if (batch == 0) return 2;

    shmbus::detail::ring_options o;
    o.capacity = 1 << 16;
    o.max_message = 1024;
    o.policy = policy == "overwrite" ? shmbus::detail::layout::policy_overwrite : shmbus::detail::layout::policy_block;
    o.publisher_slots = 2;
    o.subscriber_slots = 2;
    o.type = {};  // a byte channel: size, alignment, hash 0 and an empty name
    auto region = shmbus::region::create_shm(name, shmbus::detail::ring_region_size(o, name));
    shmbus::detail::ring_initialize(region.bytes(), o, name);
    auto ring = shmbus::detail::ring::attach(region.bytes(), name, nullptr);
    const auto me = shmbus::detail::process_identity::self();
    const int slot = ring.register_publisher(me.pid, me.start_time);
    if (slot < 0) return 4;

    std::printf("ready %s\n", name.c_str());
    std::fflush(stdout);
    wait_for_line();
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::string p = payload(i);
      shmbus::detail::ring::claim c;
      if (ring.try_claim(static_cast<std::uint32_t>(p.size()), static_cast<std::uint32_t>(slot), c) !=
          shmbus::detail::claim_status::ok)
        return 5;  // nobody registered, so the ring never refuses
      std::memcpy(c.payload, p.data(), p.size());
      ring.commit(c, static_cast<std::uint32_t>(slot));
      if ((i + 1) % batch == 0 || i + 1 == count) {
        std::printf("batch %llu\n", static_cast<unsigned long long>((i + batch) / batch));
        std::fflush(stdout);
        wait_for_line();
      }
    }
    std::printf("done\n");
    std::fflush(stdout);
    wait_for_line();
    region.destroy();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "channel_writer: %s\n", e.what());
    return 1;
  }
}
