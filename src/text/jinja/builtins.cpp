#include "text/jinja/builtins.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <unordered_map>

#include "text/jinja/pystr.hpp"

namespace moeflux::jinja {

namespace {

[[noreturn]] void type_error(const std::string& op, const Value& a, const Value& b) {
  eval_fail("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" +
            b.type_name() + "'");
}

int64_t add_int(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) eval_fail("integer overflow");
  return r;
}
int64_t sub_int(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_sub_overflow(a, b, &r)) eval_fail("integer overflow");
  return r;
}
int64_t mul_int(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) eval_fail("integer overflow");
  return r;
}

// Python's floor division and modulo for integers (b != 0).
int64_t floor_div(int64_t a, int64_t b) {
  if (a == INT64_MIN && b == -1) eval_fail("integer overflow");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t floor_mod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

Value repeat(Interpreter& in, const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const size_t bytes = seq.as_string().size();
    if (bytes && uint64_t(n) > in.limits().max_string_bytes / bytes) in.check_string(SIZE_MAX);
    in.check_string(bytes * size_t(n));
    in.charge(bytes * size_t(n));
    std::string out;
    out.reserve(bytes * size_t(n));
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value::string(std::move(out));
  }
  const ValueList& items = seq.as_list();
  if (!items.empty() && uint64_t(n) > in.limits().max_total_bytes / (items.size() * sizeof(Value)))
    in.charge(SIZE_MAX / 2);
  in.charge(items.size() * size_t(n) * sizeof(Value));
  ValueList out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
  return Value::list(std::move(out), seq.is_tuple());
}

// Python's printf-style `fmt % args` for %s %r %d %i %f %%.
std::string percent_format(Interpreter& in, const std::string& fmt, const Value& args) {
  ValueList list = args.is_tuple() ? args.as_list() : ValueList{args};
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) eval_fail("incomplete format");
    const char c = fmt[i];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (next >= list.size()) eval_fail("not enough arguments for format string");
    const Value& v = list[next++];
    if (c == 's') {
      out += v.str();
    } else if (c == 'r') {
      out += v.repr();
    } else if (c == 'd' || c == 'i') {
      if (!v.is_number()) eval_fail("%" + std::string(1, c) + " format: a number is required");
      out += std::to_string(v.is_float() ? int64_t(v.as_float()) : v.as_int());
    } else if (c == 'f') {
      if (!v.is_number()) eval_fail("%f format: a number is required");
      char buf[64];
      std::snprintf(buf, sizeof buf, "%f", v.as_float());
      out += buf;
    } else {
      eval_fail("unsupported format character '" + std::string(1, c) + "'");
    }
    in.check_string(out.size());
  }
  if (next < list.size()) eval_fail("not all arguments converted during string formatting");
  in.charge(out.size());
  return out;
}

}  // namespace

