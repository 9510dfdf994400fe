#include "text/regex.hpp"

#include <algorithm>
#include <cstdint>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.hpp"
#include "text/utf8.hpp"

namespace moeflux {

namespace {

// Bounds for hostile patterns (a tokenizer.json is untrusted input): backtracking steps per
// search, a million (the patterns of real tokenizers take tens per match) and more for long
// subjects (a linear pattern on a long run of spaces backtracks over the run); PCRE2's default
// heap; up to 8 MiB of JIT stack per thread.
constexpr uint32_t kMatchLimit = 1'000'000;
constexpr uint64_t kMatchStepsPerByte = 64;
constexpr PCRE2_SIZE kHeapLimitKiB = 20'000;
constexpr PCRE2_SIZE kJitStackMax = 8u << 20;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Oniguruma -> PCRE2: \uHHHH becomes \x{HHHH}; \s and \S become \p{White_Space} and
// \P{White_Space} (Oniguruma's \s is that property: it has U+0085 and lacks U+180E, unlike
// PCRE2's \s). Other escapes are copied as pairs (so "\\s" stays an escaped backslash and an
// 's'); \Q...\E is copied verbatim.
std::string translate(std::string_view p) {
  std::string out;
  out.reserve(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '\\' || i + 1 >= p.size()) {
      out += p[i];
      continue;
    }
    const char c = p[i + 1];
    if (c == 'u' && i + 5 < p.size() && is_hex(p[i + 2]) && is_hex(p[i + 3]) && is_hex(p[i + 4]) &&
        is_hex(p[i + 5])) {
      out += "\\x{";
      out.append(p.substr(i + 2, 4));
      out += '}';
      i += 5;
    } else if (c == 's' || c == 'S') {
      out += c == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
      ++i;
    } else if (c == 'Q') {
      const size_t end = p.find("\\E", i + 2);
      const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
      out.append(p.substr(i, stop - i));
      i = stop - 1;
    } else {
      out += p[i];
      out += c;
      ++i;
    }
  }
  return out;
}

// Per-thread PCRE2 match state: one match-data block (group 0 only, enough for any pattern),
// a match context with the limits above and a JIT stack.
struct ThreadState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  ThreadState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(64 << 10, kJitStackMax, nullptr);
    MF_ASSERT(md && mc);
    pcre2_set_heap_limit(mc, kHeapLimitKiB);
    if (js) pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~ThreadState() {
    if (js) pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
  ThreadState(const ThreadState&) = delete;
  ThreadState& operator=(const ThreadState&) = delete;
};

ThreadState& thread_state() {
  thread_local ThreadState st;
  return st;
}

}  // namespace

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  std::string what;
  ~Impl() {
    if (code) pcre2_code_free(code);
  }
};

Regex::Regex(std::string_view pattern, bool literal, const std::string& what)
    : impl_(std::make_unique<Impl>()) {
  impl_->what = what;
  const std::string p = literal ? std::string(pattern) : translate(pattern);
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C;
  if (literal) options = PCRE2_UTF | PCRE2_LITERAL;
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options, &err, &off, nullptr);
  if (!impl_->code) {
    fail(what + ": invalid regex: " + pcre2_message(err) + " at offset " + std::to_string(off));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> out;
  ThreadState& st = thread_state();
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const size_t n = subject.size();
  // The subject is checked once here; the searches below skip PCRE2's own check, which would
  // rescan the rest of the subject at every call (quadratic on long pieces).
  MF_ASSERT(utf8::is_valid(subject));
  pcre2_set_match_limit(st.mc,
                        static_cast<uint32_t>(std::min<uint64_t>(
                            UINT32_MAX, std::max<uint64_t>(kMatchLimit, n * kMatchStepsPerByte))));
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= n) {
    uint32_t opts = PCRE2_NO_UTF_CHECK;
    int rc = pcre2_match(impl_->code, s, n, last_end, opts, st.md, st.mc);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Out of JIT stack: the interpreter keeps its backtracking state on the heap instead.
      rc = pcre2_match(impl_->code, s, n, last_end, opts | PCRE2_NO_JIT, st.md, st.mc);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail(impl_->what + ": regex gave up on the input: " + pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    const size_t b = ov[0], e = ov[1];
    // Matches lie in [last_end, n] in order (\K in lookarounds, the one way around this, is off
    // by default in PCRE2 >= 10.38); checked, as the pattern is untrusted.
    if (b < last_end || e < b || e > n) fail(impl_->what + ": regex reported a match out of order");
    if (b == e && have_last && last_match_end == last_end) {
      // Oniguruma's find_iter: no empty match right after the previous match; move on by one
      // character (or past the end).
      if (last_end >= n) break;
      last_end += utf8::scan(subject, last_end).len;
      continue;
    }
    out.emplace_back(b, e);
    last_end = e;
    last_match_end = e;
    have_last = true;
  }
  return out;
}

}  // namespace moeflux
