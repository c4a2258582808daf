// Catch2 main shared by every test program.
//
// Built twice: with SHMBUS_TEST_NEEDS_URING it first checks that the kernel
// lets us create an io_uring and exits 77 (Meson's "skipped") when seccomp or
// an old kernel refuses, so a sandbox reports a skip rather than a failure.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#ifdef SHMBUS_TEST_NEEDS_URING
#include <liburing.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#endif

int main(int argc, char* argv[]) {
#ifdef SHMBUS_TEST_NEEDS_URING
  io_uring ring;
  if (int r = io_uring_queue_init(4, &ring, 0); r < 0) {
    if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
      std::fprintf(stderr, "io_uring unavailable (%s): skipping\n", std::strerror(-r));
      return 77;
    }
  } else {
    io_uring_queue_exit(&ring);
  }
#endif
  return Catch::Session().run(argc, argv);
}
