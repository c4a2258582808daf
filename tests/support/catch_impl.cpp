// The Catch2 implementation, compiled once and linked into every test
// program: it is the largest compile of the test suite (40-50 s), so the two
// mains in catch_main.cpp do not each carry a copy.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

namespace shmbus::test {

int run_catch_session(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }

}  // namespace shmbus::test
