#include "text/jinja/parser.hpp"

#include <charconv>
#include <cstdlib>
#include <initializer_list>

namespace moeflux::jinja {

namespace {

bool is_compare_op(const std::string& op) {
  return op == "==" || op == "!=" || op == "<" || op == ">" || op == "<=" || op == ">=";
}

class Parser {
 public:
  Parser(const std::string& src, const std::vector<Token>& toks, const Limits& lim)
      : src_(src), toks_(toks), lim_(lim) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  // Counts the recursion of the parser; deeper than max_nesting is an error, not a crash.
  struct Depth {
    Depth(Parser& p) : p_(p) {
      if (++p_.depth_ > p_.lim_.max_nesting)
        p_.fail(p_.cur().offset, "template nested too deeply (more than " +
                                     std::to_string(p_.lim_.max_nesting) + " levels)");
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };

  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const {
    return toks_[i_ + k < toks_.size() ? i_ + k : toks_.size() - 1];
  }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().kind == Tok::Operator && cur().text == op; }
  bool is_name(const char* n) const { return cur().kind == Tok::Name && cur().text == n; }

  [[noreturn]] void fail(size_t offset, const std::string& msg) const {
    int line = 0, col = 0;
    line_col(src_, offset, line, col);
    throw TemplateError(line, col, msg);
  }

  std::string describe(const Token& t) const {
    switch (t.kind) {
      case Tok::Eof:
        return "end of template";
      case Tok::BlockEnd:
        return "'%}'";
      case Tok::VarEnd:
        return "'}}'";
      case Tok::String:
        return "a string";
      case Tok::Text:
        return "text";
      default:
        return "'" + printable(t.text) + "'";
    }
  }
  [[noreturn]] void unexpected(const std::string& wanted) const {
    fail(cur().offset, "expected " + wanted + ", got " + describe(cur()));
  }

  void expect_op(const char* op) {
    if (!is_op(op)) unexpected(std::string("'") + op + "'");
    next();
  }
  std::string expect_name() {
    if (cur().kind != Tok::Name) unexpected("a name");
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_keyword(const char* n) {
    if (!is_name(n)) unexpected(std::string("'") + n + "'");
    next();
  }
  void expect_block_end() {
    if (cur().kind != Tok::BlockEnd) unexpected("'%}'");
    next();
  }

  ExprPtr node(Expr::Kind k, size_t offset) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->offset = offset;
    return e;
  }
  StmtPtr stmt(Stmt::Kind k, size_t offset) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->offset = offset;
    return s;
  }

  // Statements up to a block tag whose keyword is one of `ends` (left as the current token,
  // its name returned in `end`); the whole template when `ends` is empty.
  Body parse_body(std::initializer_list<const char*> ends, std::string& end, size_t opened_at = 0,
                  const char* what = "") {
    Depth d(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      switch (t.kind) {
        case Tok::Text: {
          auto s = stmt(Stmt::Kind::Text, t.offset);
          s->text = t.text;
          body.push_back(std::move(s));
          next();
          break;
        }
        case Tok::VarBegin: {
          next();
          auto s = stmt(Stmt::Kind::Output, t.offset);
          s->exprs.push_back(parse_tuple(true));
          if (cur().kind != Tok::VarEnd) unexpected("'}}'");
          next();
          body.push_back(std::move(s));
          break;
        }
        case Tok::BlockBegin: {
          next();
          if (cur().kind == Tok::Name)
            for (const char* e : ends)
              if (cur().text == e) {
                end = e;
                return body;
              }
          body.push_back(parse_statement(t.offset));
          break;
        }
        case Tok::Eof:
          if (ends.size() == 0) return body;
          fail(opened_at,
               std::string("'") + what + "' block not closed before the end of the template");
        default:
          unexpected("text or a tag");
      }
    }
  }

  StmtPtr parse_statement(size_t offset) {
    if (cur().kind != Tok::Name) unexpected("a statement name");
    const std::string kw = cur().text;
    if (kw == "if") return parse_if(offset);
    if (kw == "for") return parse_for(offset);
    if (kw == "set") return parse_set(offset);
    if (kw == "macro") return parse_macro(offset);
    if (kw == "filter") return parse_filter_block(offset);
    if (kw == "generation") {
      next();
      expect_block_end();
      auto s = stmt(Stmt::Kind::Scope, offset);
      std::string end;
      s->bodies.push_back(parse_body({"endgeneration"}, end, offset, "generation"));
      next();
      expect_block_end();
      return s;
    }
    if (kw == "break" || kw == "continue") {
      if (loop_depth_ == 0) fail(cur().offset, "'" + kw + "' outside a loop");
      next();
      expect_block_end();
      return stmt(kw == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, offset);
    }
    fail(cur().offset, "unsupported or unknown tag '" + printable(kw) + "'");
  }

