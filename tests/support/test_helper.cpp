// A separate program that tests fork+exec to act as "another process".
//
//   test_helper signal-eventfd EVENT_FD GO_FD COUNT
//       waits for one byte on GO_FD, then adds COUNT to the eventfd
//       inherited as EVENT_FD (adopted through shmbus::event_fd::adopt).
#include <shmbus/event_fd.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string_view>

int main(int argc, char* argv[]) {
  try {
    if (argc == 5 && std::string_view(argv[1]) == "signal-eventfd") {
      auto e = shmbus::event_fd::adopt(shmbus::unique_fd(std::atoi(argv[2])));
      const int go = std::atoi(argv[3]);
      char byte = 0;
      if (::read(go, &byte, 1) != 1) return 3;
      e.signal(std::strtoull(argv[4], nullptr, 10));
      return 0;
    }
    std::fprintf(stderr, "usage: test_helper signal-eventfd EVENT_FD GO_FD COUNT\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_helper: %s\n", e.what());
    return 1;
  }
}
