#include <shmbus/error.hpp>

#include <catch2/catch.hpp>

#include <cerrno>
#include <string>

TEST_CASE("error messages name the operation, the object and the cause", "[error]") {
  shmbus::error e(std::error_code(ENOENT, std::system_category()), "shm_open", "/shmbus.x");
  CHECK(std::string(e.what()) == "shm_open '/shmbus.x': " + std::error_code(ENOENT, std::system_category()).message());
  CHECK(e.operation() == "shm_open");
  CHECK(e.object() == "/shmbus.x");
  CHECK(e.code() == std::errc::no_such_file_or_directory);
}

TEST_CASE("shmbus conditions have their own category and map to generic ones", "[error]") {
  shmbus::error e(shmbus::errc::version_mismatch, "open", "ticks", "layout 3, expected 1");
  CHECK(e.code() == shmbus::errc::version_mismatch);
  CHECK(e.code().category().name() == std::string("shmbus"));
  CHECK(std::string(e.what()) == "open 'ticks': layout 3, expected 1: version mismatch");
  CHECK(std::error_code(shmbus::errc::cancelled) == std::errc::operation_canceled);
  CHECK(std::error_code(shmbus::errc::timed_out) == std::errc::timed_out);
  CHECK(std::error_code(shmbus::errc::type_mismatch) != std::errc::operation_canceled);
}

TEST_CASE("throw_errno throws shmbus::error carrying errno", "[error]") {
  try {
    shmbus::throw_errno(EACCES, "open", "/tmp/x");
    FAIL("throw_errno returned");
  } catch (const shmbus::error& e) {
    CHECK(e.code() == std::errc::permission_denied);
    CHECK(e.object() == "/tmp/x");
  }
}
