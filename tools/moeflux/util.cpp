#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/human_bytes.hpp"

namespace moeflux::tool {

std::vector<RegisteredCommand>& command_registry() {
  static std::vector<RegisteredCommand> registry;
  return registry;
}

CommandRegistration::CommandRegistration(int order, AddCommand add) {
  command_registry().push_back({order, add});
}

namespace {

// The whole of `s` as a T (no sign for an unsigned T, no spaces, no base prefix), or nullopt.
template <typename T>
std::optional<T> parse_whole(const std::string& s) {
  T v{};
  if (s.empty() || (std::is_unsigned_v<T> && s[0] == '-')) return std::nullopt;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

CLI::Validator integer_range(long long lo, long long hi) {
  const std::string range = "from " + std::to_string(lo) + " to " + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        const auto v = parse_whole<long long>(s);
        if (v && *v >= lo && *v <= hi) return "";
        return "expects an integer " + range + ", got '" + printable(s) + "'";
      },
      "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

void check_number_syntax(CLI::App& app) {
  const CLI::Validator integer(
      [](std::string& s) -> std::string {
        return parse_whole<long long>(s) ? "" : "expects an integer, got '" + printable(s) + "'";
      },
      "");
  const CLI::Validator non_negative(
      [](std::string& s) -> std::string {
        return parse_whole<unsigned long long>(s)
                   ? ""
                   : "expects a non-negative integer, got '" + printable(s) + "'";
      },
      "");
  const CLI::Validator number(
      [](std::string& s) -> std::string {
        const auto v = parse_whole<double>(s);
        return v && std::isfinite(*v) ? "" : "expects a number, got '" + printable(s) + "'";
      },
      "");
  for (CLI::App* sub : app.get_subcommands({}))
    for (CLI::Option* opt : sub->get_options()) {
      const std::string type = opt->get_type_name();
      auto is = [&](const char* t) {
        return type.rfind(t, 0) == 0 &&
               (type.size() == std::strlen(t) || type[std::strlen(t)] == ':');
      };
      if (is("INT")) opt->check(integer);
      if (is("UINT")) opt->check(non_negative);
      if (is("FLOAT")) opt->check(number);
    }
}

std::vector<int> parse_int_list(const std::string& s, const std::string& what) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    const size_t b = tok.find_first_not_of(" \t"), e = tok.find_last_not_of(" \t");
    if (b == std::string::npos) usage_fail(what + ": empty entry in '" + printable(s) + "'");
    tok = tok.substr(b, e - b + 1);
    const auto v = parse_whole<int>(tok);
    if (!v || *v < 0) usage_fail(what + ": '" + printable(tok) + "' is not a non-negative integer");
    out.push_back(*v);
  }
  if (out.empty()) usage_fail(what + ": empty list");
  return out;
}

}  // namespace moeflux::tool
