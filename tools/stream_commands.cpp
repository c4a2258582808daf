// shmbus tail and shmbus pub: messages as they arrive, and lines into a channel.
//
// Both run on a shmbus::scheduler: tail awaits next() on a byte_subscriber
// (or a log reader) and sleeps on its doorbell between messages; pub reads
// stdin through io_uring and awaits publish(), which waits for room under
// the block policy. SIGINT, SIGTERM and SIGHUP are taken through a
// signalfd on the same loop and stop the work through its stop token, so
// that the subscriber, publisher and bus handles are released properly
// (a process killed outright leaves its slots to be reclaimed as dead).
#include "inspect.hpp"
#include "log_walk.hpp"
#include "tool.hpp"

#include <shmbus/bus.hpp>
#include <shmbus/channel.hpp>
#include <shmbus/error.hpp>
#include <shmbus/io.hpp>
#include <shmbus/log.hpp>
#include <shmbus/scheduler.hpp>

#include <fmt/format.h>

#include <unistd.h>

#include <array>
#include <csignal>
#include <cstdio>

namespace shmbus::tool {

namespace {

using namespace std::chrono_literals;

/// Writes one line to stdout and flushes it (a pipe reader sees every
/// message as it arrives). False when stdout is gone (a closed pipe).
bool emit(const std::string& line) {
  if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size() || std::fputc('\n', stdout) == EOF) return false;
  return std::fflush(stdout) == 0;
}

std::string message_line(const byte_message& m, output_format format) {
  switch (format) {
    case output_format::json:
      return fmt::format("{{\"sequence\":{},\"length\":{},\"missed\":{},{}}}", m.sequence, m.data.size(), m.missed,
                         json_payload_field(m.data));
    case output_format::hex:
      return fmt::format("#{} {} B: {}", m.sequence, m.data.size(), hex_of(m.data));
    case output_format::text:
      break;
  }
  return text_of(m.data);
}

std::string record_line(const log_record& r, output_format format) {
  switch (format) {
    case output_format::json:
      return fmt::format("{{\"position\":{},\"sequence\":{},\"length\":{},{}}}", r.at, r.sequence, r.data.size(),
                         json_payload_field(r.data));
    case output_format::hex:
      return fmt::format("@{} #{} {} B: {}", r.at, r.sequence, r.data.size(), hex_of(r.data));
    case output_format::text:
      break;
  }
  return text_of(r.data);
}

task<void> follow_channel(byte_subscriber& sub, output_format format, std::uint64_t count) {
  for (std::uint64_t n = 0; count == 0 || n < count; ++n) {
    const byte_message m = co_await sub.next();
    if (m.missed != 0 && format != output_format::json)
      fmt::print(stderr, "shmbus tail: missed {} messages (overwritten before they were read)\n", m.missed);
    if (!emit(message_line(m, format))) co_return;
  }
}

task<void> follow_log(log_reader& reader, output_format format, std::uint64_t count) {
  for (std::uint64_t n = 0; count == 0 || n < count; ++n) {
    const log_record r = co_await reader.next();
    if (!emit(record_line(r, format))) co_return;
  }
}

/// Runs `work` until it finishes or a signal stops it.
void run_until_signal(scheduler& s, std::stop_source& stop, task<void> work) {
  s.spawn(signal_block::stop_on_signal(s, stop));
  try {
    s.run(std::move(work).with_stop_token(stop.get_token()));
  } catch (const error& e) {
    if (e.code() != errc::cancelled) throw;
  }
}

int tail_log(const tail_options& o) {
  // Checked read-only first: byte_log::open would create a log where there is none.
  const log_walk walk(o.log_dir);
  const output_format format = o.format.value_or(walk.meta().type_size == 0 ? output_format::text : output_format::hex);
  const signal_block signals;
  std::stop_source stop;
  scheduler s;
  byte_log log = byte_log::open(s, o.log_dir);
  log_reader reader = log.reader(o.from_beginning ? from::beginning() : from::end(), {.spin = 0ns});
  run_until_signal(s, stop, follow_log(reader, format, o.count));
  return exit_ok;
}

int tail_channel(const tail_options& o) {
  const auto [bus_name, channel_name] = split_target(o.target);
  // Read-only checks first, for clear errors (and bus::open would create a bus).
  (void)inspect_bus(bus_name);
  const channel_view view = inspect_channel(bus_name, channel_name);
  if (!view.owner.known) fail(fmt::format("no channel '{}' on bus '{}'", channel_name, bus_name));
  if (!view.available) fail(fmt::format("channel {}/{}: {}", bus_name, channel_name, view.problem));
  const output_format format = o.format.value_or(view.type_size == 0 ? output_format::text : output_format::hex);

  const signal_block signals;
  std::stop_source stop;
  scheduler s;
  bus b = bus::open(bus_name);
  channel ch;
  try {
    ch = b.attach_channel(channel_name);
  } catch (const error& e) {
    if (e.code() == std::errc::no_such_file_or_directory)
      fail(fmt::format("no channel '{}' on bus '{}'", channel_name, bus_name));
    throw;
  }
  // Pure event mode: a tool should not spin a core while it waits.
  byte_subscriber sub(std::move(ch), {.start = o.from_beginning ? start_at::oldest : start_at::newest, .spin = 0ns});
  run_until_signal(s, stop, follow_channel(sub, format, o.count));
  return exit_ok;
}

task<void> publish_lines(scheduler& s, byte_publisher& pub, std::uint64_t& published) {
  std::string pending;
  std::array<std::byte, 64 * 1024> buffer{};
  std::uint64_t line_number = 0;
  const auto send = [&](std::string_view line) -> task<void> {
    ++line_number;
    if (line.size() > pub.max_message())
      fail(fmt::format("line {} has {} bytes, more than the channel's largest message ({} bytes)", line_number,
                       line.size(), pub.max_message()));
    co_await pub.publish(std::as_bytes(std::span(line.data(), line.size())));
    ++published;
  };
  for (;;) {
    const std::size_t n = co_await async_read(s, STDIN_FILENO, buffer);
    if (n == 0) break;
    pending.append(reinterpret_cast<const char*>(buffer.data()), n);
    std::size_t start = 0;
    for (std::size_t eol; (eol = pending.find('\n', start)) != std::string::npos; start = eol + 1)
      co_await send(std::string_view(pending).substr(start, eol - start));
    pending.erase(0, start);
  }
  if (!pending.empty()) co_await send(pending);  // a last line without a newline
}

}  // namespace

int run_tail(const tail_options& o) {
  if (o.log_dir.empty() == o.target.empty()) usage("give either BUS/CHANNEL or --log DIR");
  // A closed stdout ends the tail (emit() fails) instead of killing it.
  std::signal(SIGPIPE, SIG_IGN);
  return o.log_dir.empty() ? tail_channel(o) : tail_log(o);
}

int run_pub(const pub_options& o) {
  // Plain variables, not a structured binding: clang 14 cannot capture those in lambdas.
  const auto target = split_target(o.target);
  const std::string& bus_name = target.first;
  const std::string& channel_name = target.second;
  const signal_block signals;
  std::stop_source stop;
  scheduler s;
  bus b = bus::open(bus_name);  // creates the bus and the byte channel if missing
  byte_publisher pub = [&] {
    try {
      return b.bytes_publisher(channel_name);
    } catch (const error& e) {
      if (e.code() == errc::type_mismatch)
        fail(fmt::format("channel {}/{} carries typed messages; pub publishes bytes only ({})", bus_name, channel_name,
                         e.what()));
      throw;
    }
  }();
  std::uint64_t published = 0;
  run_until_signal(s, stop, publish_lines(s, pub, published));
  return exit_ok;
}

}  // namespace shmbus::tool
