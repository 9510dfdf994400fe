// A parsed Jinja template, ready to render many times (concurrently too: rendering reads the
// parsed tree only). The interpreter supports the subset of jinja2 that published chat
// templates use; see docs/ARCHITECTURE.md (Text) for the list and what is left out.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>

#include "text/jinja/errors.hpp"
#include "text/jinja/value.hpp"

namespace moeflux::jinja {

class Template {
 public:
  // Parses `source` (UTF-8); throws TemplateError ("chat template:LINE:COL: ...") when it is
  // malformed, not UTF-8, or larger than limits.max_template_bytes.
  static Template parse(std::string_view source, const Limits& limits = {});

  // Renders with the template variables `vars`; throws TemplateError.
  std::string render(std::unordered_map<std::string, Value> vars) const;
  // The same with the variables of a JSON object (key order kept).
  std::string render(const nlohmann::ordered_json& vars) const;

  const std::string& source() const;  // normalised (line endings, trailing newline)

 private:
  struct State;
  std::shared_ptr<const State> state_;
};

}  // namespace moeflux::jinja