  StmtPtr parse_if(size_t offset) {
    auto s = stmt(Stmt::Kind::If, offset);
    next();  // if
    s->exprs.push_back(parse_expression(true));
    expect_block_end();
    std::string end;
    s->bodies.push_back(parse_body({"elif", "else", "endif"}, end, offset, "if"));
    while (end == "elif") {
      next();
      s->exprs.push_back(parse_expression(true));
      expect_block_end();
      s->bodies.push_back(parse_body({"elif", "else", "endif"}, end, offset, "if"));
    }
    if (end == "else") {
      next();
      expect_block_end();
      s->bodies.push_back(parse_body({"endif"}, end, offset, "if"));
    }
    next();  // endif
    expect_block_end();
    return s;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) next();
    names.push_back(expect_name());
    while (is_op(",")) {
      next();
      if (cur().kind != Tok::Name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr parse_for(size_t offset) {
    auto s = stmt(Stmt::Kind::For, offset);
    next();  // for
    s->targets = parse_targets();
    expect_keyword("in");
    s->exprs.push_back(parse_tuple(false));
    ExprPtr filter;
    if (is_name("if")) {
      next();
      filter = parse_expression(true);
    }
    s->exprs.push_back(std::move(filter));
    if (is_name("recursive")) fail(cur().offset, "recursive loops are not supported");
    expect_block_end();
    std::string end;
    ++loop_depth_;
    s->bodies.push_back(parse_body({"else", "endfor"}, end, offset, "for"));
    --loop_depth_;
    if (end == "else") {
      next();
      expect_block_end();
      s->bodies.push_back(parse_body({"endfor"}, end, offset, "for"));
    } else {
      s->bodies.emplace_back();
    }
    next();  // endfor
    expect_block_end();
    return s;
  }

  StmtPtr parse_set(size_t offset) {
    next();  // set
    std::vector<std::string> targets;
    std::string attr;
    targets.push_back(expect_name());
    if (is_op(".")) {
      next();
      attr = expect_name();
    } else {
      while (is_op(",")) {
        next();
        targets.push_back(expect_name());
      }
    }
    if (is_op("=")) {
      next();
      auto s = stmt(Stmt::Kind::Set, offset);
      s->targets = std::move(targets);
      s->attr = attr;
      s->exprs.push_back(parse_tuple(true));
      expect_block_end();
      return s;
    }
    if (targets.size() != 1) unexpected("'='");
    auto s = stmt(Stmt::Kind::SetBlock, offset);
    s->targets = std::move(targets);
    s->attr = attr;
    s->exprs.push_back(is_op("|") ? parse_filter(nullptr) : nullptr);
    expect_block_end();
    std::string end;
    s->bodies.push_back(parse_body({"endset"}, end, offset, "set"));
    next();
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(size_t offset) {
    auto s = stmt(Stmt::Kind::Macro, offset);
    next();  // macro
    s->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!s->targets.empty()) expect_op(",");
      if (is_op(")")) break;
      s->targets.push_back(expect_name());
      if (is_op("=")) {
        next();
        s->exprs.push_back(parse_expression(true));
      } else {
        s->exprs.push_back(nullptr);
      }
    }
    next();  // )
    expect_block_end();
    const int loops = loop_depth_;
    loop_depth_ = 0;  // break / continue do not cross a macro
    std::string end;
    s->bodies.push_back(parse_body({"endmacro"}, end, offset, "macro"));
    loop_depth_ = loops;
    next();
    if (cur().kind == Tok::Name && cur().text == s->text) next();  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block(size_t offset) {
    auto s = stmt(Stmt::Kind::FilterBlock, offset);
    next();  // filter
    s->exprs.push_back(parse_filter(nullptr, true));
    expect_block_end();
    std::string end;
    s->bodies.push_back(parse_body({"endfilter"}, end, offset, "filter"));
    next();
    expect_block_end();
    return s;
  }

  // ---- expressions

  ExprPtr parse_tuple(bool with_condexpr) {
    const size_t offset = cur().offset;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = node(Expr::Kind::TupleLit, offset);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().kind == Tok::BlockEnd || cur().kind == Tok::VarEnd || is_name("if")) break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return t;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    Depth d(*this);
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      const size_t offset = cur().offset;
      next();
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (is_name("else")) {
        next();
        other = parse_condexpr();
      }
      auto c = node(Expr::Kind::Cond, offset);
      c->args.push_back(std::move(expr));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      expr = std::move(c);
    }
    return expr;
  }

