#include <cstdio>
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

std::vector<int> parse_int_list(const std::string& s, const std::string& what) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    const size_t b = tok.find_first_not_of(" \t"), e = tok.find_last_not_of(" \t");
    if (b == std::string::npos) fail(what + ": empty entry in '" + s + "'");
    tok = tok.substr(b, e - b + 1);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || v < 0 || v > 0x7fffffff)
      fail(what + ": '" + tok + "' is not a non-negative integer");
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) fail(what + ": empty list");
  return out;
}

}  // namespace moeflux::tool