Value binary_op(Interpreter& in, const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = a.str();
    const std::string t = b.str();
    in.check_string(s.size() + t.size());
    in.charge(s.size() + t.size());
    return Value::string(s + t);
  }
  const bool nums = a.is_number() && b.is_number();
  const bool ints = nums && !a.is_float() && !b.is_float();
  if (op == "+") {
    if (ints) return Value::integer(add_int(a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_float() + b.as_float());
    if (a.is_string() && b.is_string()) {
      in.check_string(a.as_string().size() + b.as_string().size());
      in.charge(a.as_string().size() + b.as_string().size());
      return Value::string(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      ValueList out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      in.charge(out.size() * sizeof(Value));
      return Value::list(std::move(out), a.is_tuple());
    }
    if (a.is_string() || a.is_list())
      eval_fail("can only concatenate " + a.type_name() + " (not \"" + b.type_name() + "\") to " +
                a.type_name());
    type_error("+", a, b);
  }
  if (op == "-") {
    if (ints) return Value::integer(sub_int(a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_float() - b.as_float());
    type_error("-", a, b);
  }
  if (op == "*") {
    if (ints) return Value::integer(mul_int(a.as_int(), b.as_int()));
    if (nums) return Value::number(a.as_float() * b.as_float());
    if ((a.is_string() || a.is_list()) && b.is_number() && !b.is_float())
      return repeat(in, a, b.as_int());
    if ((b.is_string() || b.is_list()) && a.is_number() && !a.is_float())
      return repeat(in, b, a.as_int());
    type_error("*", a, b);
  }
  if (op == "/") {
    if (!nums) type_error("/", a, b);
    if (b.as_float() == 0) eval_fail("division by zero");
    return Value::number(a.as_float() / b.as_float());
  }
  if (op == "//") {
    if (!nums) type_error("//", a, b);
    if (b.as_float() == 0) eval_fail("integer division or modulo by zero");
    if (ints) return Value::integer(floor_div(a.as_int(), b.as_int()));
    return Value::number(std::floor(a.as_float() / b.as_float()));
  }
  if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(in, a.as_string(), b));
    if (!nums) type_error("%", a, b);
    if (b.as_float() == 0) eval_fail("integer division or modulo by zero");
    if (ints) return Value::integer(floor_mod(a.as_int(), b.as_int()));
    double r = std::fmod(a.as_float(), b.as_float());
    if (r != 0 && ((r < 0) != (b.as_float() < 0))) r += b.as_float();
    return Value::number(r);
  }
  if (op == "**") {
    if (!nums) type_error("**", a, b);
    if (ints && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();
      for (int64_t e = b.as_int(); e > 0; e >>= 1) {
        if (e & 1) r = mul_int(r, base);
        if (e > 1) base = mul_int(base, base);
      }
      return Value::integer(r);
    }
    if (a.as_float() == 0 && b.as_float() < 0)
      eval_fail("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_float(), b.as_float()));
  }
  eval_fail("unknown operator " + op);
}

Value unary_op(const std::string& op, const Value& a) {
  if (!a.is_number()) eval_fail("bad operand type for unary " + op + ": '" + a.type_name() + "'");
  if (op == "+") return a.is_float() ? a : Value::integer(a.as_int());
  if (a.is_float()) return Value::number(-a.as_float());
  if (a.as_int() == INT64_MIN) eval_fail("integer overflow");
  return Value::integer(-a.as_int());
}

bool contains(const Value& container, const Value& item) {
  switch (container.type()) {
    case Value::Type::String:
      if (!item.is_string())
        eval_fail("'in <string>' requires string as left operand, not " + item.type_name());
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Type::List:
      for (const Value& v : container.as_list())
        if (equal(v, item)) return true;
      return false;
    case Value::Type::Dict:
    case Value::Type::Namespace:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    case Value::Type::Undefined:
      return false;
    default:
      eval_fail("argument of type '" + container.type_name() + "' is not iterable");
  }
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equal(a, b);
  if (op == "!=") return !equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "not in") return !contains(b, a);
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") return less(a, b) || equal(a, b);
  if (op == ">=") return less(b, a) || equal(a, b);
  eval_fail("unknown comparison " + op);
}

ValueList iterate(const Value& v) {
  switch (v.type()) {
    case Value::Type::List:
      return v.as_list();
    case Value::Type::Dict: {
      ValueList keys;
      for (const auto& [k, x] : v.as_dict().items) keys.push_back(Value::string(k));
      return keys;
    }
    case Value::Type::String: {
      ValueList chars;
      const std::string& s = v.as_string();
      const std::vector<size_t> offs = pystr::code_point_offsets(s);
      for (size_t i = 0; i + 1 < offs.size(); ++i)
        chars.push_back(Value::string(s.substr(offs[i], offs[i + 1] - offs[i])));
      return chars;
    }
    case Value::Type::Undefined:
      return {};
    default:
      eval_fail("'" + v.type_name() + "' object is not iterable");
  }
}

// ---- attributes, items, methods

namespace {

std::optional<std::string> opt_string(const Value* v, const char* what) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string())
    eval_fail(std::string(what) + " must be a string or None, not " + v->type_name());
  return v->as_string();
}

int64_t int_arg(const Value* v, int64_t fallback, const char* what) {
  if (!v || v->is_none()) return fallback;
  if (!v->is_number() || v->is_float())
    eval_fail(std::string(what) + " must be an integer, not " + v->type_name());
  return v->as_int();
}

const std::string& string_arg(const Value* v, const char* what) {
  if (!v) eval_fail(std::string(what) + ": missing argument");
  if (!v->is_string()) eval_fail(std::string(what) + " must be a string, not " + v->type_name());
  return v->as_string();
}

Value string_list(std::vector<std::string> parts) {
  ValueList out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return Value::list(std::move(out));
}

bool affix_match(const std::string& s, const Value& what, bool prefix) {
  auto one = [&](const Value& a) {
    const std::string& x = string_arg(&a, prefix ? "startswith" : "endswith");
    return prefix ? s.starts_with(x) : s.ends_with(x);
  };
  if (what.is_list()) {
    for (const Value& a : what.as_list())
      if (one(a)) return true;
    return false;
  }
  return one(what);
}

