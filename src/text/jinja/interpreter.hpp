// Jinja interpreter: renders a parsed template (ast.hpp) with a set of variables, with jinja2's
// semantics as transformers sets it up (sandboxed, undefined values print as "" and fail when
// used as objects, loop controls on).
//
// Scoping (as jinja2): the template's variables and top-level `set`s live in the root scope,
// above the globals (range, namespace, dict, raise_exception, strftime_now); each iteration of a
// `for` body gets a fresh scope (assignments there do not outlive the iteration, hence
// namespace()); a macro call gets a scope above the scope the macro was defined in, so it sees
// the template's variables as they are when it is called. `if` opens no scope.
//
// Bounds (Limits): evaluation steps, nested macro calls, evaluation depth, the size of every
// string built and of the output, and the bytes of all strings and lists built, summed. Each is
// a TemplateError when exceeded.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>

#include "text/jinja/ast.hpp"
#include "text/jinja/errors.hpp"
#include "text/jinja/value.hpp"

namespace moeflux::jinja {

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  const Value* find(const std::string& name) const;
};
using ScopePtr = std::shared_ptr<Scope>;

class Interpreter {
 public:
  Interpreter(const std::string& source, const Limits& limits);

  // Renders `body` with `vars` (the template's variables) over the globals.
  std::string render(const Body& body, std::unordered_map<std::string, Value> vars);

  const Limits& limits() const { return limits_; }
  // Accounts for `bytes` more of strings or lists built; EvalError past max_total_bytes.
  void charge(size_t bytes);
  // EvalError if a string of `bytes` would exceed max_string_bytes.
  void check_string(size_t bytes) const;

 private:
  enum class Flow { Normal, Break, Continue };

  Flow exec(const Body& body, std::string& out, const ScopePtr& scope);
  Flow exec_stmt(const Stmt& s, std::string& out, const ScopePtr& scope);
  Flow exec_for(const Stmt& s, std::string& out, const ScopePtr& scope);
  void assign(const Stmt& s, const ScopePtr& scope, Value v);
  Value define_macro(const Stmt& s, const ScopePtr& scope);

  Value eval(const Expr& e, const ScopePtr& scope);
  Value eval_inner(const Expr& e, const ScopePtr& scope);
  Value eval_filter(const Expr& e, const ScopePtr& scope, const Value* input);
  CallArgs eval_args(const Expr& e, size_t first, const ScopePtr& scope);

  void step();
  void append(std::string& out, const std::string& text);
  [[noreturn]] void fail_at(size_t offset, const std::string& message) const;

  const std::string& source_;
  const Limits& limits_;
  uint64_t steps_ = 0;
  size_t total_bytes_ = 0;
  int call_depth_ = 0;
  int eval_depth_ = 0;
};

}  // namespace moeflux::jinja
