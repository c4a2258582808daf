// pingpong: two processes exchange messages through a shared-memory region,
// each side asleep in its scheduler until an eventfd doorbell rings.
//
//   pingpong [--rounds N]
//
// The parent creates a memfd region (the mailbox) and two eventfds, then
// starts a second copy of this program with fork+exec, handing it the three
// descriptors. Each round the parent writes "ping N" into the mailbox and
// rings the child's doorbell; the child's coroutine wakes, reads it, writes
// "pong N" and rings back. Nothing else passes through the kernel.
//
// Mailbox layout (one page, all little-endian, at offset 0):
//
//   0        8        12                      256
//   +--------+--------+-----------------------+
//   | seq    | length | text (up to 244 B)    |
//   +--------+--------+-----------------------+
//   seq is written last with a release store: a reader that acquires seq
//   sees the text of that round. length comes from the other process, so it
//   is checked against the text's capacity before use.
#include <shmbus/shmbus.hpp>
#include <shmbus/region.hpp>

#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace {

using shmbus::task;

struct mailbox_view {
  static constexpr std::size_t text_offset = 12;
  static constexpr std::size_t text_capacity = 256 - text_offset;

  std::byte* m_base;

  std::uint64_t seq() const noexcept {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(m_base)).load(std::memory_order_acquire);
  }

  void post(std::uint64_t seq, std::string_view text) noexcept {
    const auto n = static_cast<std::uint32_t>(std::min(text.size(), text_capacity));
    std::memcpy(m_base + 8, &n, sizeof n);
    std::memcpy(m_base + text_offset, text.data(), n);
    // release: the text and length above are visible to whoever reads seq.
    std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(m_base)).store(seq, std::memory_order_release);
  }

  std::string text() const {
    std::uint32_t n = 0;
    std::memcpy(&n, m_base + 8, sizeof n);
    if (n > text_capacity) throw shmbus::error(shmbus::errc::region_corrupt, "read", "mailbox", "length out of range");
    return {reinterpret_cast<const char*>(m_base + text_offset), n};
  }
};

task<void> parent(shmbus::scheduler& s, mailbox_view box, const shmbus::event_fd& to_child,
                  const shmbus::event_fd& to_parent, int rounds) {
  std::vector<double> micros;
  for (int i = 1; i <= rounds; ++i) {
    const auto start = std::chrono::steady_clock::now();
    box.post(static_cast<std::uint64_t>(2 * i - 1), fmt::format("ping {}", i));
    to_child.signal();
    co_await to_parent.wait(s);
    const auto took = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    if (box.seq() != static_cast<std::uint64_t>(2 * i))
      throw shmbus::error(shmbus::errc::region_corrupt, "read", "mailbox", "unexpected sequence");
    fmt::print("parent {}: sent \"ping {}\", got \"{}\" in {:.1f} us\n", ::getpid(), i, box.text(), took);
    micros.push_back(took);
  }
  std::sort(micros.begin(), micros.end());
  fmt::print("{} round trips, median {:.1f} us\n", rounds, micros[micros.size() / 2]);
  box.post(0, "bye");
  to_child.signal();
}

task<void> child(shmbus::scheduler& s, mailbox_view box, const shmbus::event_fd& to_child,
                 const shmbus::event_fd& to_parent) {
  for (;;) {
    co_await to_child.wait(s);
    const std::uint64_t seq = box.seq();
    if (seq == 0) co_return;  // "bye"
    const std::string text = box.text();
    box.post(seq + 1, fmt::format("pong {} from {}", text.substr(text.find(' ') + 1), ::getpid()));
    to_parent.signal();
  }
}

int run_parent(const char* self, int rounds) {
  auto mailbox = shmbus::region::create_memfd("pingpong-mailbox", 256, shmbus::memfd_seal::fixed_size);
  shmbus::event_fd to_child;
  shmbus::event_fd to_parent;

  // Descriptors for the child survive exec; ours stay close-on-exec.
  auto fds = std::vector<shmbus::unique_fd>{};
  fds.push_back(mailbox.dup_fd(false));
  fds.push_back(to_child.duplicate(false));
  fds.push_back(to_parent.duplicate(false));
  std::vector<std::string> args{self, "--child"};
  for (auto& fd : fds) args.push_back(std::to_string(fd.get()));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (int err = ::posix_spawn(&pid, self, nullptr, nullptr, argv.data(), environ); err != 0)
    shmbus::throw_errno(err, "posix_spawn", self);
  fds.clear();  // the child has its copies

  shmbus::scheduler s;
  fmt::print("parent {} started child {}\n", ::getpid(), pid);
  s.run(parent(s, mailbox_view{mailbox.data()}, to_child, to_parent, rounds));
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int run_child(char* argv[]) {
  auto mailbox = shmbus::region::adopt_fd(shmbus::unique_fd(std::atoi(argv[2])), "pingpong-mailbox");
  auto to_child = shmbus::event_fd::adopt(shmbus::unique_fd(std::atoi(argv[3])));
  auto to_parent = shmbus::event_fd::adopt(shmbus::unique_fd(std::atoi(argv[4])));
  shmbus::scheduler s;
  s.run(child(s, mailbox_view{mailbox.data()}, to_child, to_parent));
  return 0;
}

}  // namespace

int main(int argc, char* argv[]) {
  try {
    if (argc == 5 && std::string_view(argv[1]) == "--child") return run_child(argv);
    int rounds = 10;
    if (argc == 3 && std::string_view(argv[1]) == "--rounds") rounds = std::atoi(argv[2]);
    else if (argc != 1) {
      fmt::print(stderr, "usage: {} [--rounds N]\n", argv[0]);
      return 2;
    }
    if (rounds < 1 || rounds > 10'000'000) {
      fmt::print(stderr, "pingpong: --rounds must be between 1 and 10000000\n");
      return 2;
    }
    return run_parent("/proc/self/exe", rounds);
  } catch (const std::exception& e) {
    fmt::print(stderr, "pingpong: {}\n", e.what());
    return 1;
  }
}