Value string_method(Interpreter& in, const std::string& s, const std::string& name) {
  using F = std::function<Value(const CallArgs&)>;
  F f;
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    f = [s, prefix](const CallArgs& a) {
      if (a.positional.empty()) eval_fail("startswith / endswith: missing argument");
      return Value::boolean(affix_match(s, a.positional[0], prefix));
    };
  } else if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool l = name != "rstrip", r = name != "lstrip";
    f = [s, l, r](const CallArgs& a) {
      return Value::string(pystr::strip(s, opt_string(a.arg(0, "chars"), "chars"), l, r));
    };
  } else if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    f = [&in, s, right](const CallArgs& a) {
      const auto sep = opt_string(a.arg(0, "sep"), "sep");
      const int64_t max = int_arg(a.arg(1, "maxsplit"), -1, "maxsplit");
      std::vector<std::string> parts =
          right ? pystr::rsplit(s, sep, max) : pystr::split(s, sep, max);
      in.charge(s.size() + parts.size() * sizeof(Value));
      return string_list(std::move(parts));
    };
  } else if (name == "splitlines") {
    f = [&in, s](const CallArgs&) {
      in.charge(s.size());
      return string_list(pystr::splitlines(s));
    };
  } else if (name == "replace") {
    f = [&in, s](const CallArgs& a) {
      const std::string& from = string_arg(a.arg(0, "old"), "replace");
      const std::string& to = string_arg(a.arg(1, "new"), "replace");
      std::string r = pystr::replace(s, from, to, int_arg(a.arg(2, "count"), -1, "count"),
                                     in.limits().max_string_bytes);
      in.charge(r.size());
      return Value::string(std::move(r));
    };
  } else if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    f = [s, name](const CallArgs&) {
      return Value::string(name == "upper"   ? pystr::upper(s)
                           : name == "lower" ? pystr::lower(s)
                           : name == "title" ? pystr::title_method(s)
                                             : pystr::capitalize(s));
    };
  } else if (name == "find" || name == "count") {
    const bool find = name == "find";
    f = [s, find](const CallArgs& a) {
      const std::string& sub = string_arg(a.arg(0, "sub"), find ? "find" : "count");
      return Value::integer(find ? pystr::find(s, sub) : pystr::count(s, sub));
    };
  } else if (name == "join") {
    f = [&in, s](const CallArgs& a) {
      if (a.positional.empty()) eval_fail("join: missing argument");
      std::string out;
      bool first = true;
      for (const Value& v : iterate(a.positional[0])) {
        if (!v.is_string()) eval_fail("join: sequence item must be str, not " + v.type_name());
        if (!first) out += s;
        out += v.as_string();
        first = false;
        in.check_string(out.size());
      }
      in.charge(out.size());
      return Value::string(std::move(out));
    };
  } else if (name == "isdigit" || name == "isspace" || name == "isalpha") {
    f = [s, name](const CallArgs&) {
      if (s.empty()) return Value::boolean(false);
      for (char c : s) {
        const bool ok = name == "isdigit" ? (c >= '0' && c <= '9')
                        : name == "isspace"
                            ? pystr::is_space(char32_t(static_cast<unsigned char>(c)))
                            : ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
        if (!ok) return Value::boolean(false);
      }
      return Value::boolean(true);
    };
  } else {
    return Value::undefined("str." + name);
  }
  return Value::callable("str." + name, std::move(f));
}

Value items_of(const Dict& d) {
  ValueList out;
  for (const auto& [k, v] : d.items) out.push_back(Value::list({Value::string(k), v}, true));
  return Value::list(std::move(out));
}

Value dict_method(const Value& obj, const std::string& name) {
  const Value self = obj;  // shares the dict
  if (name == "items")
    return Value::callable("dict.items",
                           [self](const CallArgs&) { return items_of(self.as_dict()); });
  if (name == "keys")
    return Value::callable("dict.keys",
                           [self](const CallArgs&) { return Value::list(iterate(self)); });
  if (name == "values")
    return Value::callable("dict.values", [self](const CallArgs&) {
      ValueList out;
      for (const auto& [k, v] : self.as_dict().items) out.push_back(v);
      return Value::list(std::move(out));
    });
  if (name == "get")
    return Value::callable("dict.get", [self](const CallArgs& a) {
      if (a.positional.empty()) eval_fail("get: missing argument");
      const Value* v =
          a.positional[0].is_string() ? self.as_dict().find(a.positional[0].as_string()) : nullptr;
      if (v) return *v;
      return a.positional.size() > 1 ? a.positional[1] : Value::none();
    });
  return Value::undefined();
}

}  // namespace

Value get_attr(Interpreter& in, const Value& obj, const std::string& name) {
  switch (obj.type()) {
    case Value::Type::Dict: {
      if (Value m = dict_method(obj, name); !m.is_undefined()) return m;
      const Value* v = obj.as_dict().find(name);
      return v ? *v : Value::undefined(name);
    }
    case Value::Type::Namespace: {
      const Value* v = obj.namespace_attrs().find(name);
      return v ? *v : Value::undefined(name);
    }
    case Value::Type::String:
      return string_method(in, obj.as_string(), name);
    default:
      return Value::undefined(name);
  }
}