  ExprPtr binary(const std::string& op, ExprPtr l, ExprPtr r, size_t offset) {
    auto b = node(Expr::Kind::Binary, offset);
    b->name = op;
    b->args.push_back(std::move(l));
    b->args.push_back(std::move(r));
    return b;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const size_t offset = cur().offset;
      next();
      left = binary("or", std::move(left), parse_and(), offset);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const size_t offset = cur().offset;
      next();
      left = binary("and", std::move(left), parse_not(), offset);
    }
    return left;
  }

  ExprPtr parse_not() {
    Depth d(*this);
    if (is_name("not")) {
      auto u = node(Expr::Kind::Unary, cur().offset);
      next();
      u->name = "not";
      u->args.push_back(parse_not());
      return u;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const size_t offset = cur().offset;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().kind == Tok::Operator && is_compare_op(cur().text)) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().kind == Tok::Name && peek().text == "in") {
        op = "not in";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::Compare, offset);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().text;
      const size_t offset = cur().offset;
      next();
      left = binary(op, std::move(left), parse_concat(), offset);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const size_t offset = cur().offset;
      next();
      left = binary("~", std::move(left), parse_math2(), offset);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().text;
      const size_t offset = cur().offset;
      next();
      left = binary(op, std::move(left), parse_pow(), offset);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const size_t offset = cur().offset;
      next();
      left = binary("**", std::move(left), parse_unary(true), offset);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Depth d(*this);
    ExprPtr n;
    if (is_op("-") || is_op("+")) {
      n = node(Expr::Kind::Unary, cur().offset);
      n->name = cur().text;
      next();
      n->args.push_back(parse_unary(false));
    } else {
      n = parse_primary();
    }
    n = parse_postfix(std::move(n));
    if (with_filter) n = parse_filter_expr(std::move(n));
    return n;
  }

  ExprPtr literal(Value v, size_t offset) {
    auto l = node(Expr::Kind::Literal, offset);
    l->literal = std::move(v);
    return l;
  }

  ExprPtr parse_primary() {
    Depth d(*this);
    const Token& t = cur();
    switch (t.kind) {
      case Tok::Name: {
        next();
        if (t.text == "true" || t.text == "True") return literal(Value::boolean(true), t.offset);
        if (t.text == "false" || t.text == "False") return literal(Value::boolean(false), t.offset);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.offset);
        auto n = node(Expr::Kind::Name, t.offset);
        n->name = t.text;
        return n;
      }
      case Tok::String: {
        std::string s = t.text;
        next();
        while (cur().kind == Tok::String) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        return literal(Value::string(std::move(s)), t.offset);
      }
      case Tok::Integer: {
        int64_t v = 0;
        const auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
        if (r.ec != std::errc() || r.ptr != t.text.data() + t.text.size())
          fail(t.offset, "integer literal out of range");
        next();
        return literal(Value::integer(v), t.offset);
      }
      case Tok::Float: {
        const double v = std::strtod(t.text.c_str(), nullptr);
        next();
        return literal(Value::number(v), t.offset);
      }
      case Tok::Operator:
        if (t.text == "(") return parse_paren();
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default:
        break;
    }
    unexpected("an expression");
  }

  ExprPtr parse_paren() {
    const size_t offset = cur().offset;
    next();  // (
    if (is_op(")")) {
      next();
      return node(Expr::Kind::TupleLit, offset);
    }
    ExprPtr first = parse_expression(true);
    if (is_op(")")) {
      next();
      return first;
    }
    auto t = node(Expr::Kind::TupleLit, offset);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (is_op(")")) break;
      t->args.push_back(parse_expression(true));
    }
    expect_op(")");
    return t;
  }

  ExprPtr parse_list() {
    auto l = node(Expr::Kind::ListLit, cur().offset);
    next();  // [
    while (!is_op("]")) {
      if (!l->args.empty()) {
        expect_op(",");
        if (is_op("]")) break;
      }
      l->args.push_back(parse_expression(true));
    }
    next();
    return l;
  }

  ExprPtr parse_dict() {
    auto m = node(Expr::Kind::DictLit, cur().offset);
    next();  // {
    while (!is_op("}")) {
      if (!m->args.empty()) {
        expect_op(",");
        if (is_op("}")) break;
      }
      m->args.push_back(parse_expression(true));
      expect_op(":");
      m->args.push_back(parse_expression(true));
    }
    next();
    return m;
  }

  ExprPtr parse_postfix(ExprPtr n) {
    while (true) {
      if (is_op(".")) {
        const size_t offset = cur().offset;
        next();
        if (cur().kind == Tok::Integer) {
          auto it = node(Expr::Kind::Item, offset);
          it->args.push_back(std::move(n));
          it->args.push_back(parse_primary());
          n = std::move(it);
          continue;
        }
        auto a = node(Expr::Kind::Attr, offset);
        a->name = expect_name();
        a->args.push_back(std::move(n));
        n = std::move(a);
      } else if (is_op("[")) {
        n = parse_subscript(std::move(n));
      } else if (is_op("(")) {
        n = parse_call(std::move(n));
      } else {
        return n;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const size_t offset = cur().offset;
    next();  // [
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) {
        expect_op("]");
        auto it = node(Expr::Kind::Item, offset);
        it->args.push_back(std::move(obj));
        it->args.push_back(std::move(start));
        return it;
      }
    }
    next();  // :
    ExprPtr stop, step;
    if (!is_op("]") && !is_op(":")) stop = parse_expression(true);
    if (is_op(":")) {
      next();
      if (!is_op("]")) step = parse_expression(true);
    }
    expect_op("]");
    auto s = node(Expr::Kind::Slice, offset);
    s->args.push_back(std::move(obj));
    s->args.push_back(std::move(start));
    s->args.push_back(std::move(stop));
    s->args.push_back(std::move(step));
    return s;
  }

  // Arguments in parentheses onto `n` (whose args[0] is already the callee / object).
  void parse_call_args(Expr& n) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) fail(cur().offset, "*args and **kwargs are not supported");
      if (cur().kind == Tok::Name && peek().kind == Tok::Operator && peek().text == "=") {
        n.kw_names.push_back(cur().text);
        next();
        next();
        n.args.push_back(parse_expression(true));
      } else {
        if (!n.kw_names.empty()) fail(cur().offset, "positional argument after a keyword argument");
        n.args.push_back(parse_expression(true));
      }
    }
    next();  // )
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = node(Expr::Kind::Call, callee->offset);  // errors point at the callee
    c->args.push_back(std::move(callee));
    parse_call_args(*c);
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr n) {
    while (true) {
      if (is_op("|")) {
        n = parse_filter(std::move(n));
      } else if (is_name("is")) {
        n = parse_test(std::move(n));
      } else if (is_op("(")) {
        n = parse_call(std::move(n));
      } else {
        return n;
      }
    }
  }

  // `| name(args) | name ...` applied to `n` (null: the body of a filter block or block set).
  ExprPtr parse_filter(ExprPtr n, bool start_inline = false) {
    while (is_op("|") || start_inline) {
      Depth d(*this);
      if (!start_inline) next();
      start_inline = false;
      auto f = node(Expr::Kind::Filter, cur().offset);
      f->name = expect_name();
      while (is_op(".")) {
        next();
        f->name += "." + expect_name();
      }
      f->args.push_back(std::move(n));
      if (is_op("(")) parse_call_args(*f);
      n = std::move(f);
    }
    return n;
  }

  ExprPtr parse_test(ExprPtr n) {
    auto t = node(Expr::Kind::Test, cur().offset);
    next();  // is
    if (is_name("not")) {
      next();
      t->negated = true;
    }
    t->name = expect_name();
    while (is_op(".")) {
      next();
      t->name += "." + expect_name();
    }
    t->args.push_back(std::move(n));
    const Token& c = cur();
    const bool arg_start = c.kind == Tok::Name || c.kind == Tok::String || c.kind == Tok::Integer ||
                           c.kind == Tok::Float ||
                           (c.kind == Tok::Operator && (c.text == "[" || c.text == "{"));
    if (is_op("(")) {
      parse_call_args(*t);
    } else if (arg_start && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(c.offset, "tests cannot be chained with 'is'");
      t->args.push_back(parse_postfix(parse_primary()));
    }
    return t;
  }

  const std::string& src_;
  const std::vector<Token>& toks_;
  const Limits& lim_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse(const std::string& source, const std::vector<Token>& tokens, const Limits& limits) {
  return Parser(source, tokens, limits).parse_template();
}

}  // namespace moeflux::jinja
