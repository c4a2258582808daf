// The Catch2 implementation, compiled once and linked into every test
// program: it is the largest compile of the test suite, so the two mains in
// catch_main.cpp do not each carry a copy (tests/meson.build builds it at
// -O0 for the same reason).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

namespace shmbus::test {

int run_catch_session(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }

}  // namespace shmbus::test