Value get_item(Interpreter& in, const Value& obj, const Value& key) {
  if ((obj.is_dict() || obj.is_namespace()) && key.is_string()) {
    if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
    return obj.is_dict() ? dict_method(obj, key.as_string()) : Value::undefined(key.as_string());
  }
  if ((obj.is_list() || obj.is_string()) && key.is_number() && !key.is_float()) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const int64_t n = int64_t(obj.as_list().size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined();
      return obj.as_list()[size_t(i)];
    }
    const std::string& s = obj.as_string();
    const std::vector<size_t> offs = pystr::code_point_offsets(s);
    const int64_t n = int64_t(offs.size()) - 1;
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined();
    return Value::string(s.substr(offs[size_t(i)], offs[size_t(i) + 1] - offs[size_t(i)]));
  }
  if (key.is_string()) return get_attr(in, obj, key.as_string());
  return Value::undefined();
}

Value get_slice(Interpreter& in, const Value& obj, const Value* start, const Value* stop,
                const Value* step) {
  if (!obj.is_list() && !obj.is_string())
    eval_fail("'" + obj.type_name() + "' object is not subscriptable");
  const int64_t st = int_arg(step, 1, "slice step");
  if (st == 0) eval_fail("slice step cannot be zero");
  std::vector<size_t> offs;
  int64_t n;
  if (obj.is_list()) {
    n = int64_t(obj.as_list().size());
  } else {
    offs = pystr::code_point_offsets(obj.as_string());
    n = int64_t(offs.size()) - 1;
  }
  // Python's slice.indices().
  auto bound = [&](const Value* v, int64_t dflt) {
    if (!v || v->is_none()) return dflt;
    int64_t i = int_arg(v, 0, "slice index");
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = bound(start, st > 0 ? 0 : n - 1);
  const int64_t e = bound(stop, st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  if (obj.is_list()) {
    ValueList out;
    for (int64_t i : idx) out.push_back(obj.as_list()[size_t(i)]);
    in.charge(out.size() * sizeof(Value));
    return Value::list(std::move(out), obj.is_tuple());
  }
  std::string out;
  const std::string& s = obj.as_string();
  for (int64_t i : idx) out.append(s, offs[size_t(i)], offs[size_t(i) + 1] - offs[size_t(i)]);
  in.charge(out.size());
  return Value::string(std::move(out));
}

// ---- filters

namespace {

using Filter = Value (*)(Interpreter&, const Value&, const CallArgs&);

size_t length_of(const Value& v) {
  switch (v.type()) {
    case Value::Type::String:
      return pystr::length(v.as_string());
    case Value::Type::List:
      return v.as_list().size();
    case Value::Type::Dict:
    case Value::Type::Namespace:
      return v.as_dict().items.size();
    case Value::Type::Undefined:
      return 0;
    default:
      eval_fail("object of type '" + v.type_name() + "' has no len()");
  }
}

bool bool_arg(const Value* v, bool fallback) {
  return v ? v->truthy() : fallback;
}

// A dotted attribute path ("a.b", "0") looked up as jinja2's attribute filters do.
Value attr_path(Interpreter& in, const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    Value key = Value::string(part);
    if (!part.empty() &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
      key = Value::integer(std::atoll(part.c_str()));
    if (cur.is_undefined()) return cur;
    cur = get_item(in, cur, key);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

std::string sort_key_string(const std::string& s, bool case_sensitive) {
  return case_sensitive ? s : pystr::lower(s);
}

Value sort_key(const Value& v, bool case_sensitive) {
  return v.is_string() ? Value::string(sort_key_string(v.as_string(), case_sensitive)) : v;
}

Value f_tojson(Interpreter& in, const Value& v, const CallArgs& a) {
  JsonOptions o;
  o.ensure_ascii = bool_arg(a.arg(0, "ensure_ascii"), false);
  if (const Value* ind = a.arg(1, "indent"); ind && !ind->is_none()) {
    if (ind->is_string()) {
      o.indent_is_text = true;
      o.indent_text = ind->as_string();
    } else {
      o.indent = int(std::clamp<int64_t>(int_arg(ind, 0, "indent"), 0, 64));
    }
    o.item_separator = ",";
  }
  if (const Value* sep = a.arg(2, "separators"); sep && !sep->is_none()) {
    if (!sep->is_list() || sep->as_list().size() != 2)
      eval_fail("tojson: separators must be a pair of strings");
    o.item_separator = string_arg(&sep->as_list()[0], "separators");
    o.key_separator = string_arg(&sep->as_list()[1], "separators");
  }
  o.sort_keys = bool_arg(a.arg(3, "sort_keys"), false);
  std::string out = to_json(v, o);
  in.check_string(out.size());
  in.charge(out.size());
  return Value::string(std::move(out));
}

Value f_trim(Interpreter&, const Value& v, const CallArgs& a) {
  return Value::string(pystr::strip(v.str(), opt_string(a.arg(0, "chars"), "chars"), true, true));
}
Value f_length(Interpreter&, const Value& v, const CallArgs&) {
  return Value::integer(int64_t(length_of(v)));
}
Value f_first(Interpreter&, const Value& v, const CallArgs&) {
  const ValueList items = iterate(v);
  return items.empty() ? Value::undefined("first item") : items.front();
}
Value f_last(Interpreter&, const Value& v, const CallArgs&) {
  const ValueList items = iterate(v);
  return items.empty() ? Value::undefined("last item") : items.back();
}
Value f_join(Interpreter& in, const Value& v, const CallArgs& a) {
  const Value* sep = a.arg(0, "d");
  const std::string d = sep ? sep->str() : "";
  const Value* attr = a.arg(1, "attribute");
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += d;
    out += (attr ? attr_path(in, item, attr->str()) : item).str();
    first = false;
    in.check_string(out.size());
  }
  in.charge(out.size());
  return Value::string(std::move(out));
}
Value f_replace(Interpreter& in, const Value& v, const CallArgs& a) {
  const Value* from = a.arg(0, "old");
  const Value* to = a.arg(1, "new");
  if (!from || !to) eval_fail("replace: needs old and new");
  std::string r =
      pystr::replace(v.str(), from->str(), to->str(), int_arg(a.arg(2, "count"), -1, "count"),
                     in.limits().max_string_bytes);
  in.charge(r.size());
  return Value::string(std::move(r));
}
Value f_upper(Interpreter&, const Value& v, const CallArgs&) {
  return Value::string(pystr::upper(v.str()));
}
Value f_lower(Interpreter&, const Value& v, const CallArgs&) {
  return Value::string(pystr::lower(v.str()));
}
Value f_capitalize(Interpreter&, const Value& v, const CallArgs&) {
  return Value::string(pystr::capitalize(v.str()));
}
Value f_title(Interpreter&, const Value& v, const CallArgs&) {
  return Value::string(pystr::title_filter(v.str()));
}
Value f_default(Interpreter&, const Value& v, const CallArgs& a) {
  const Value* d = a.arg(0, "default_value");
  const bool boolean = bool_arg(a.arg(1, "boolean"), false);
  if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value::string("");
  return v;
}
Value f_items(Interpreter&, const Value& v, const CallArgs&) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) eval_fail("Can only get item pairs from a mapping.");
  return items_of(v.as_dict());
}
Value f_string(Interpreter&, const Value& v, const CallArgs&) {
  return Value::string(v.str());
}
Value f_safe(Interpreter&, const Value& v, const CallArgs&) {
  return v;
}

// Python int(str): optional sign, digits with single underscores between them, surrounding
// whitespace.
std::optional<int64_t> parse_int(const std::string& text) {
  const std::string s = pystr::strip(text, std::nullopt, true, true);
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i >= s.size()) return std::nullopt;
  int64_t v = 0;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && prev_digit && i + 1 < s.size() && s[i + 1] != '_') {
      prev_digit = false;
      continue;
    }
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s[i] - '0', &v))
      return std::nullopt;
    prev_digit = true;
  }
  if (!prev_digit) return std::nullopt;
  return neg ? -v : v;
}

