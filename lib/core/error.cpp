#include <shmbus/error.hpp>

#include <fmt/format.h>

#include <cerrno>

namespace shmbus {
namespace {

class category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "shmbus"; }

  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::bad_name: return "invalid name";
      case errc::bad_size: return "invalid size";
      case errc::type_mismatch: return "type mismatch";
      case errc::version_mismatch: return "version mismatch";
      case errc::region_corrupt: return "region corrupt";
      case errc::closed: return "closed";
      case errc::lagged: return "reader lagged behind";
      case errc::cancelled: return "cancelled";
      case errc::timed_out: return "timed out";
      case errc::not_supported: return "not supported";
      case errc::broken_promise: return "broken promise";
      case errc::would_block: return "would block";
    }
    return fmt::format("unknown shmbus error {}", value);
  }

  std::error_condition default_error_condition(int value) const noexcept override {
    // Let generic comparisons work where a POSIX condition means the same.
    switch (static_cast<errc>(value)) {
      case errc::cancelled: return std::errc::operation_canceled;
      case errc::timed_out: return std::errc::timed_out;
      case errc::not_supported: return std::errc::not_supported;
      case errc::would_block: return std::errc::resource_unavailable_try_again;
      default: return {value, *this};
    }
  }
};

std::string describe(std::string_view operation, std::string_view object, std::string_view detail) {
  if (detail.empty()) return fmt::format("{} '{}'", operation, object);
  return fmt::format("{} '{}': {}", operation, object, detail);
}

}  // namespace

const std::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

error::error(std::error_code code, std::string_view operation, std::string_view object,
             std::string_view detail)
    : std::system_error(code, describe(operation, object, detail)),
      m_operation(operation),
      m_object(object) {}

error::error(errc code, std::string_view operation, std::string_view object, std::string_view detail)
    : error(make_error_code(code), operation, object, detail) {}

void throw_errno(std::string_view operation, std::string_view object) {
  throw_errno(errno, operation, object);
}

void throw_errno(int err, std::string_view operation, std::string_view object, std::string_view detail) {
  throw error(std::error_code(err, std::system_category()), operation, object, detail);
}

}  // namespace shmbus
