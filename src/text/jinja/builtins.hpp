// What the interpreter calls by name: operators, attribute and item access (with the string and
// dict methods templates call), filters, tests and global functions. Python semantics
// throughout; failures are EvalError (the interpreter adds the position).
#pragma once

#include <string>

#include "text/jinja/interpreter.hpp"
#include "text/jinja/value.hpp"

namespace moeflux::jinja {

// Binary operators: + - * / // % ** ~ ; `in` is contains().
Value binary_op(Interpreter& in, const std::string& op, const Value& a, const Value& b);
Value unary_op(const std::string& op, const Value& a);
bool contains(const Value& container, const Value& item);
// Python ==, <, ... for the comparison operators.
bool compare(const std::string& op, const Value& a, const Value& b);

// The items a `for` loop (or list(), join, ...) visits: list items, dict keys, string code
// points; nothing for undefined. EvalError for other values.
ValueList iterate(const Value& v);

// obj.name: dict methods (items, keys, values, get) and string methods (startswith, split, ...)
// come before dict keys, as in jinja2; a missing attribute is undefined.
Value get_attr(Interpreter& in, const Value& obj, const std::string& name);
// obj[key]: dict key, list / string index (negative from the end), else attribute; undefined
// when missing.
Value get_item(Interpreter& in, const Value& obj, const Value& key);
// obj[start:stop:step] (null pointers: omitted) for lists and strings.
Value get_slice(Interpreter& in, const Value& obj, const Value* start, const Value* stop,
                const Value* step);

Value call_filter(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args);
bool call_test(Interpreter& in, const std::string& name, const Value& v, const CallArgs& args);

// range, namespace, dict, raise_exception, strftime_now.
void add_globals(Scope& scope);

}  // namespace moeflux::jinja