std::optional<double> parse_float(const std::string& text) {
  const std::string s = pystr::strip(text, std::nullopt, true, true);
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return d;
}

Value f_int(Interpreter&, const Value& v, const CallArgs& a) {
  const Value* d = a.arg(0, "default");
  const Value fallback = d ? *d : Value::integer(0);
  if (v.is_number()) {
    if (!v.is_float()) return Value::integer(v.as_int());
    const double x = v.as_float();
    if (!std::isfinite(x) || std::fabs(x) >= 9.2e18) return fallback;
    return Value::integer(int64_t(x));
  }
  if (v.is_string()) {
    if (auto i = parse_int(v.as_string())) return Value::integer(*i);
    if (auto x = parse_float(v.as_string()); x && std::isfinite(*x) && std::fabs(*x) < 9.2e18)
      return Value::integer(int64_t(*x));
  }
  return fallback;
}
Value f_float(Interpreter&, const Value& v, const CallArgs& a) {
  const Value* d = a.arg(0, "default");
  const Value fallback = d ? *d : Value::number(0.0);
  if (v.is_number()) return Value::number(v.as_float());
  if (v.is_string())
    if (auto x = parse_float(v.as_string())) return Value::number(*x);
  return fallback;
}
Value f_list(Interpreter& in, const Value& v, const CallArgs&) {
  ValueList items = iterate(v);
  in.charge(items.size() * sizeof(Value));
  return Value::list(std::move(items));
}
Value f_map(Interpreter& in, const Value& v, const CallArgs& a) {
  ValueList out;
  if (const Value* attr = a.kwarg("attribute")) {
    const Value* dflt = a.kwarg("default");
    for (const Value& item : iterate(v)) {
      Value r = attr_path(in, item, attr->str());
      out.push_back(r.is_undefined() && dflt ? *dflt : r);
    }
  } else {
    if (a.positional.empty()) eval_fail("map: needs a filter name or attribute=");
    const std::string name = string_arg(&a.positional[0], "map");
    CallArgs rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    for (const Value& item : iterate(v)) out.push_back(call_filter(in, name, item, rest));
  }
  in.charge(out.size() * sizeof(Value));
  return Value::list(std::move(out));
}

