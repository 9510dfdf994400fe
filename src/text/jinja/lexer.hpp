// Jinja lexer: template source -> text and tag tokens, with jinja2's whitespace rules as
// transformers configures them (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=
// False):
//  - line endings are normalised to "\n" (as str.splitlines() + "\n".join), and one trailing
//    newline of the source is dropped;
//  - `{%-` / `{{-` / `{#-` strip all whitespace before the tag, `-%}` / `-}}` / `-#}` all after;
//  - trim_blocks: the first newline after a block or comment tag is removed (not with `-`/`+`);
//  - lstrip_blocks: spaces and tabs from the start of a line up to a block or comment tag are
//    removed (not with `{%+`);
//  - `{% raw %}...{% endraw %}` is text.
// Text tokens carry the text after these rules. Inside tags: names, numbers, strings (Python
// escapes decoded), operators; `}}` and `%}` inside brackets do not end a tag.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "text/jinja/errors.hpp"

namespace moeflux::jinja {

enum class Tok {
  Text,
  VarBegin,    // {{
  VarEnd,      // }}
  BlockBegin,  // {%
  BlockEnd,    // %}
  Name,
  String,
  Integer,
  Float,
  Operator,
  Eof,
};

struct Token {
  Tok kind;
  std::string text;  // Text: the text; String: decoded value; Name / Operator / numbers: source
  size_t offset;     // in the normalised source
};

// The normalised source (line endings, trailing newline) that token offsets refer to.
std::string normalize_source(std::string_view source);

// Tokens of `source` (already normalised), ending with Eof. Throws TemplateError.
std::vector<Token> tokenize(const std::string& source);

}  // namespace moeflux::jinja
