// The Jinja interpreter (text/jinja/): features chat templates use, each checked against what
// jinja2 renders in transformers' environment (trim_blocks, lstrip_blocks, loop controls), and
// the errors and limits that keep a malformed or hostile template from crashing or hanging us.
#include <gtest/gtest.h>

#include <ctime>
#include <nlohmann/json.hpp>

#include "text/jinja/template.hpp"

namespace moeflux::jinja {
namespace {

using ojson = nlohmann::ordered_json;

std::string render(const std::string& src, const ojson& vars = ojson::object(),
                   const Limits& limits = {}) {
  return Template::parse(src, limits).render(vars);
}

// The TemplateError of parsing or rendering `src` ("" if none).
std::string error(const std::string& src, const ojson& vars = ojson::object(),
                  const Limits& limits = {}) {
  try {
    render(src, vars, limits);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "";
}

TEST(Jinja, WhitespaceControlAsTransformers) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it goes.
  EXPECT_EQ(render("  {% if true %}\n  x\n  {% endif %}\n"), "  x\n");
  EXPECT_EQ(render("a  {%- if true %} b {% endif -%}  c\n"), "a b c");
  EXPECT_EQ(render("{{- ' x ' -}}\n  {{ 'y' }}"), " x y");
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(render("{% if true +%}\nb{% endif %}"), "\nb");
  EXPECT_EQ(render("a {# note #}\nb\n  {#- c -#}  d"), "a bd");
  EXPECT_EQ(render("{{ 'a' }}\n"), "a");      // one trailing newline dropped
  EXPECT_EQ(render("{{ 'a' }}\n\n"), "a\n");  // only one
  EXPECT_EQ(render("a\r\nb\rc"), "a\nb\nc");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
  EXPECT_EQ(render("{{ {'a': {'b': 1}}['a']['b'] }}"), "1");  // '}}' inside brackets
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -3 % 5 }}"),
            "7 9 3 -4 2");
  EXPECT_EQ(render("{{ 1 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }}"),
            "0.5 2.0 1024 0.5 3.0");
  EXPECT_EQ(render("{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ -1.5 }}"),
            "0.30000000000000004 1e+16 1000000000000000.0 1e-05 0.0001 -1.5");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' + 'c' }} {{ 3 * 'ab' }} {{ [1] * 2 }}"),
            "a1NoneTrue abc ababab [1, 1]");
  EXPECT_EQ(
      render("{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }}"),
      "True False True True True");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}"),
            "True True True True");
  EXPECT_EQ(
      render("{{ 0 or 'x' }} {{ 'y' and 0 }} {{ not '' }} {{ 'a' if 0 else 'b' }}|{{ 'a' if 0 }}|"),
      "x 0 True b||");
  EXPECT_EQ(render("{{ [1, 'a', none, true, 1.5, {'k': \"it's\"}] }} {{ (1,) }} {{ () }}"),
            "[1, 'a', None, True, 1.5, {'k': \"it's\"}] (1,) ()");
  EXPECT_EQ(render("{{ 'ab' 'cd' }} {{ '\\u00e9\\x41\\n'|length }} {{ '\\q' }}"), "abcd 3 \\q");
  EXPECT_EQ(render("{{ -x }} {{ +x }} {{ not x }}", {{"x", 2}}), "-2 2 False");
}

TEST(Jinja, AttributesItemsAndSlices) {
  const ojson vars = {
      {"d", {{"a", 1}, {"items", "key"}, {"n", nullptr}}}, {"l", {1, 2, 3}}, {"s", "h\xc3\xa9llo"}};
  EXPECT_EQ(render("{{ d.a }} {{ d['a'] }} {{ d.missing }}|{{ d.n }} {{ d['items'] }}", vars),
            "1 1 |None key");
  // A dict method comes before a key of the same name in attribute syntax (as jinja2).
  EXPECT_EQ(render("{{ d.items()|list|length }} {{ d.get('a') }} {{ d.get('z', 5) }} "
                   "{{ d.keys()|list }} {{ d.values()|list }}",
                   vars),
            "3 1 5 ['a', 'items', 'n'] [1, 'key', None]");
  EXPECT_EQ(render("{{ l[0] }} {{ l[-1] }} {{ l[5] }}|{{ l[1:] }} {{ l[::-1] }} {{ l[:-1] }} "
                   "{{ l[::2] }} {{ l.0 }}",
                   vars),
            "1 3 |[2, 3] [3, 2, 1] [1, 2] [1, 3] 1");
  EXPECT_EQ(render("{{ s[1] }} {{ s[1:3] }} {{ s[::-1] }} {{ s|length }}", vars),
            "\xc3\xa9 \xc3\xa9l oll\xc3\xa9h 5");
  EXPECT_EQ(render("{{ none.x }}|{{ 'abc'.nope }}|{{ 3.x }}|"), "|||");
}