// select / reject (attr = false) and selectattr / rejectattr (attr = true).
Value select_items(Interpreter& in, const Value& v, const CallArgs& a, bool attr, bool keep) {
  size_t next = 0;
  std::string path;
  if (attr) {
    if (a.positional.empty()) eval_fail("selectattr / rejectattr: needs an attribute");
    path = a.positional[next++].str();
  }
  std::string test;
  if (next < a.positional.size()) test = string_arg(&a.positional[next++], "test name");
  CallArgs rest;
  rest.positional.assign(a.positional.begin() + long(next), a.positional.end());
  ValueList out;
  for (const Value& item : iterate(v)) {
    const Value x = attr ? attr_path(in, item, path) : item;
    const bool ok = test.empty() ? x.truthy() : call_test(in, test, x, rest);
    if (ok == keep) out.push_back(item);
  }
  in.charge(out.size() * sizeof(Value));
  return Value::list(std::move(out));
}
Value f_select(Interpreter& in, const Value& v, const CallArgs& a) {
  return select_items(in, v, a, false, true);
}
Value f_reject(Interpreter& in, const Value& v, const CallArgs& a) {
  return select_items(in, v, a, false, false);
}
Value f_selectattr(Interpreter& in, const Value& v, const CallArgs& a) {
  return select_items(in, v, a, true, true);
}
Value f_rejectattr(Interpreter& in, const Value& v, const CallArgs& a) {
  return select_items(in, v, a, true, false);
}

