// Subcommands of the `moeflux` tool. Each registers its options on the CLI11 app and returns
// the function that runs it (after parsing). Errors are thrown as moeflux::Error; main prints
// them as one line and exits non-zero.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace moeflux::tool {

using Runner = std::function<int()>;

Runner add_convert(CLI::App& app);
Runner add_inspect(CLI::App& app);
Runner add_logits(CLI::App& app);
Runner add_devices(CLI::App& app);

// "1,2,3" -> {1,2,3}; throws moeflux::Error naming `what` on a malformed list.
std::vector<int> parse_int_list(const std::string& s, const std::string& what);
std::string human_bytes(double bytes);

}  // namespace moeflux::tool