TEST(Jinja, Statements) {
  EXPECT_EQ(render("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in 'ab' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                   "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
                   "{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}"),
            "1021TrueFalse2b;2110FalseTrue2a;");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"),
            "2242");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}"
                   "{% if x > 3 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "013");
  EXPECT_EQ(render("{% for x in [1] %}{% for y in [2] %}{{ loop.index }}{% endfor %}"
                   "{{ loop.cycle('a', 'b') }}{% endfor %}"),
            "1a");
  // A `set` in a loop body lives for that iteration only; namespace() carries values out.
  EXPECT_EQ(
      render("{% set x = 5 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}"),
      "[5][5]5");
  EXPECT_EQ(render("{% set ns = namespace(n=0, s='') %}{% for i in [1, 2, 3] %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }} {{ ns }}"),
            "6 <Namespace {'n': 6, 's': ''}>");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set t = 1, 2 %}{{ t }}"), "12(1, 2)");
  EXPECT_EQ(render("{% set x %}in {{ 'block' }}{% endset %}[{{ x }}]"), "[in block]");
  EXPECT_EQ(render("{% set x | upper %}shout{% endset %}{{ x }}"), "SHOUT");
  EXPECT_EQ(render("{% filter upper %}a{{ 'b' }}{% endfilter %}"), "AB");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
  // Macros: defaults, keywords, the caller's variables at call time, recursion.
  EXPECT_EQ(render("{% macro m(a, b='B', c=none) %}{{ a }}{{ b }}{{ c }}{{ g }}{% endmacro %}"
                   "{% set g = '!' %}{{ m(1) }} {{ m(1, c=3) }} {{ m(1, 2, 3) }}"),
            "1BNone! 1B3! 123!");
  EXPECT_EQ(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                   "{{ f(3) }}{{ f(2).endswith('1') }}"),
            "321True");
}