Value f_unique(Interpreter& in, const Value& v, const CallArgs& a) {
  const bool cs = bool_arg(a.arg(0, "case_sensitive"), false);
  const Value* attr = a.arg(1, "attribute");
  ValueList out, seen;
  for (const Value& item : iterate(v)) {
    const Value k = sort_key(attr ? attr_path(in, item, attr->str()) : item, cs);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, k); })) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return Value::list(std::move(out));
}
Value f_sort(Interpreter& in, const Value& v, const CallArgs& a) {
  const bool reverse = bool_arg(a.arg(0, "reverse"), false);
  const bool cs = bool_arg(a.arg(1, "case_sensitive"), false);
  const Value* attr = a.arg(2, "attribute");
  std::vector<std::pair<Value, Value>> keyed;
  for (const Value& item : iterate(v))
    keyed.emplace_back(sort_key(attr ? attr_path(in, item, attr->str()) : item, cs), item);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first) : less(x.first, y.first);
  });
  ValueList out;
  for (auto& [k, item] : keyed) out.push_back(std::move(item));
  return Value::list(std::move(out));
}
Value f_dictsort(Interpreter&, const Value& v, const CallArgs& a) {
  if (!v.is_dict()) eval_fail("dictsort: a mapping is required");
  const bool cs = bool_arg(a.arg(0, "case_sensitive"), false);
  const bool by_value = a.arg(1, "by") && a.arg(1, "by")->str() == "value";
  const bool reverse = bool_arg(a.arg(2, "reverse"), false);
  ValueList pairs = items_of(v.as_dict()).as_list();
  std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& x, const Value& y) {
    const Value kx = sort_key(x.as_list()[by_value ? 1 : 0], cs);
    const Value ky = sort_key(y.as_list()[by_value ? 1 : 0], cs);
    return reverse ? less(ky, kx) : less(kx, ky);
  });
  return Value::list(std::move(pairs));
}
Value f_reverse(Interpreter&, const Value& v, const CallArgs&) {
  ValueList items = iterate(v);
  std::reverse(items.begin(), items.end());
  if (!v.is_string()) return Value::list(std::move(items));
  std::string out;
  for (const Value& c : items) out += c.as_string();
  return Value::string(std::move(out));
}
Value f_sum(Interpreter& in, const Value& v, const CallArgs& a) {
  const Value* attr = a.arg(0, "attribute");
  const Value* start = a.arg(1, "start");
  Value total = start ? *start : Value::integer(0);
  for (const Value& item : iterate(v))
    total = binary_op(in, "+", total, attr ? attr_path(in, item, attr->str()) : item);
  return total;
}
Value min_max(Interpreter& in, const Value& v, const CallArgs& a, bool max) {
  const bool cs = bool_arg(a.arg(0, "case_sensitive"), false);
  const Value* attr = a.arg(1, "attribute");
  Value best, best_key;
  for (const Value& item : iterate(v)) {
    const Value k = sort_key(attr ? attr_path(in, item, attr->str()) : item, cs);
    if (best.is_undefined() || (max ? less(best_key, k) : less(k, best_key))) {
      best = item;
      best_key = k;
    }
  }
  return best.is_undefined() ? Value::undefined("min / max of an empty sequence") : best;
}
Value f_min(Interpreter& in, const Value& v, const CallArgs& a) {
  return min_max(in, v, a, false);
}
Value f_max(Interpreter& in, const Value& v, const CallArgs& a) {
  return min_max(in, v, a, true);
}
Value f_abs(Interpreter&, const Value& v, const CallArgs&) {
  if (!v.is_number()) eval_fail("bad operand type for abs(): '" + v.type_name() + "'");
  if (v.is_float()) return Value::number(std::fabs(v.as_float()));
  if (v.as_int() == INT64_MIN) eval_fail("integer overflow");
  return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
}
Value f_round(Interpreter&, const Value& v, const CallArgs& a) {
  if (!v.is_number()) eval_fail("round: a number is required");
  const int64_t precision =
      std::clamp<int64_t>(int_arg(a.arg(0, "precision"), 0, "precision"), -20, 20);
  const std::string method = a.arg(1, "method") ? a.arg(1, "method")->str() : "common";
  if (!v.is_float() && method == "common") return Value::integer(v.as_int());
  const double x = v.as_float();
  if (method == "ceil" || method == "floor") {
    const double m = std::pow(10.0, double(precision));
    return Value::number((method == "ceil" ? std::ceil(x * m) : std::floor(x * m)) / m);
  }
  if (method != "common") eval_fail("round: method must be common, ceil or floor");
  if (precision < 0 || !std::isfinite(x)) {
    const double m = std::pow(10.0, double(-precision));
    return Value::number(std::nearbyint(x / m) * m);
  }
  // Python's round(x, n): correctly rounded, ties to even (what printf does with the exact
  // binary value).
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", int(precision), x);
  return Value::number(std::strtod(buf, nullptr));
}
Value f_escape(Interpreter&, const Value& v, const CallArgs&) {
  std::string out;
  for (char c : v.str()) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return Value::string(std::move(out));
}
Value f_indent(Interpreter& in, const Value& v, const CallArgs& a) {
  const Value* w = a.arg(0, "width");
  const std::string ind =
      w && w->is_string()
          ? w->as_string()
          : std::string(size_t(std::clamp<int64_t>(int_arg(w, 4, "width"), 0, 256)), ' ');
  const bool first = bool_arg(a.arg(1, "first"), false);
  const bool blank = bool_arg(a.arg(2, "blank"), false);
  const std::vector<std::string> lines = pystr::splitlines(v.str() + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += "\n";
    if (i && (blank || !lines[i].empty())) out += ind;
    out += lines[i];
    in.check_string(out.size());
  }
  if (first) out = ind + out;
  in.charge(out.size());
  return Value::string(std::move(out));
}
Value f_attr(Interpreter& in, const Value& v, const CallArgs& a) {
  return get_attr(in, v, string_arg(a.arg(0, "name"), "attr"));
}
Value f_format(Interpreter& in, const Value& v, const CallArgs& a) {
  return Value::string(percent_format(in, v.str(), Value::list(a.positional, true)));
}

const std::unordered_map<std::string, Filter>& filters() {
  static const std::unordered_map<std::string, Filter> f = {
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"length", f_length},
      {"count", f_length},
      {"first", f_first},
      {"last", f_last},
      {"join", f_join},
      {"replace", f_replace},
      {"upper", f_upper},
      {"lower", f_lower},
      {"capitalize", f_capitalize},
      {"title", f_title},
      {"default", f_default},
      {"d", f_default},
      {"items", f_items},
      {"string", f_string},
      {"safe", f_safe},
      {"int", f_int},
      {"float", f_float},
      {"list", f_list},
      {"map", f_map},
      {"select", f_select},
      {"reject", f_reject},
      {"selectattr", f_selectattr},
      {"rejectattr", f_rejectattr},
      {"unique", f_unique},
      {"sort", f_sort},
      {"dictsort", f_dictsort},
      {"reverse", f_reverse},
      {"sum", f_sum},
      {"min", f_min},
      {"max", f_max},
      {"abs", f_abs},
      {"round", f_round},
      {"escape", f_escape},
      {"e", f_escape},
      {"indent", f_indent},
      {"attr", f_attr},
      {"format", f_format},
  };
  return f;
}

}  // namespace

