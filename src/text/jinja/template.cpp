#include "text/jinja/template.hpp"

#include "text/jinja/interpreter.hpp"
#include "text/jinja/lexer.hpp"
#include "text/jinja/parser.hpp"
#include "text/utf8.hpp"

namespace moeflux::jinja {

struct Template::State {
  std::string source;
  Body body;
  Limits limits;
};

Template Template::parse(std::string_view source, const Limits& limits) {
  if (source.size() > limits.max_template_bytes)
    throw TemplateError(
        1, 1, "template larger than " + std::to_string(limits.max_template_bytes) + " bytes");
  if (!utf8::is_valid(source)) throw TemplateError(1, 1, "template is not valid UTF-8");
  auto st = std::make_shared<State>();
  st->source = normalize_source(source);
  st->limits = limits;
  st->body = jinja::parse(st->source, tokenize(st->source), st->limits);
  Template t;
  t.state_ = std::move(st);
  return t;
}

std::string Template::render(std::unordered_map<std::string, Value> vars) const {
  Interpreter in(state_->source, state_->limits);
  return in.render(state_->body, std::move(vars));
}

std::string Template::render(const nlohmann::ordered_json& vars) const {
  std::unordered_map<std::string, Value> v;
  if (vars.is_object())
    for (const auto& [k, x] : vars.items()) v[k] = Value::from_json(x);
  return render(std::move(v));
}

const std::string& Template::source() const {
  return state_->source;
}

}  // namespace moeflux::jinja