TEST(Jinja, Filters) {
  const ojson vars = {{"tools", {{{"name", "f\xc3\xa9"}, {"args", {1, 2.5, true, nullptr}}}}}};
  EXPECT_EQ(render("{{ tools[0]|tojson }}", vars),
            "{\"name\": \"f\xc3\xa9\", \"args\": [1, 2.5, true, null]}");
  EXPECT_EQ(render("{{ tools[0]|tojson(ensure_ascii=true) }}", vars),
            "{\"name\": \"f\\u00e9\", \"args\": [1, 2.5, true, null]}");
  EXPECT_EQ(render("{{ {'b': [1], 'a': {}}|tojson(indent=2, sort_keys=true) }}"),
            "{\n  \"a\": {},\n  \"b\": [\n    1\n  ]\n}");
  EXPECT_EQ(render("{{ {'a': 1}|tojson(separators=(',', ':')) }} {{ 'q\"\\n\\x01'|tojson }}"),
            "{\"a\":1} \"q\\\"\\n\\u0001\"");
  EXPECT_EQ(render("[{{ '  a b \\n'|trim }}] [{{ 'xxaxx'|trim('x') }}] {{ [1, 2]|length }} "
                   "{{ 'h\xc3\xa9'|count }} {{ u|length }}"),
            "[a b] [a] 2 2 0");
  EXPECT_EQ(render("{{ [3, 1]|first }} {{ 'abc'|last }} {{ []|first }}| {{ {'x': 1}|first }}"),
            "3 c | x");
  EXPECT_EQ(render("{{ [1, 'a']|join(', ') }} {{ [{'n': 1}, {'n': 2}]|join('-', attribute='n') }}"),
            "1, a 1-2");
  EXPECT_EQ(render("{{ 'aaa'|replace('a', 'b', 2) }} {{ 'Ab'|upper }}{{ 'Ab'|lower }} "
                   "{{ 'hello big-world'|title }} {{ 'aBC'|capitalize }}"),
            "bba ABab Hello Big-World Abc");
  EXPECT_EQ(render("{{ u|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} "
                   "{{ none|d('x') }}"),
            "d  d None");
  EXPECT_EQ(render("{{ {'a': 1}|items|list }} {{ u|items|list }} {{ 12|string + 'x' }}"),
            "[('a', 1)] [] 12x");
  EXPECT_EQ(render("{{ ' 12 '|int + 1 }} {{ '1_000'|int }} {{ '1e3'|int }} {{ 3.9|int }} "
                   "{{ 'x'|int }} {{ 'x'|int(7) }} {{ '1.5'|float }} {{ true|int }}"),
            "13 1000 1000 3 0 7 1.5 1");
  EXPECT_EQ(render("{{ 'ab'|list }} {{ {'k': 1}|list }} {{ u|list }}"), "['a', 'b'] ['k'] []");
  const ojson people = {{"p", {{{"n", "a"}, {"age", 3}}, {{"n", "b"}}, {{"n", "c"}, {"age", 5}}}}};
  EXPECT_EQ(
      render("{{ p|map(attribute='n')|join }} {{ p|selectattr('age')|map(attribute='n')|list }} "
             "{{ p|rejectattr('age')|map(attribute='n')|list }} "
             "{{ p|selectattr('age', 'equalto', 5)|map(attribute='n')|first }} "
             "{{ [1, 2, 3]|map('string')|join('-') }} {{ [1, 2, 3]|select('odd')|list }} "
             "{{ [1, 2, 3]|reject('odd')|list }} {{ p|map(attribute='age', default=0)|list }}",
             people),
      "abc ['a', 'c'] ['b'] c 1-2-3 [1, 3] [2] [3, 0, 5]");
  EXPECT_EQ(
      render("{{ ['b', 'A', 'a']|unique|list }} {{ ['b', 'A', 'c']|sort }} "
             "{{ [1, 3, 2]|sort(reverse=true) }} {{ [1, 2]|reverse|list }} {{ 'ab'|reverse }} "
             "{{ [1, 2]|sum }} {{ [1, 3]|max }} {{ [4, 2]|min }} {{ -3|abs }}"),
      "['b', 'A'] ['A', 'b', 'c'] [3, 2, 1] [2, 1] ba 3 3 2 3");
  EXPECT_EQ(render("{{ 2.5|round }} {{ 3.5|round }} {{ 2.345|round(2) }} {{ 5|round }} "
                   "{{ 2.1|round(method='ceil') }}"),
            "2.0 4.0 2.35 5 3.0");
  EXPECT_EQ(render("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}"),
            "a\n  b\n\n  c|  a\n  b");
  EXPECT_EQ(render("{{ '%s-%d%%'|format('a', 3) }} {{ '%s and %r' % (1, 'x') }} {{ 'x'|safe }}"),
            "a-3% 1 and 'x' x");
  EXPECT_EQ(render("{{ '<a & \"b\">'|e }}"), "&lt;a &amp; &#34;b&#34;&gt;");
}

TEST(Jinja, Tests) {
  const ojson vars = {{"d", ojson::object()}, {"l", ojson::array()}, {"n", nullptr}};
  EXPECT_EQ(render("{{ d is defined }}{{ u is defined }}{{ u is undefined }}{{ n is none }}"
                   "{{ 'a' is string }}{{ d is mapping }}{{ l is mapping }}",
                   vars),
            "TrueFalseTrueTrueTrueTrueFalse");
  EXPECT_EQ(render("{{ 'a' is sequence }}{{ d is sequence }}{{ 1 is sequence }}{{ l is iterable }}"
                   "{{ n is iterable }}",
                   vars),
            "TrueTrueFalseTrueFalse");
  EXPECT_EQ(render("{{ 1 is number }}{{ true is number }}{{ 1.5 is integer }}{{ 1 is integer }}"
                   "{{ 1.5 is float }}{{ true is boolean }}{{ true is true }}{{ 1 is true }}"
                   "{{ false is false }}"),
            "TrueTrueFalseTrueTrueTrueTrueFalseTrue");
  EXPECT_EQ(render("{{ 2 is equalto 2 }}{{ 2 is eq(3) }}{{ 2 is ne 3 }}{{ 1 is lt 2 }}"
                   "{{ 'a' is in 'cab' }}{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}"
                   "{{ 'ab' is lower }}{{ x is not defined }}"),
            "TrueFalseTrueTrueTrueTrueFalseTrueTrueTrue");
  EXPECT_EQ(render("{{ 3 is sameas 3 }}{{ none is sameas none }}{{ d is sameas d }}"
                   "{{ d is sameas {} }}{{ 1 is sameas true }}",
                   vars),
            "TrueTrueTrueFalseFalse");
}

