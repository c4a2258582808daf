#include <shmbus/detail/doorbell.hpp>

#include "notify/doorbell_socket.hpp"

#include "core/syscall.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace shmbus::detail {
namespace {

class doorbell_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "shmbus.doorbell"; }

  std::string message(int value) const override {
    switch (static_cast<doorbell_errc>(value)) {
      case doorbell_errc::owner_dead: return "doorbell owner is dead";
      case doorbell_errc::not_serving: return "doorbell owner does not serve doorbells";
      case doorbell_errc::wrong_server: return "doorbell socket held by another process";
      case doorbell_errc::refused: return "doorbell refused to our credentials";
      case doorbell_errc::unknown_id: return "unknown doorbell id";
      case doorbell_errc::bad_request: return "doorbell request not understood";
      case doorbell_errc::bad_reply: return "malformed doorbell reply";
    }
    return fmt::format("unknown doorbell error {}", value);
  }

  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<doorbell_errc>(value)) {
      case doorbell_errc::owner_dead: return std::errc::no_such_process;
      case doorbell_errc::not_serving: return std::errc::connection_refused;
      case doorbell_errc::refused: return std::errc::permission_denied;
      case doorbell_errc::unknown_id: return std::errc::no_such_file_or_directory;
      case doorbell_errc::bad_request:
      case doorbell_errc::bad_reply: return std::errc::protocol_error;
      default: return {value, *this};
    }
  }
};

}  // namespace

const std::error_category& doorbell_category() noexcept {
  static const doorbell_category_impl instance;
  return instance;
}

std::error_code make_error_code(doorbell_errc e) noexcept { return {static_cast<int>(e), doorbell_category()}; }

std::string doorbell_socket_name(const process_identity& owner) {
  return fmt::format("shmbus/{}/{}", owner.pid, owner.start_time);
}

abstract_address::abstract_address(std::string_view name) {
  // Our names are at most 7 + 11 + 20 bytes; sun_path holds 107 after the NUL.
  if (name.size() + 1 > sizeof m_address.sun_path)
    throw error(errc::bad_name, "socket address", name, "longer than sun_path");
  m_address.sun_family = AF_UNIX;
  m_address.sun_path[0] = '\0';
  std::memcpy(m_address.sun_path + 1, name.data(), name.size());
  m_length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

ssize_t send_with_fds(int socket, std::span<const std::byte> bytes, std::span<const int> fds, int flags) noexcept {
  if (fds.size() > max_fds_per_message) {
    errno = EINVAL;
    return -1;
  }
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(max_fds_per_message * sizeof(int))] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  return retry_on_eintr([&] { return ::sendmsg(socket, &msg, flags); });
}

}  // namespace shmbus::detail
