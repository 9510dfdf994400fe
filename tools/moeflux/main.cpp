// moeflux: convert, inspect and run Mixture-of-Experts models with streamed experts.
//
// The error contract (README): every error is one line `moeflux: error: ...` on stderr naming the
// option or file; exit status 2 when the command line is wrong (CLI11's parse errors and
// UsageError), 1 for every other error, 0 on success (--help and --version included).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>

#include "commands.hpp"
#include "core/error.hpp"

namespace {

constexpr int kUsageExit = 2, kErrorExit = 1;

int report(const std::string& message, int code) {
  std::string line = message;
  // One line, whatever the message holds.
  for (size_t p = 0; (p = line.find('\n', p)) != std::string::npos;) line.replace(p, 1, "; ");
  while (!line.empty() && (line.back() == ' ' || line.back() == ';')) line.pop_back();
  std::fprintf(stderr, "moeflux: error: %s\n", line.c_str());
  return code;
}

// The subcommand being parsed when CLI11 stopped ("" before one was named).
std::string parsed_subcommand(const CLI::App& app) {
  for (const CLI::App* sub : app.get_subcommands()) return sub->get_name();
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moeflux: Mixture-of-Experts inference with experts streamed from storage"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "moeflux 0.1.0");
  std::map<CLI::App*, moeflux::tool::Runner> runners;
  auto registry = moeflux::tool::command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const auto& a, const auto& b) { return a.order < b.order; });
  for (const auto& cmd : registry) {
    const size_t before = app.get_subcommands({}).size();
    moeflux::tool::Runner r = cmd.add(app);
    runners[app.get_subcommands({})[before]] = std::move(r);
  }
  moeflux::tool::check_number_syntax(app);

  if (argc < 2) return report("no command given (moeflux --help lists them)", kUsageExit);
  if (argv[1][0] != '-') {
    bool known = false;
    for (const auto& [sub, run] : runners) known = known || sub->check_name(argv[1]);
    if (!known)
      return report(
          "unknown command '" + moeflux::printable(argv[1]) + "' (moeflux --help lists them)",
          kUsageExit);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    const std::string sub = parsed_subcommand(app);
    return report(std::string(e.what()) + " (moeflux " + (sub.empty() ? "" : sub + " ") + "--help)",
                  kUsageExit);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return report("no command given (moeflux --help lists them)", kUsageExit);
  } catch (const moeflux::UsageError& e) {
    return report(e.what(), kUsageExit);
  } catch (const std::exception& e) {
    return report(e.what(), kErrorExit);
  }
}
