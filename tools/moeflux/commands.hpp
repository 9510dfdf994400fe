// Subcommands of the `moeflux` tool. Each registers its options on the CLI11 app and returns
// the function that runs it (after parsing). Errors are thrown as moeflux::Error; main prints
// them as one line and exits non-zero.
#pragma once

#include <CLI/CLI.hpp>

#include "core/human_bytes.hpp"
#include <functional>
#include <string>
#include <vector>

namespace moeflux::tool {

using Runner = std::function<int()>;
using AddCommand = Runner (*)(CLI::App& app);

// Each cmd_*.cpp registers its subcommand with a static CommandRegistration; `order` sets the
// position in --help (lower first).
struct CommandRegistration {
  CommandRegistration(int order, AddCommand add);
};
struct RegisteredCommand {
  int order;
  AddCommand add;
};
std::vector<RegisteredCommand>& command_registry();

// "1,2,3" -> {1,2,3}; throws moeflux::Error naming `what` on a malformed list.
std::vector<int> parse_int_list(const std::string& s, const std::string& what);
using moeflux::human_bytes;

}  // namespace moeflux::tool
