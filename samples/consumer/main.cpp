// consumer: a publisher and a subscriber on one bus, in one process.
#include <shmbus/shmbus.hpp>

#include <fmt/format.h>
#include <unistd.h>

#include <cstdint>
#include <exception>
#include <string>

namespace {

struct greeting {
  std::uint32_t n;
  char text[12];
  static constexpr std::string_view shmbus_type_name = "consumer.greeting";
};

constexpr std::uint32_t count = 3;

shmbus::task<void> publish(shmbus::publisher<greeting>& pub) {
  for (std::uint32_t i = 1; i <= count; ++i) co_await pub.publish(greeting{i, "hello"});
}

shmbus::task<std::uint32_t> receive(shmbus::subscriber<greeting>& sub) {
  std::uint32_t sum = 0;
  for (std::uint32_t i = 0; i < count; ++i) sum += (co_await sub.next())->n;
  co_return sum;
}

}  // namespace

int main() {
  const std::string name = fmt::format("consumer-{}", ::getpid());
  int rc = 1;
  try {
    auto bus = shmbus::bus::open(name);
    auto sub = bus.subscriber<greeting>("greetings");  // before publishing: sees every message
    auto pub = bus.publisher<greeting>("greetings");
    shmbus::scheduler s;
    s.spawn(publish(pub));
    const std::uint32_t sum = s.run(receive(sub));
    fmt::print("consumer: shmbus {} received {} greetings on bus '{}' (sum {})\n", SHMBUS_VERSION_STRING,
               count, name, sum);
    rc = sum == count * (count + 1) / 2 ? 0 : 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "consumer: {}\n", e.what());
  }
  try {
    shmbus::bus::remove(name);
  } catch (const std::exception& e) {
    fmt::print(stderr, "consumer: removing the bus: {}\n", e.what());
    rc = 1;
  }
  return rc;
}
