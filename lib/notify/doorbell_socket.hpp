// Private helpers shared by the doorbell server and client.
#pragma once

#include <shmbus/detail/doorbell.hpp>

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <span>
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

/// Most descriptors send_with_fds attaches to one message.
inline constexpr std::size_t max_fds_per_message = 4;

/// Sends `bytes` as one message with `fds` attached as SCM_RIGHTS (none
/// when empty), retrying EINTR. Returns sendmsg's result; -1 with EINVAL
/// for more than max_fds_per_message descriptors.
SHMBUS_API ssize_t send_with_fds(int socket, std::span<const std::byte> bytes, std::span<const int> fds,
                                 int flags) noexcept;

/// "@<name>", as tools and error messages show an abstract name.
inline std::string printable(std::string_view name) {
  std::string shown(1, '@');  // not "@" + std::string(name): a g++ 12 -O3 -Wrestrict false positive
  return shown.append(name);
}

}  // namespace shmbus::detail
