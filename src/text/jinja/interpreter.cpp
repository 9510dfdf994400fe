#include "text/jinja/interpreter.hpp"

#include "text/jinja/builtins.hpp"

namespace moeflux::jinja {

namespace {

// Evaluation recursion (expressions, statements, macro bodies), bounded so that a template
// cannot exhaust the stack whatever its nesting and macro recursion.
constexpr int kMaxEvalDepth = 600;

// Counts one level of evaluation recursion for its lifetime.
struct DepthGuard {
  explicit DepthGuard(int& d) : d_(d) { ++d_; }
  ~DepthGuard() { --d_; }
  int& d_;
};

// The bytes a value built by a filter or call holds itself (text, or one slot per item); what
// it shares with other values is accounted where that was built.
size_t shallow_bytes(const Value& v) {
  if (v.is_string()) return v.as_string().size();
  if (v.is_list()) return v.as_list().size() * sizeof(Value);
  if (v.is_dict() || v.is_namespace()) return v.as_dict().items.size() * sizeof(Value);
  return 0;
}

}  // namespace

const Value* Scope::find(const std::string& name) const {
  for (const Scope* s = this; s; s = s->parent.get()) {
    const auto it = s->vars.find(name);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

Interpreter::Interpreter(const std::string& source, const Limits& limits)
    : source_(source), limits_(limits) {}

void Interpreter::fail_at(size_t offset, const std::string& message) const {
  int line = 0, col = 0;
  line_col(source_, offset, line, col);
  throw TemplateError(line, col, message);
}

void Interpreter::step() {
  if (++steps_ > limits_.max_steps)
    eval_fail("template took more than " + std::to_string(limits_.max_steps) + " evaluation steps");
}

void Interpreter::charge(size_t bytes) {
  total_bytes_ += bytes;
  if (total_bytes_ > limits_.max_total_bytes)
    eval_fail("template built more than " + std::to_string(limits_.max_total_bytes) +
              " bytes of strings and lists");
}

void Interpreter::check_string(size_t bytes) const {
  if (bytes > limits_.max_string_bytes)
    eval_fail("string longer than " + std::to_string(limits_.max_string_bytes) + " bytes");
}

void Interpreter::append(std::string& out, const std::string& text) {
  check_string(out.size() + text.size());
  charge(text.size());
  out += text;
}

std::string Interpreter::render(const Body& body, std::unordered_map<std::string, Value> vars) {
  auto globals = std::make_shared<Scope>();
  add_globals(*globals);
  auto root = std::make_shared<Scope>();
  root->vars = std::move(vars);
  root->parent = globals;
  std::string out;
  exec(body, out, root);
  return out;
}

Interpreter::Flow Interpreter::exec(const Body& body, std::string& out, const ScopePtr& scope) {
  for (const StmtPtr& s : body) {
    const Flow f = exec_stmt(*s, out, scope);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_stmt(const Stmt& s, std::string& out, const ScopePtr& scope) {
  const DepthGuard guard(eval_depth_);
  try {
    step();
    if (eval_depth_ > kMaxEvalDepth) eval_fail("template evaluation nested too deeply");
    switch (s.kind) {
      case Stmt::Kind::Text:
        append(out, s.text);
        return Flow::Normal;
      case Stmt::Kind::Output:
        append(out, eval(*s.exprs[0], scope).str());
        return Flow::Normal;
      case Stmt::Kind::If:
        for (size_t i = 0; i < s.exprs.size(); ++i)
          if (eval(*s.exprs[i], scope).truthy()) return exec(s.bodies[i], out, scope);
        if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), out, scope);
        return Flow::Normal;
      case Stmt::Kind::For:
        return exec_for(s, out, scope);
      case Stmt::Kind::Set:
        assign(s, scope, eval(*s.exprs[0], scope));
        return Flow::Normal;
      case Stmt::Kind::SetBlock: {
        std::string body;
        exec(s.bodies[0], body, scope);
        Value v = Value::string(std::move(body));
        if (s.exprs[0]) v = eval_filter(*s.exprs[0], scope, &v);
        assign(s, scope, std::move(v));
        return Flow::Normal;
      }
      case Stmt::Kind::Macro:
        scope->vars[s.text] = define_macro(s, scope);
        return Flow::Normal;
      case Stmt::Kind::FilterBlock: {
        std::string body;
        exec(s.bodies[0], body, scope);
        const Value in = Value::string(std::move(body));
        append(out, eval_filter(*s.exprs[0], scope, &in).str());
        return Flow::Normal;
      }
      case Stmt::Kind::Scope:
        return exec(s.bodies[0], out, scope);
      case Stmt::Kind::Break:
        return Flow::Break;
      case Stmt::Kind::Continue:
        return Flow::Continue;
    }
  } catch (const EvalError& e) {
    fail_at(s.offset, e.message);
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_for(const Stmt& s, std::string& out, const ScopePtr& scope) {
  const Value seq = eval(*s.exprs[0], scope);
  ValueList items;
  try {
    items = iterate(seq);
  } catch (const EvalError& e) {
    fail_at(s.exprs[0]->offset, e.message);
  }
  if (const Expr* filter = s.exprs[1].get()) {
    // `for x in xs if cond`: the condition sees the loop variables, not `loop`.
    ValueList kept;
    for (Value& v : items) {
      auto iter = std::make_shared<Scope>();
      iter->parent = scope;
      assign(s, iter, v);
      if (eval(*filter, iter).truthy()) kept.push_back(std::move(v));
    }
    items = std::move(kept);
  }
  if (items.empty()) return exec(s.bodies[1], out, scope);
  const int64_t n = int64_t(items.size());
  for (int64_t i = 0; i < n; ++i) {
    step();
    auto iter = std::make_shared<Scope>();
    iter->parent = scope;
    assign(s, iter, items[size_t(i)]);
    Dict loop;
    loop.items.reserve(12);
    loop.items.emplace_back("index", Value::integer(i + 1));
    loop.items.emplace_back("index0", Value::integer(i));
    loop.items.emplace_back("revindex", Value::integer(n - i));
    loop.items.emplace_back("revindex0", Value::integer(n - i - 1));
    loop.items.emplace_back("first", Value::boolean(i == 0));
    loop.items.emplace_back("last", Value::boolean(i == n - 1));
    loop.items.emplace_back("length", Value::integer(n));
    loop.items.emplace_back("depth", Value::integer(1));
    loop.items.emplace_back("depth0", Value::integer(0));
    loop.items.emplace_back("previtem",
                            i > 0 ? items[size_t(i - 1)] : Value::undefined("loop.previtem"));
    loop.items.emplace_back("nextitem",
                            i + 1 < n ? items[size_t(i + 1)] : Value::undefined("loop.nextitem"));
    loop.items.emplace_back("cycle", Value::callable("loop.cycle", [i](const CallArgs& a) {
                              if (a.positional.empty()) eval_fail("no items for cycling given");
                              return a.positional[size_t(i) % a.positional.size()];
                            }));
    iter->vars["loop"] = Value::dict(std::move(loop));
    const Flow f = exec(s.bodies[0], out, iter);
    if (f == Flow::Break) break;
  }
  return Flow::Normal;
}

void Interpreter::assign(const Stmt& s, const ScopePtr& scope, Value v) {
  if (!s.attr.empty()) {
    const Value* ns = scope->find(s.targets[0]);
    if (!ns || !ns->is_namespace())
      eval_fail("cannot assign attribute '" + s.attr + "' on '" + s.targets[0] +
                "', which is not a namespace");
    ns->namespace_attrs().set(s.attr, std::move(v));
    return;
  }
  if (s.targets.size() == 1) {
    scope->vars[s.targets[0]] = std::move(v);
    return;
  }
  const ValueList parts = iterate(v);
  if (parts.size() != s.targets.size())
    eval_fail("cannot unpack " + std::to_string(parts.size()) + " values into " +
              std::to_string(s.targets.size()) + " names");
  for (size_t i = 0; i < parts.size(); ++i) scope->vars[s.targets[i]] = parts[i];
}

Value Interpreter::define_macro(const Stmt& s, const ScopePtr& scope) {
  // The callable refers to the scope it was defined in weakly (the scope holds the callable:
  // a strong reference would be a cycle); the interpreter outlives every value of a render.
  std::weak_ptr<Scope> defined_in = scope;
  return Value::callable(s.text, [this, &s, defined_in](const CallArgs& args) {
    const ScopePtr scope = defined_in.lock();
    if (!scope) eval_fail("macro '" + s.text + "' called outside the scope it was defined in");
    if (args.positional.size() > s.targets.size())
      eval_fail("macro '" + s.text + "' takes not more than " + std::to_string(s.targets.size()) +
                " argument(s)");
    const DepthGuard calls(call_depth_);
    if (call_depth_ > limits_.max_call_depth)
      eval_fail("macro calls nested more than " + std::to_string(limits_.max_call_depth) + " deep");
    auto frame = std::make_shared<Scope>();
    frame->parent = scope;
    for (const auto& [k, v] : args.keyword) {
      bool known = false;
      for (const auto& p : s.targets) known = known || p == k;
      if (!known) eval_fail("macro '" + s.text + "' has no parameter '" + k + "'");
    }
    for (size_t i = 0; i < s.targets.size(); ++i) {
      const Value* given = args.arg(i, s.targets[i]);
      if (given) {
        frame->vars[s.targets[i]] = *given;
      } else if (s.exprs[i]) {
        frame->vars[s.targets[i]] = eval(*s.exprs[i], frame);
      } else {
        frame->vars[s.targets[i]] = Value::undefined(s.targets[i]);
      }
    }
    std::string out;
    exec(s.bodies[0], out, frame);
    return Value::string(std::move(out));
  });
}

Value Interpreter::eval(const Expr& e, const ScopePtr& scope) {
  const DepthGuard guard(eval_depth_);
  try {
    step();
    if (eval_depth_ > kMaxEvalDepth) eval_fail("template evaluation nested too deeply");
    return eval_inner(e, scope);
  } catch (const EvalError& x) {
    fail_at(e.offset, x.message);
  }
}

CallArgs Interpreter::eval_args(const Expr& e, size_t first, const ScopePtr& scope) {
  CallArgs a;
  const size_t n_kw = e.kw_names.size();
  const size_t n_pos = e.args.size() - first - n_kw;
  for (size_t i = 0; i < n_pos; ++i) a.positional.push_back(eval(*e.args[first + i], scope));
  for (size_t i = 0; i < n_kw; ++i)
    a.keyword.emplace_back(e.kw_names[i], eval(*e.args[first + n_pos + i], scope));
  return a;
}

Value Interpreter::eval_filter(const Expr& e, const ScopePtr& scope, const Value* input) {
  if (e.kind != Expr::Kind::Filter) return eval(e, scope);
  const Value v = e.args[0] ? eval_filter(*e.args[0], scope, input) : *input;
  const CallArgs args = eval_args(e, 1, scope);
  try {
    Value r = call_filter(*this, e.name, v, args);
    charge(shallow_bytes(r));
    return r;
  } catch (const EvalError& x) {
    fail_at(e.offset, x.message);
  }
}

namespace {

[[noreturn]] void undefined_use(const Value& v) {
  eval_fail(v.undefined_hint().empty() ? "undefined value used"
                                       : "'" + v.undefined_hint() + "' is undefined");
}

}  // namespace

Value Interpreter::eval_inner(const Expr& e, const ScopePtr& scope) {
  switch (e.kind) {
    case Expr::Kind::Literal:
      return e.literal;
    case Expr::Kind::Name: {
      const Value* v = scope->find(e.name);
      return v ? *v : Value::undefined(e.name);
    }
    case Expr::Kind::ListLit:
    case Expr::Kind::TupleLit: {
      ValueList items;
      for (const auto& a : e.args) items.push_back(eval(*a, scope));
      charge(items.size() * sizeof(Value));
      return Value::list(std::move(items), e.kind == Expr::Kind::TupleLit);
    }
    case Expr::Kind::DictLit: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        const Value k = eval(*e.args[i], scope);
        if (!k.is_string()) eval_fail("dict keys must be strings, not " + k.type_name());
        d.set(k.as_string(), eval(*e.args[i + 1], scope));
      }
      charge(d.items.size() * sizeof(Value));
      return Value::dict(std::move(d));
    }
    case Expr::Kind::Attr: {
      const Value obj = eval(*e.args[0], scope);
      if (obj.is_undefined()) undefined_use(obj);
      return get_attr(*this, obj, e.name);
    }
    case Expr::Kind::Item: {
      const Value obj = eval(*e.args[0], scope);
      if (obj.is_undefined()) undefined_use(obj);
      return get_item(*this, obj, eval(*e.args[1], scope));
    }
    case Expr::Kind::Slice: {
      const Value obj = eval(*e.args[0], scope);
      if (obj.is_undefined()) undefined_use(obj);
      Value parts[3];
      const Value* p[3] = {nullptr, nullptr, nullptr};
      for (int i = 0; i < 3; ++i)
        if (e.args[size_t(i) + 1]) {
          parts[i] = eval(*e.args[size_t(i) + 1], scope);
          p[i] = &parts[i];
        }
      return get_slice(*this, obj, p[0], p[1], p[2]);
    }
    case Expr::Kind::Call: {
      const Value callee = eval(*e.args[0], scope);
      if (callee.is_undefined()) undefined_use(callee);
      if (!callee.is_callable()) eval_fail("'" + callee.type_name() + "' object is not callable");
      const CallArgs args = eval_args(e, 1, scope);
      Value r = callee.as_callable().fn(args);
      charge(shallow_bytes(r));
      return r;
    }
    case Expr::Kind::Filter:
      return eval_filter(e, scope, nullptr);
    case Expr::Kind::Test: {
      const Value v = eval(*e.args[0], scope);
      const CallArgs args = eval_args(e, 1, scope);
      return Value::boolean(call_test(*this, e.name, v, args) != e.negated);
    }
    case Expr::Kind::Unary: {
      const Value v = eval(*e.args[0], scope);
      if (e.name == "not") return Value::boolean(!v.truthy());
      if (v.is_undefined()) undefined_use(v);
      return unary_op(e.name, v);
    }
    case Expr::Kind::Binary: {
      const Value a = eval(*e.args[0], scope);
      if (e.name == "and") return a.truthy() ? eval(*e.args[1], scope) : a;
      if (e.name == "or") return a.truthy() ? a : eval(*e.args[1], scope);
      const Value b = eval(*e.args[1], scope);
      if (e.name != "~") {
        if (a.is_undefined()) undefined_use(a);
        if (b.is_undefined()) undefined_use(b);
      }
      return binary_op(*this, e.name, a, b);
    }
    case Expr::Kind::Compare: {
      Value left = eval(*e.args[0], scope);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.args[i + 1], scope);
        if (!compare(e.ops[i], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case Expr::Kind::Cond:
      if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
      return e.args[2] ? eval(*e.args[2], scope) : Value::undefined();
  }
  return Value::undefined();
}

}  // namespace moeflux::jinja
