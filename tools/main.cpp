// shmbus: list, watch, tail, publish to, check and clean up shmbus buses
// and logs on this host (docs/TOOL.md).
//
// This file only parses the command line (CLI11, Debian's libcli11-dev,
// header-only) and maps outcomes to exit codes:
//
//   0  done (or --help)
//   1  an error, or a problem found (a bad record, an unknown bus ...)
//   2  the command line is wrong
//
// Every failure is one line on stderr: "shmbus <command>: <what>".
// g++ 12 reports a false -Wnull-dereference inside libstdc++'s string, as
// inlined into CLI11's helpers (CLI::detail::split); it is not ours to fix
// and -Werror would stop the build. Only this file includes CLI11.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wnull-dereference"
#endif

#include "tool.hpp"

#include <shmbus/error.hpp>
#include <shmbus/version.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <map>

namespace {

using namespace shmbus::tool;

const std::map<std::string, output_format> formats{
    {"text", output_format::text}, {"hex", output_format::hex}, {"json", output_format::json}};

/// "shmbus log verify": the deepest sub-command the command line selected.
std::string command_path(const CLI::App& app) {
  std::string path = "shmbus";
  const CLI::App* at = &app;
  for (;;) {
    const auto selected = at->get_subcommands();
    if (selected.empty()) break;
    at = selected.front();
    path += " " + at->get_name();
  }
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Lists, watches, tails, publishes to, checks and cleans up shmbus buses and logs on this host.",
               "shmbus"};
  app.set_version_flag("--version", std::string(SHMBUS_VERSION_STRING));
  app.require_subcommand(1);
  app.footer("Exit status: 0 ok, 1 error or problem found, 2 usage error. See docs/TOOL.md.");

  ls_options ls;
  auto* ls_cmd = app.add_subcommand("ls", "List buses with their participants and channels (read-only).");
  ls_cmd->add_option("bus", ls.buses, "Buses to list (default: every bus in /dev/shm)");

  stat_options st;
  auto* stat_cmd = app.add_subcommand("stat", "Rates and lags of a bus's channels and subscribers (read-only).");
  stat_cmd->add_option("bus", st.bus, "The bus")->required();
  auto* watch = stat_cmd->add_flag("-w,--watch", st.watch, "Refresh like top until interrupted (Ctrl-C)");
  stat_cmd->add_option("-i,--interval", st.interval_ms, "Refresh period of --watch in milliseconds (default 1000)")
      ->check(CLI::Range(10u, 3'600'000u))
      ->needs(watch);

  tail_options tail;
  std::string tail_format;
  auto* tail_cmd = app.add_subcommand("tail", "Print the messages of a channel, or the records of a log, as they arrive.");
  tail_cmd->add_option("target", tail.target, "BUS/CHANNEL");
  tail_cmd->add_option("--log", tail.log_dir, "Follow the log in this directory instead of a channel");
  tail_cmd->add_flag("-b,--from-beginning", tail.from_beginning,
                     "Start with the oldest message still in the ring (or the log's first record)");
  tail_cmd->add_option("-f,--format", tail_format, "text, hex or json (default: text for bytes, hex for typed data)")
      ->check(CLI::IsMember({"text", "hex", "json"}));
  tail_cmd->add_option("-n,--count", tail.count, "Exit after this many messages")->check(CLI::Range(std::uint64_t{1}, UINT64_MAX));

  pub_options pub;
  auto* pub_cmd = app.add_subcommand(
      "pub", "Publish each line of stdin (without its newline) as a byte message; creates the channel if missing.");
  pub_cmd->add_option("target", pub.target, "BUS/CHANNEL")->required();

  gc_options gc;
  auto* gc_cmd = app.add_subcommand(
      "gc", "Remove buses and channels that no live process uses; report stray shmbus.* objects in /dev/shm.");
  gc_cmd->add_option("bus", gc.buses, "Only these buses (default: everything in /dev/shm)");
  gc_cmd->add_flag("--force", gc.force, "Also remove stray objects that are not valid shmbus objects");
  gc_cmd->add_flag("-n,--dry-run", gc.dry_run, "Say what would be removed; remove nothing");

  log_cli_options lg;
  std::string dump_format = "text";
  bool no_progress = false;
  auto* log_cmd = app.add_subcommand("log", "Inspect a durable log's files without changing them.");
  log_cmd->require_subcommand(1);
  auto* log_stat = log_cmd->add_subcommand("stat", "Segments, first/tail/durable positions, cursors and handles.");
  log_stat->add_option("dir", lg.dir, "The log's directory")->required();
  auto* log_dump = log_cmd->add_subcommand("dump", "Print the records with their position, sequence and length.");
  log_dump->add_option("dir", lg.dir, "The log's directory")->required();
  log_dump->add_option("-f,--format", dump_format, "text, hex or json")->check(CLI::IsMember({"text", "hex", "json"}));
  log_dump->add_option("--from", lg.from, "Start at this position (default: the oldest kept)");
  log_dump->add_option("-n,--count", lg.count, "Print at most this many records")->check(CLI::Range(std::uint64_t{1}, UINT64_MAX));
  log_dump->add_flag("-a,--all", lg.all_frames, "Also print padding and aborted frames");
  auto* log_verify = log_cmd->add_subcommand(
      "verify", "Check every record's header and CRC32C from the first position to the tail; exit 1 on the first bad one.");
  log_verify->add_option("dir", lg.dir, "The log's directory")->required();
  log_verify->add_flag("--no-progress", no_progress, "Never draw the progress bar (drawn on a terminal for large logs)");

  // CLI11 would call an unknown command a missing one ("A subcommand is required").
  for (CLI::App* parent : {&app, log_cmd}) {
    const int at = parent == &app ? 1 : 2;
    if (argc <= at || argv[at][0] == '-' || (parent == log_cmd && std::string_view(argv[1]) != "log")) continue;
    bool known = false;
    for (const CLI::App* sub : parent->get_subcommands([](CLI::App*) { return true; })) known = known || sub->get_name() == argv[at];
    if (!known) {
      const std::string where = parent == &app ? "shmbus" : "shmbus log";
      fmt::print(stderr, "{}: unknown command '{}' (see {} --help)\n", where, argv[at], where);
      return exit_usage;
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    const std::string path = command_path(app);
    fmt::print(stderr, "{}: {} (see {} --help)\n", path, e.what(), path);
    return exit_usage;
  }

  const std::string path = command_path(app);
  try {
    if (!tail_format.empty()) tail.format = formats.at(tail_format);
    lg.format = formats.at(dump_format);
    lg.progress = !no_progress;
    if (ls_cmd->parsed()) return run_ls(ls);
    if (stat_cmd->parsed()) return run_stat(st);
    if (tail_cmd->parsed()) return run_tail(tail);
    if (pub_cmd->parsed()) return run_pub(pub);
    if (gc_cmd->parsed()) return run_gc(gc);
    if (log_stat->parsed()) return run_log_stat(lg);
    if (log_dump->parsed()) return run_log_dump(lg);
    if (log_verify->parsed()) return run_log_verify(lg);
    fmt::print(stderr, "{}: no command (see shmbus --help)\n", path);
    return exit_usage;
  } catch (const failure& f) {
    std::fflush(stdout);
    fmt::print(stderr, "{}: {}{}\n", path, f.what(),
               f.code() == exit_usage ? fmt::format(" (see {} --help)", path) : std::string());
    return f.code();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "{}: {}\n", path, e.what());
    return exit_problem;
  }
}
