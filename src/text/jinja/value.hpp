// Values of the Jinja interpreter: what Python objects are to jinja2, restricted to what chat
// templates meet. JSON-like (none, bool, int, float, string, list, dict) plus undefined, the
// mutable namespace() object, and callables (macros, builtin functions, bound string and dict
// methods).
//
// Invariants:
//  - strings hold UTF-8 (templates are checked at parse, JSON input is validated by its parser);
//    operations that index or measure strings count code points, as Python does;
//  - dicts keep insertion order (Python dicts do; tojson and iteration depend on it) and have
//    string keys only;
//  - strings, lists and dicts are immutable once built (the sandbox of transformers forbids
//    mutation), so values share them freely (copying a value copies no text); only a namespace
//    is mutable (`set ns.attr = ...`);
//  - integers are 64-bit; arithmetic that would overflow is an error, not a wrap.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeflux::jinja {

class Value;
using ValueList = std::vector<Value>;

// An error with no position yet: the interpreter adds the template position of the expression
// or statement being evaluated (TemplateError, errors.hpp).
struct EvalError {
  std::string message;
};
[[noreturn]] void eval_fail(std::string message);

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;
  const Value* kwarg(std::string_view name) const;
  // Argument `i` or keyword `name`, else nullptr.
  const Value* arg(size_t i, std::string_view name) const;
};

struct Callable {
  std::string name;
  std::function<Value(const CallArgs&)> fn;
};

class Value {
 public:
  enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  static Value string(std::string s);
  static Value list(ValueList items, bool tuple = false);
  static Value dict(Dict d);
  static Value namespace_(Dict d);
  static Value callable(std::string name, std::function<Value(const CallArgs&)> fn);
  // JSON input (insertion order kept); numbers become int when integral in the JSON text.
  static Value from_json(const nlohmann::ordered_json& j);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::Undefined; }
  bool is_none() const { return type_ == Type::None; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_int() const { return type_ == Type::Int; }
  bool is_float() const { return type_ == Type::Float; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }  // Python: bool is int
  bool is_string() const { return type_ == Type::String; }
  bool is_list() const { return type_ == Type::List; }
  bool is_tuple() const { return type_ == Type::List && tuple_; }
  bool is_dict() const { return type_ == Type::Dict; }
  bool is_namespace() const { return type_ == Type::Namespace; }
  bool is_callable() const { return type_ == Type::Callable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return type_ == Type::Bool ? int64_t(b_) : i_; }
  double as_float() const { return type_ == Type::Float ? d_ : double(as_int()); }
  const std::string& as_string() const { return *s_; }
  const ValueList& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& namespace_attrs() const { return *dict_; }
  const Callable& as_callable() const { return *fn_; }
  // The name an undefined value was looked up by ("" if unknown), for error messages.
  const std::string& undefined_hint() const { return s_ ? *s_ : empty_string(); }
  // The shared object of a list, dict, namespace or callable (what Python's `is` compares).
  const void* identity() const {
    if (list_) return list_.get();
    return dict_ ? static_cast<const void*>(dict_.get()) : static_cast<const void*>(fn_.get());
  }

  // Python truthiness.
  bool truthy() const;
  // Python str(): what `{{ v }}` prints (undefined prints nothing).
  std::string str() const;
  // Python repr(): how a value prints inside a list or dict.
  std::string repr() const;
  // Python's name of the type, for error messages ("str", "list", "dict", "NoneType", ...).
  std::string type_name() const;

 private:
  Type type_ = Type::Undefined;
  bool b_ = false;
  bool tuple_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  // Shared: copying a value (attribute access, list items) never copies its text.
  std::shared_ptr<const std::string> s_;
  static const std::string& empty_string();
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> fn_;
};

// Python ==.
bool equal(const Value& a, const Value& b);
// Python <, for the orderable pairs (numbers, strings, lists); EvalError otherwise.
bool less(const Value& a, const Value& b);

// Python repr(float).
std::string float_repr(double d);

struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;          // < 0: none
  std::string indent_text;  // an indent given as a string (used when indent_is_text)
  bool indent_is_text = false;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// Python json.dumps(v, ...) as transformers' `tojson` filter calls it.
std::string to_json(const Value& v, const JsonOptions& opts);

}  // namespace moeflux::jinja