TEST(Jinja, StringMethods) {
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }}{{ 'abc'.startswith(('x', 'a')) }}"
                   "{{ 'abc'.endswith('bc') }}"),
            "TrueTrueTrue");
  EXPECT_EQ(
      render("[{{ '\\n a \\t'.strip() }}][{{ 'xxa'.lstrip('x') }}][{{ 'a\\n\\n'.rstrip('\\n') }}]"
             "[{{ '\xe3\x80\x80"
             "a\xc2\xa0'.strip() }}]"),  // U+3000, U+00A0 are whitespace
      "[a][a][a][a]");
  EXPECT_EQ(
      render("{{ '  a b  c  '.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} "
             "{{ '  a b  c  '.split(none, 1) }} {{ 'a,b,c'.rsplit(',', 1) }} "
             "{{ '  a b  c  '.rsplit(none, 1) }}"),
      "['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c'] ['a', 'b  c  '] ['a,b', 'c'] "
      "['  a b', 'c']");
  EXPECT_EQ(
      render("{{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ 'aXa'.replace('a', 'b') }} "
             "{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ 'hello world'.title() }} "
             "{{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }} {{ '-'.join(['a', 'b']) }}"),
      "z bXb AB ab Hello World 1 2 a-b");
  EXPECT_NE(error("{{ 'a'.split('') }}"), "");
  // Case mappings are Unicode's; repr escapes what Python's str.isprintable() rejects.
  EXPECT_EQ(render("{{ 'h\u00e9llo w\u00f6rld'.title() }} {{ 'stra\u00dfe'|upper }} "
                   "{{ '\u00c9T\u00c9'|lower }} {{ '\u00e9t\u00e9'|capitalize }}"),
            "H\xc3\xa9llo W\xc3\xb6rld STRASSE \xc3\xa9t\xc3\xa9 \xc3\x89t\xc3\xa9");
  EXPECT_EQ(render("{{ ['a\u00a0b', '\u200b', '\x7f', '\u00e9'] }}"),
            "['a\\xa0b', '\\u200b', '\\x7f', '\xc3\xa9']");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(3, 0, -1)|list }}"),
            "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
  EXPECT_EQ(render("{{ dict(a=1, b='x') }} {{ namespace({'k': 1}).k }}"), "{'a': 1, 'b': 'x'} 1");
  char year[8];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::strftime(year, sizeof year, "%Y", &tm);
  EXPECT_EQ(render("{{ strftime_now('%Y') }}"), year);
  const std::string e = error("line one\n{{ raise_exception('No user query found.') }}");
  EXPECT_EQ(e, "chat template:2:4: No user query found.");
}

TEST(Jinja, UndefinedValues) {
  EXPECT_EQ(render("[{{ u }}]{{ u ~ 'a' }}{% for x in u %}x{% endfor %}{{ u is none }}"),
            "[]aFalse");
  EXPECT_NE(error("{{ u.x }}").find("'u' is undefined"), std::string::npos);
  EXPECT_NE(error("{{ u + 'a' }}").find("'u' is undefined"), std::string::npos);
  EXPECT_NE(error("{{ u() }}").find("'u' is undefined"), std::string::npos);
  EXPECT_NE(error("{{ u|tojson }}").find("not JSON serializable"), std::string::npos);
}

