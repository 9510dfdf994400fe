// Jinja parser: tokens -> syntax tree, following jinja2's grammar and operator precedence
// (lowest first): `a if c else b`; or; and; not; comparisons and `in` (chained); + -; ~;
// * / // %; **; unary - +; then primaries with `.attr`, `[key]`, `[a:b:c]`, calls, and the
// `|filter` / `is test` chain.
//
// Statements: if / elif / else, for (targets, `if` filter, else), set (names, unpacking,
// namespace attribute, block set), macro, filter blocks, break / continue, generation.
// Anything else (extends, include, import, call blocks, recursive loops) is a TemplateError that
// names it.
#pragma once

#include <string>
#include <vector>

#include "text/jinja/ast.hpp"
#include "text/jinja/errors.hpp"
#include "text/jinja/lexer.hpp"

namespace moeflux::jinja {

// The statements of the normalised `source` (tokens from tokenize()). Throws TemplateError with
// the position of the offending token; nesting deeper than limits.max_nesting is an error.
Body parse(const std::string& source, const std::vector<Token>& tokens, const Limits& limits);

}  // namespace moeflux::jinja
