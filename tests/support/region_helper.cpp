// The other process of tests/integration/test_region_processes.cpp.
//
//   region_helper <how> <object> <size> <notify-fd> <wait-fd>
//
// <how> says how to reach the region the test made:
//   shm <name>           open_shm by name
//   file <path>          open_file by path
//   memfd-fd <fd>        adopt an fd inherited through exec
//   memfd-socket <fd>    receive an fd over the Unix socket <fd> (SCM_RIGHTS),
//                        check it is sealed against resizing, adopt it
//   sysv-key <key>       open_sysv_key (decimal key)
//   sysv-id <shmid>      attach_sysv
//
// Then, with the test: check the first half holds pattern A and the size is
// <size>; write pattern B into the second half; write a byte to <notify-fd>;
// wait for a byte on <wait-fd>; check the first half now holds pattern C.
// Exit status 0 means every check passed; others say which one failed.
#include <shmbus/region.hpp>
#include "region_patterns.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace {

using shmbus::test::fill;
using shmbus::test::holds;
using shmbus::test::pattern_a;
using shmbus::test::pattern_b;
using shmbus::test::pattern_c;

// Patterns the test and this helper agree on (tests/integration/test_region_processes.cpp).

int fail(int code, const char* what) {
  std::fprintf(stderr, "region_helper: %s\n", what);
  return code;
}

// The receiving half of SCM_RIGHTS: one byte of payload carries one fd.
shmbus::unique_fd receive_fd(int socket) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = 0;
  do n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  while (n == -1 && errno == EINTR);
  if (n != 1) return {};
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
      return shmbus::unique_fd(fd);
    }
  }
  return {};
}

shmbus::region reach(std::string_view how, const char* object) {
  using shmbus::region;
  if (how == "shm") return region::open_shm(object);
  if (how == "file") return region::open_file(object, 0, shmbus::open_mode::open_only);
  if (how == "memfd-fd") return region::adopt_fd(shmbus::unique_fd(std::atoi(object)), "inherited memfd");
  if (how == "memfd-socket") {
    shmbus::unique_fd fd = receive_fd(std::atoi(object));
    if (!fd) throw std::runtime_error("no descriptor came over the socket");
    // A receiver trusts the size only because nobody can change it.
    const int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (seals == -1 || (seals & (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)) != (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL))
      throw std::runtime_error("the received memfd is not sealed against resizing");
    return region::adopt_fd(std::move(fd), "received memfd");
  }
  if (how == "sysv-key") return region::open_sysv_key(static_cast<key_t>(std::atol(object)));
  if (how == "sysv-id") return region::attach_sysv(std::atoi(object));
  throw std::runtime_error("unknown backend " + std::string(how));
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc != 6) return fail(64, "usage: region_helper <how> <object> <size> <notify-fd> <wait-fd>");
  const std::size_t size = std::strtoull(argv[3], nullptr, 10);
  const int notify = std::atoi(argv[4]);
  const int wait = std::atoi(argv[5]);
  try {
    shmbus::region r = reach(argv[1], argv[2]);
    if (r.size() != size) return fail(2, "size differs");
    const std::size_t half = r.size() / 2;
    if (!holds(r.bytes().first(half), pattern_a)) return fail(3, "pattern A missing");
    fill(r.bytes().subspan(half), pattern_b);
    const char byte = 'b';
    if (::write(notify, &byte, 1) != 1) return fail(5, "notify failed");
    char got = 0;
    ssize_t n = 0;
    do n = ::read(wait, &got, 1);
    while (n == -1 && errno == EINTR);
    if (n != 1) return fail(6, "the test went away");
    if (!holds(r.bytes().first(half), pattern_c)) return fail(4, "pattern C missing");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "region_helper: %s\n", e.what());
    return 1;
  }
}
