#include "model_dir.hpp"

#include <cstdlib>
#include <filesystem>

#include "core/error.hpp"
#include "formats/package.hpp"

namespace fs = std::filesystem;

namespace moeflux::tool {

std::vector<std::string> bundled_model_candidates() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const fs::path prefix = exe.parent_path().parent_path();
  return {(prefix / "models" / kBundledModel).string(),
          (prefix / "share" / "moeflux" / "models" / kBundledModel).string()};
}

std::string resolve_model_dir(const std::string& arg) {
  if (!arg.empty()) return arg;
  if (const char* env = std::getenv("MOEFLUX_MODEL"); env && *env) return env;
  std::string tried;
  for (const std::string& dir : bundled_model_candidates()) {
    std::error_code ec;
    if (fs::exists(fs::path(dir) / kManifestName, ec)) return dir;
    tried += (tried.empty() ? "" : ", ") + dir;
  }
  fail("no model given and no bundled model (looked in " + (tried.empty() ? "?" : tried) +
       "): pass -m PKG or set MOEFLUX_MODEL");
}

void add_model_option(CLI::App* cmd, std::string* model) {
  cmd->add_option("-m,--model", *model,
                  "Package directory (default: $MOEFLUX_MODEL, else the bundled model " +
                      std::string(kBundledModel) + ")");
}

}  // namespace moeflux::tool
