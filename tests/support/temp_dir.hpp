// A fresh directory under the temporary directory, removed with everything
// in it when the test is done.
#pragma once

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace shmbus::test {

struct temp_dir {
  std::filesystem::path path;
  explicit temp_dir(std::string_view what = "test") {
    std::string pattern = (std::filesystem::temp_directory_path() / ("shmbus-" + std::string(what) + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace shmbus::test