Value call_filter(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args) {
  const auto& f = filters();
  const auto it = f.find(name);
  if (it == f.end()) eval_fail("unknown filter '" + printable(name) + "'");
  return it->second(in, v, args);
}

// ---- tests

bool call_test(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args) {
  const Value* arg = args.arg(0, "other");
  auto need_arg = [&]() -> const Value& {
    if (!arg) eval_fail("test '" + name + "' needs an argument");
    return *arg;
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.is_callable();
  if (name == "sameas") {
    // Python's `is`: the same object for containers and callables; for immutable values, the
    // same type and value (CPython shares small ints, interned strings, None, True, False).
    const Value& o = need_arg();
    if (v.type() != o.type() || v.is_tuple() != o.is_tuple()) return false;
    if (v.is_list() || v.is_dict() || v.is_namespace() || v.is_callable())
      return v.identity() == o.identity();
    return equal(v, o);
  }
  if (name == "eq" || name == "equalto" || name == "==") return equal(v, need_arg());
  if (name == "ne" || name == "!=") return !equal(v, need_arg());
  if (name == "lt" || name == "lessthan" || name == "<") return less(v, need_arg());
  if (name == "le" || name == "<=") return less(v, need_arg()) || equal(v, need_arg());
  if (name == "gt" || name == "greaterthan" || name == ">") return less(need_arg(), v);
  if (name == "ge" || name == ">=") return less(need_arg(), v) || equal(v, need_arg());
  if (name == "in") return contains(need_arg(), v);
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_number() || v.is_float()) eval_fail("test '" + name + "' needs an integer");
    if (name == "divisibleby") {
      const int64_t d = int_arg(&need_arg(), 1, "divisibleby");
      if (d == 0) eval_fail("integer division or modulo by zero");
      return d == -1 || v.as_int() % d == 0;
    }
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "lower") return v.is_string() && v.as_string() == pystr::lower(v.as_string());
  if (name == "upper") return v.is_string() && v.as_string() == pystr::upper(v.as_string());
  if (name == "escaped") return false;
  if (name == "filter") return v.is_string() && filters().count(v.as_string()) > 0;
  (void)in;
  eval_fail("unknown test '" + printable(name) + "'");
}

// ---- globals

void add_globals(Scope& scope) {
  scope.vars["range"] = Value::callable("range", [](const CallArgs& a) {
    if (a.positional.empty() || a.positional.size() > 3) eval_fail("range expects 1 to 3 integers");
    int64_t start = 0, stop, step = 1;
    if (a.positional.size() == 1) {
      stop = int_arg(&a.positional[0], 0, "range");
    } else {
      start = int_arg(&a.positional[0], 0, "range");
      stop = int_arg(&a.positional[1], 0, "range");
      if (a.positional.size() == 3) step = int_arg(&a.positional[2], 1, "range");
    }
    if (step == 0) eval_fail("range() arg 3 must not be zero");
    // As jinja2's sandbox: at most 100000 items.
    const double count = std::ceil((double(stop) - double(start)) / double(step));
    if (count > 100000) eval_fail("range too big (more than 100000 items)");
    ValueList out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
      out.push_back(Value::integer(i));
    return Value::list(std::move(out));
  });
  scope.vars["namespace"] = Value::callable("namespace", [](const CallArgs& a) {
    Dict d;
    for (const Value& p : a.positional) {
      if (!p.is_dict()) eval_fail("namespace() takes keyword arguments or mappings");
      for (const auto& [k, v] : p.as_dict().items) d.set(k, v);
    }
    for (const auto& [k, v] : a.keyword) d.set(k, v);
    return Value::namespace_(std::move(d));
  });
  scope.vars["dict"] = Value::callable("dict", [](const CallArgs& a) {
    Dict d;
    for (const Value& p : a.positional) {
      if (!p.is_dict()) eval_fail("dict() takes keyword arguments or mappings");
      for (const auto& [k, v] : p.as_dict().items) d.set(k, v);
    }
    for (const auto& [k, v] : a.keyword) d.set(k, v);
    return Value::dict(std::move(d));
  });
  scope.vars["raise_exception"] =
      Value::callable("raise_exception", [](const CallArgs& a) -> Value {
        eval_fail(a.positional.empty() ? std::string("raise_exception") : a.positional[0].str());
      });
  scope.vars["strftime_now"] = Value::callable("strftime_now", [](const CallArgs& a) {
    const std::string& fmt = string_arg(a.arg(0, "format"), "strftime_now");
    if (fmt.size() > 256) eval_fail("strftime_now: format too long");
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[1024];
    const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    return Value::string(std::string(buf, n));
  });
}

}  // namespace moeflux::jinja
