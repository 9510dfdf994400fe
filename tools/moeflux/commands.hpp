// Subcommands of the `moeflux` tool. Each registers its options on the CLI11 app and returns
// the function that runs it (after parsing). Errors are thrown as moeflux::Error; main prints
// them as one line and exits non-zero.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "core/human_bytes.hpp"

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

// An integer option's check, for CLI11's ->check(): decimal digits (a leading '-' only where
// lo < 0) and a value in [lo, hi]; the message names the range ("--threads: expects an integer
// from 1 to 1024, got '-1'"), where CLI11's own Range says "not in range" even for "abc".
CLI::Validator integer_range(long long lo, long long hi);

// Gives every numeric option of app's subcommands a syntax check: INT options take decimal
// integers, UINT options non-negative ones (CLI11 alone takes "-1" as 2^64 - 1 and "0x10" as 16),
// FLOAT options finite numbers. Called once, after every command has registered its options.
void check_number_syntax(CLI::App& app);

// "1,2,3" -> {1,2,3}; throws moeflux::UsageError naming `what` on a malformed list.
std::vector<int> parse_int_list(const std::string& s, const std::string& what);
using moeflux::human_bytes;

}  // namespace moeflux::tool
