// The main of every test program; Catch2 itself is in catch_impl.cpp.
//
// Built twice: with SHMBUS_TEST_NEEDS_URING it first checks that the kernel
// lets us create an io_uring and exits 77 (Meson's "skipped") when seccomp or
// an old kernel refuses, so a sandbox reports a skip rather than a failure.
namespace shmbus::test {
int run_catch_session(int argc, char* argv[]);
}  // namespace shmbus::test

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
  return shmbus::test::run_catch_session(argc, argv);
}
