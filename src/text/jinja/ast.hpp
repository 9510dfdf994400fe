// Syntax tree of a parsed template. Nodes are built once by the parser and only read by the
// interpreter, so one parsed template can render many times, from several threads at once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "text/jinja/value.hpp"

namespace moeflux::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

// Children (`args`) by kind:
//   Literal            -, `literal` holds the value
//   Name               -, `name` is the variable
//   ListLit, TupleLit  the items
//   DictLit            key, value, key, value, ...
//   Attr               [object], `name` is the attribute
//   Item               [object, key]
//   Slice              [object, start, stop, step] (null children: omitted)
//   Call               [callee, arguments...]
//   Filter             [object, arguments...], `name` is the filter (object null in a filter block)
//   Test               [object, arguments...], `name` is the test, `negated` for `is not`
//   Unary              [operand], `name` is "not", "-" or "+"
//   Binary             [left, right], `name` is the operator ("and", "or", "+", "~", "in", ...)
//   Compare            [first, operands...], `ops` the comparison operators between them
//   Cond               [then, condition, else] (else null: undefined)
// For Call, Filter and Test the last kw_names.size() arguments are keyword arguments.
struct Expr {
  enum class Kind {
    Literal,
    Name,
    ListLit,
    TupleLit,
    DictLit,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Unary,
    Binary,
    Compare,
    Cond
  };
  Kind kind;
  size_t offset = 0;  // in the normalised source, for error positions
  Value literal;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::string> kw_names;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Fields by kind:
//   Text         `text`
//   Output       exprs = [value]
//   If           exprs = conditions; bodies = one per condition, plus the else body if any
//   For          targets = loop variables; exprs = [iterable, filter or null];
//                bodies = [body, else body]
//   Set          targets = names (several: unpacking) or [namespace] with `attr`; exprs = [value]
//   SetBlock     targets = [name] or [namespace] with `attr`; exprs = [filter chain or none];
//                bodies = [body]
//   Macro        text = name; targets = parameters; exprs = defaults (null: none); bodies = [body]
//   FilterBlock  exprs = [filter chain, innermost object null]; bodies = [body]
//   Scope        bodies = [body] (`{% generation %}`: rendered as is)
//   Break, Continue
struct Stmt {
  enum class Kind {
    Text,
    Output,
    If,
    For,
    Set,
    SetBlock,
    Macro,
    FilterBlock,
    Scope,
    Break,
    Continue
  };
  Kind kind;
  size_t offset = 0;
  std::string text;
  std::string attr;
  std::vector<std::string> targets;
  std::vector<ExprPtr> exprs;
  std::vector<Body> bodies;
};

}  // namespace moeflux::jinja
