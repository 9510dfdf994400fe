// moeflux: convert, inspect and run Mixture-of-Experts models with streamed experts.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>

#include "commands.hpp"
#include "core/error.hpp"

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return 2;
  } catch (const moeflux::Error& e) {
    std::fprintf(stderr, "moeflux: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moeflux: error: %s\n", e.what());
    return 1;
  }
}
