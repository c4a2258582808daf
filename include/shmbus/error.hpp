// shmbus::error and shmbus::errc: the one error type of the library.
//
// Opening, creating and configuring throw shmbus::error, a std::system_error
// whose what() names the operation, the object and the cause:
//
//     shm_open '/shmbus.market': Permission denied
//     region header of '/shmbus.ticks': layout version 3, expected 1: version mismatch
//
// Failures reported by the kernel keep their errno in std::system_category(),
// so `e.code() == std::errc::file_exists` works; failures that shmbus itself
// detects use shmbus::errc in shmbus::category(). Hot-path calls never throw:
// they return a status instead.
#pragma once

#include <shmbus/export.hpp>

#include <string>
#include <string_view>
#include <system_error>

namespace shmbus {

/// Conditions that shmbus itself detects (kernel failures keep their errno).
enum class errc : int {
  bad_name = 1,       ///< a name is empty, too long or has characters we refuse
  bad_size,           ///< a size is zero, absurd, or does not fit the object
  type_mismatch,      ///< the payload type's fingerprint differs from the region's
  version_mismatch,   ///< the region was written by another layout version
  region_corrupt,     ///< a header or frame read from shared memory is inconsistent
  closed,             ///< the object was closed or its peer went away
  lagged,             ///< a reader fell behind and messages were overwritten
  cancelled,          ///< the operation was cancelled through its stop_token
  timed_out,          ///< a deadline passed before the operation completed
  not_supported,      ///< the kernel lacks a feature we need (the message says which)
  broken_promise,     ///< a task was awaited that holds no coroutine
  would_block,        ///< a non-waiting call found no room or nothing to read
};

/// The category of shmbus::errc; its name() is "shmbus".
SHMBUS_API const std::error_category& category() noexcept;

/// Makes errc usable as a std::error_code.
SHMBUS_API std::error_code make_error_code(errc e) noexcept;

/// Thrown by every shmbus call that may throw.
///
/// what() reads "<operation> '<object>': <cause>" and, when a detail was
/// given, "<operation> '<object>': <detail>: <cause>".
class SHMBUS_API error : public std::system_error {
 public:
  error(std::error_code code, std::string_view operation, std::string_view object,
        std::string_view detail = {});
  error(errc code, std::string_view operation, std::string_view object, std::string_view detail = {});

  /// The operation that failed, e.g. "shm_open".
  const std::string& operation() const noexcept { return m_operation; }
  /// The object it failed on: a name, a path, an fd description.
  const std::string& object() const noexcept { return m_object; }

 private:
  std::string m_operation;
  std::string m_object;
};

/// Throws shmbus::error for the current (or a given) errno.
[[noreturn]] SHMBUS_API void throw_errno(std::string_view operation, std::string_view object);
[[noreturn]] SHMBUS_API void throw_errno(int err, std::string_view operation, std::string_view object,
                                         std::string_view detail = {});

}  // namespace shmbus

template <>
struct std::is_error_code_enum<shmbus::errc> : std::true_type {};
