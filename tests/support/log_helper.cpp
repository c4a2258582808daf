// log_helper: the other processes of tests/integration/test_log_processes.cpp.
//
//   log_helper append DIR WRITER COUNT sync|none
//       appends COUNT records; with "sync" prints "<i> <position>" after
//       each append returned (the record is durable); with "none" appends
//       without waiting and syncs once at the end. Exits 0.
//   log_helper tail DIR WRITERS COUNT
//       prints "ready" once its reader exists, then follows the log live
//       until it has seen COUNT records of each of WRITERS writers, checking
//       each (content, per-writer order, growing positions). Exits 0 if all
//       is well.
//   log_helper claim DIR
//       claims room for a 100-byte record the way a writer does (slot
//       intent, then the 16-byte CAS on the tail), prints "claimed" and
//       never commits: waits for stdin to close (or for its SIGKILL).
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>

#include "log_records.hpp"

#include <shmbus/detail/process_identity.hpp>
#include <shmbus/region.hpp>

#include "core/cas128.hpp"
#include "log/log_layout.hpp"

#include <unistd.h>

#include <atomic>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

using namespace shmbus::test;

shmbus::task<int> append(shmbus::byte_log& log, std::uint32_t writer, std::uint64_t count, bool sync) {
  std::vector<std::byte> buffer;
  for (std::uint64_t i = 0; i < count; ++i) {
    make_log_record(buffer, writer, i);
    const auto p = co_await log.append(buffer, sync ? shmbus::durability::sync : shmbus::durability::none);
    if (sync) {
      std::printf("%llu %llu\n", static_cast<unsigned long long>(i), static_cast<unsigned long long>(p));
      std::fflush(stdout);
    }
  }
  co_await log.sync();
  co_return 0;
}

shmbus::task<int> tail(shmbus::log_reader& reader, std::uint32_t writers, std::uint64_t count) {
  std::vector<std::uint64_t> next(writers, 0);
  shmbus::position last = 0;
  for (std::uint64_t seen = 0; seen < writers * count; ++seen) {
    auto r = co_await reader.next();
    log_record_id id{};
    if (!parse_log_record(r.data, id) || id.writer >= writers || id.index != next[id.writer]) {
      std::fprintf(stderr, "log_helper: bad record at %llu\n", static_cast<unsigned long long>(r.at));
      co_return 20;
    }
    if (seen > 0 && r.at <= last) co_return 21;
    last = r.at;
    ++next[id.writer];
  }
  co_return 0;
}

int claim(const char* dir) {
  namespace ll = shmbus::detail::log_layout;
  auto file = shmbus::region::open_file(std::string(dir) + "/log.meta", 0, shmbus::open_mode::open_only);
  auto* meta = reinterpret_cast<ll::meta*>(file.data());
  const auto me = shmbus::detail::process_identity::self();
  ll::slot* mine = nullptr;
  for (auto& w : meta->writers) {
    auto word = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(&w));
    std::uint64_t v = word.load();
    if (static_cast<std::uint32_t>(v) != 0) continue;
    if (word.compare_exchange_strong(v, (((v >> 32) + 1) << 32) | 1u)) {
      mine = &w;
      break;
    }
  }
  if (mine == nullptr) return 30;
  mine->pid = me.pid;
  mine->start_time = me.start_time;
  const std::uint64_t need = ll::frame_size(100);
  std::uint64_t pos = std::atomic_ref<std::uint64_t>(meta->tail_position).load();
  std::uint64_t seq = std::atomic_ref<std::uint64_t>(meta->tail_sequence).load();
  for (;;) {
    if (pos % meta->segment_size + need > meta->segment_size) return 31;  // keep the test simple
    std::atomic_ref<std::uint64_t>(mine->length).store(need);
    std::atomic_ref<std::uint64_t>(mine->sequence).store(seq);
    std::atomic_ref<std::uint64_t>(mine->position).store(pos);
    if (shmbus::detail::cas128(&meta->tail_position, pos, seq, pos + need, seq + 1)) break;
  }
  std::printf("claimed\n");
  std::fflush(stdout);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "claim" && argc == 3) return claim(argv[2]);
    shmbus::scheduler s;
    if (mode == "append" && argc == 6) {
      auto log = shmbus::byte_log::open(s, argv[2]);
      return s.run(append(log, static_cast<std::uint32_t>(std::atoi(argv[3])), std::strtoull(argv[4], nullptr, 10),
                          std::strcmp(argv[5], "sync") == 0));
    }
    if (mode == "tail" && argc == 5) {
      auto log = shmbus::byte_log::open(s, argv[2]);
      auto reader = log.reader(shmbus::from::beginning(), {.spin = std::chrono::nanoseconds(0)});
      std::printf("ready\n");
      std::fflush(stdout);
      return s.run(tail(reader, static_cast<std::uint32_t>(std::atoi(argv[3])), std::strtoull(argv[4], nullptr, 10)));
    }
    std::fprintf(stderr, "usage: log_helper append DIR WRITER COUNT sync|none | tail DIR WRITERS COUNT\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "log_helper: %s\n", e.what());
    return 3;
  }
}