TEST(Jinja, MalformedTemplatesAreClearErrors) {
  EXPECT_EQ(error("abc\n  {{ x "), "chat template:2:3: tag not closed (missing '}}')");
  EXPECT_EQ(error("{% if x %}never closed"),
            "chat template:1:1: 'if' block not closed before the end of the template");
  EXPECT_EQ(error("{% for x in y %}{% endif %}"),
            "chat template:1:20: unsupported or unknown tag 'endif'");
  EXPECT_EQ(error("{% include 'x' %}"), "chat template:1:4: unsupported or unknown tag 'include'");
  EXPECT_EQ(error("{{ 1 + }}"), "chat template:1:8: expected an expression, got '}}'");
  EXPECT_EQ(error("{{ 'abc }}"), "chat template:1:4: string not closed");
  EXPECT_EQ(error("{% break %}"), "chat template:1:4: 'break' outside a loop");
  EXPECT_EQ(error("{{ a $ b }}"), "chat template:1:6: unexpected character '$'");
  EXPECT_EQ(error("{# open"), "chat template:1:1: comment not closed (missing '#}')");
  EXPECT_EQ(error("{{ x is defined if y }}"), "chat template:1:20: expected '}}', got 'y'");
  EXPECT_EQ(error("{{ '\\ud800' }}"), "chat template:1:10: escape is not a Unicode scalar value");
  EXPECT_EQ(error("{{ 99999999999999999999 }}"), "chat template:1:4: integer literal out of range");
  EXPECT_EQ(error("{% for x in y recursive %}{% endfor %}"),
            "chat template:1:15: recursive loops are not supported");
  EXPECT_EQ(error("\xff"), "chat template:1:1: template is not valid UTF-8");
  // Runtime errors carry the position of the expression that failed.
  EXPECT_EQ(error("ok\n{{ 1 + 'a' }}"),
            "chat template:2:6: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_EQ(error("{{ 'a' + [1] }}"),
            "chat template:1:8: can only concatenate str (not \"list\") to str");
  EXPECT_EQ(error("{{ x|nope }}"), "chat template:1:6: unknown filter 'nope'");
  EXPECT_EQ(error("{{ x is nope }}"), "chat template:1:6: unknown test 'nope'");
  EXPECT_EQ(error("{{ 1 / 0 }}"), "chat template:1:6: division by zero");
  EXPECT_EQ(error("{{ 'a'() }}"), "chat template:1:4: 'str' object is not callable");
  EXPECT_EQ(error("{% for x in 5 %}{% endfor %}"),
            "chat template:1:13: 'int' object is not iterable");
  EXPECT_EQ(error("{% set x.a = 1 %}"),
            "chat template:1:1: cannot assign attribute 'a' on 'x', which is not a namespace");
  EXPECT_EQ(error("{{ 9223372036854775807 + 1 }}"), "chat template:1:24: integer overflow");
  EXPECT_EQ(error("{{ 1 < 'a' }}"),
            "chat template:1:4: '<' not supported between instances of 'int' and 'str'");
}

TEST(Jinja, LimitsBoundHostileTemplates) {
  Limits small;
  small.max_steps = 100000;
  small.max_string_bytes = 1 << 16;
  small.max_total_bytes = 1 << 20;
  EXPECT_NE(
      error("{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", {},
            small)
          .find("evaluation steps"),
      std::string::npos);
  EXPECT_NE(error("{{ 'x' * 100000 }}", {}, small).find("string longer than"), std::string::npos);
  EXPECT_NE(error("{% for i in range(100) %}{{ 'x' * 60000 }}{% endfor %}", {}, small)
                .find("string longer than"),
            std::string::npos);
  EXPECT_NE(error("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                  "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                  {}, small)
                .find("string longer than"),
            std::string::npos);
  EXPECT_NE(error("{% for i in range(1000) %}{% set y = 'x' * 60000 %}{% endfor %}", {}, small)
                .find("bytes of strings and lists"),
            std::string::npos);
  // Copies kept in a list: every string a filter or call builds counts, so memory stays bounded.
  EXPECT_NE(error("{% set ns = namespace(l=[]) %}{% for i in range(200) %}"
                  "{% set ns.l = ns.l + [big|trim] %}{% endfor %}",
                  {{"big", std::string(50000, 'x')}}, small)
                .find("bytes of strings and lists"),
            std::string::npos);
  EXPECT_NE(error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("macro calls nested"),
            std::string::npos);
  EXPECT_NE(error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
                .find("nested too deeply"),
            std::string::npos);
  std::string deep;
  for (int i = 0; i < 300; ++i) deep += "{% if 1 %}";
  EXPECT_NE(error(deep).find("nested too deeply"), std::string::npos);
  EXPECT_NE(error("{{ range(1000000)|length }}").find("range too big"), std::string::npos);
  EXPECT_NE(error("{{ 2 ** 64 }}").find("integer overflow"), std::string::npos);
  Limits tiny;
  tiny.max_template_bytes = 10;
  EXPECT_NE(error("{{ 'more than ten' }}", {}, tiny).find("larger than"), std::string::npos);
}

// One parsed template renders concurrently-safe and repeatedly with different variables.
TEST(Jinja, ParsedTemplateRendersMany) {
  const Template t =
      Template::parse("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}");
  EXPECT_EQ(t.render(ojson{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}), "user:hi;");
  EXPECT_EQ(t.render(ojson{{"messages", ojson::array()}}), "");
  EXPECT_EQ(t.source(), "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}");
}

}  // namespace
}  // namespace moeflux::jinja
