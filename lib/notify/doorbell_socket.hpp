// Private helpers shared by the doorbell server and client.
#pragma once

#include <shmbus/detail/doorbell.hpp>

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace shmbus::detail {

/// An abstract-namespace address: sun_path[0] is NUL, then the name's
/// bytes, no terminator; the length counts exactly those bytes.
struct abstract_address {
  sockaddr_un m_address{};
  socklen_t m_length = 0;

  explicit abstract_address(std::string_view name);
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&m_address); }
};

/// "@<name>", as tools and error messages show an abstract name.
inline std::string printable(std::string_view name) { return "@" + std::string(name); }

}  // namespace shmbus::detail
