#include "text/tokenizer.hpp"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <variant>

#include "core/error.hpp"
#include "text/regex.hpp"
#include "text/utf8.hpp"

namespace moeflux {

namespace {

using nlohmann::json;

// tokenizer.json nests a handful of levels (Sequence inside Sequence at most); anything far
// deeper is hostile and would only exercise recursion.
constexpr int kMaxJsonDepth = 64;
constexpr int kMaxComponentDepth = 8;
// Ids may leave holes, but not so many that a tiny file allocates gigabytes.
constexpr int64_t kMaxIdSlack = 1 << 16;
// Pre-tokens up to this many bytes are remembered (they repeat: words); the cache is emptied
// when it reaches kCacheEntries.
constexpr size_t kMaxCachedPiece = 256;
constexpr size_t kCacheEntries = 1 << 17;

// GPT-2's pre-tokenizer regex: what ByteLevel(use_regex=true) splits with.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// Untrusted text in a one-line message: JSON-quoted (escapes control characters), cut short.
std::string quote(const std::string& s) {
  std::string q = json(s).dump(-1, ' ', /*ensure_ascii=*/true);
  if (q.size() > 80) q = q.substr(0, 76) + "...\"";
  return q;
}

// ---- byte-level alphabet ----------------------------------------------------------------------
// GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves, the other 68 bytes for U+0100.. in byte order. Every byte maps to one code point
// below 324 and back.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_char;  // UTF-8 of the code point for each byte
  std::array<int16_t, 324> char_to_byte;      // -1: the code point stands for no byte
  ByteLevelTable() {
    char_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + extra++);
      utf8::append(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
    MF_ASSERT(extra == 68);
  }
};
const ByteLevelTable& byte_level() {
  static const ByteLevelTable t;
  return t;
}

std::string byte_level_encode(std::string_view s) {
  const ByteLevelTable& t = byte_level();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += t.byte_to_char[static_cast<unsigned char>(c)];
  return out;
}

// The bytes a token string stands for under the ByteLevel decoder: each code point's byte, or,
// if any code point stands for no byte (added tokens such as "<｜begin▁of▁sentence｜>"), the
// token's own UTF-8, as `tokenizers` does.
std::string byte_level_decode(std::string_view s) {
  const ByteLevelTable& t = byte_level();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char32_t cp = utf8::decode(s, i);
    if (cp >= t.char_to_byte.size() || t.char_to_byte[cp] < 0) return std::string(s);
    out += static_cast<char>(t.char_to_byte[cp]);
  }
  return out;
}

// ---- character classes (Rust regex's \s and \w, which `tokenizers` uses for added tokens) ------
bool is_white_space(char32_t c) {
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool is_word_char(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL))
    return true;
  switch (u_charType(u)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

// Start of the character that ends at `end` (s valid UTF-8, end > 0).
size_t prev_char_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// ---- normalizers ------------------------------------------------------------------------------
class Normalizer {
 public:
  void add(const icu::Normalizer2* n) { steps_.push_back(n); }
  bool empty() const { return steps_.empty(); }
  // s is valid UTF-8; so is the result.
  std::string apply(std::string_view s) const {
    std::string cur(s);
    for (const icu::Normalizer2* n : steps_) {
      UErrorCode st = U_ZERO_ERROR;
      const icu::StringPiece sp(cur.data(), static_cast<int32_t>(cur.size()));
      if (n->isNormalizedUTF8(sp, st) && U_SUCCESS(st)) continue;
      st = U_ZERO_ERROR;
      std::string out;
      icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(cur.size()));
      n->normalizeUTF8(0, sp, sink, nullptr, st);
      MF_ASSERT(U_SUCCESS(st));
      cur = std::move(out);
    }
    return cur;
  }

 private:
  std::vector<const icu::Normalizer2*> steps_;
};

// ---- pre-tokenizers ---------------------------------------------------------------------------
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct SplitStep {
  std::shared_ptr<const Regex> re;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
};
struct ByteLevelStep {
  bool add_prefix_space = true;
  bool use_regex = true;
};
using PreStep = std::variant<SplitStep, ByteLevelStep>;

struct Range {
  size_t b, e;
  bool match;
};

// NormalizedString::split of `tokenizers`: the pieces of `s` that `behavior` keeps, given the
// matches of the pattern; empty pieces are dropped.
void split_piece(const std::string& s, const Regex& re, Behavior behavior, bool invert,
                 std::vector<std::string>& out) {
  std::vector<Range> segs;
  size_t prev = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    if (prev != b) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), invert});

  std::vector<Range> keep;
  switch (behavior) {
    case Behavior::Isolated:
      keep = segs;
      break;
    case Behavior::Removed:
      for (const Range& r : segs)
        if (!r.match) keep.push_back(r);
      break;
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (const Range& r : segs) {
        if (r.match == prev_match && !keep.empty()) {
          keep.back().e = r.e;
        } else {
          keep.push_back(r);
        }
        prev_match = r.match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const Range& r : segs) {
        if (r.match && !prev_match && !keep.empty()) {
          keep.back().e = r.e;
        } else {
          keep.push_back(r);
        }
        prev_match = r.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !keep.empty()) {
          keep.back().b = it->b;
        } else {
          keep.push_back(*it);
        }
        prev_match = it->match;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
  }
  for (const Range& r : keep)
    if (r.e > r.b) out.push_back(s.substr(r.b, r.e - r.b));
}

// ---- added tokens -----------------------------------------------------------------------------
struct AddedToken {
  int id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Byte trie over added-token contents; finds the longest content starting at a position
// (leftmost-longest matching, as the Aho-Corasick automaton of `tokenizers`).
class TokenTrie {
 public:
  bool empty() const { return nodes_.size() == 1; }
  // The first token inserted with a given content wins.
  void insert(std::string_view s, int token) {
    if (s.empty()) return;
    int n = 0;
    for (char c : s) {
      int next = -1;
      for (const auto& [byte, child] : nodes_[n].next)
        if (byte == c) next = child;
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        nodes_[n].next.emplace_back(c, next);
        nodes_.emplace_back();
      }
      n = next;
    }
    if (nodes_[n].token < 0) nodes_[n].token = token;
  }
  // {token, length} of the longest content at text[pos], or {-1, 0}.
  std::pair<int, size_t> longest_at(std::string_view text, size_t pos) const {
    std::pair<int, size_t> best{-1, 0};
    int n = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      int next = -1;
      for (const auto& [byte, child] : nodes_[n].next)
        if (byte == text[i]) next = child;
      if (next < 0) break;
      n = next;
      if (nodes_[n].token >= 0) best = {nodes_[n].token, i + 1 - pos};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<char, int>> next;
    int token = -1;  // index into the added tokens, -1: no content ends here
  };
  std::vector<Node> nodes_{1};
};

struct Span {
  size_t b, e;
  int id;  // -1: text to encode
};

// ---- BPE --------------------------------------------------------------------------------------
struct MergeEntry {
  int rank;
  int new_id;
};
inline uint64_t pair_key(int a, int b) {
  return (uint64_t(uint32_t(a)) << 32) | uint64_t(uint32_t(b));
}

const json* find_key(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

}  // namespace

struct Tokenizer::Impl {
  std::string path;

  // Vocabulary: the model's, then added tokens (which take precedence for id -> text).
  StringMap<int> vocab;
  std::vector<std::string> id_text;  // by id; empty with kind None for holes
  enum Kind : uint8_t { None, Model, Added, Special };
  std::vector<Kind> id_kind;

  std::unordered_map<uint64_t, MergeEntry> merges;
  bool ignore_merges = false;
  int unk_id = -1;
  bool fuse_unk = false;

  std::vector<AddedToken> added;
  StringMap<int> added_by_content;
  // What decode uses for added tokens with normalized=true whose content the normalizer
  // changes: the normalized content (`tokenizers` >= 0.23 decodes those so).
  std::unordered_map<int, std::string> decode_form;
  TokenTrie raw_trie, normalized_trie;

  Normalizer normalizer;
  std::vector<PreStep> pre_steps;
  std::shared_ptr<const Regex> gpt2_regex;

  mutable std::mutex cache_mu;
  mutable StringMap<std::vector<int>> cache;

  [[noreturn]] void bad(const std::string& msg) const { fail(path + ": " + msg); }

  void load(const json& j);
  void load_model(const json& m);
  void load_normalizer(const json& n, int depth);
  void load_pre_tokenizer(const json& p, int depth);
  void load_decoder(const json& d, int depth);
  void load_added_tokens(const json& a);

  const std::string& decode_text(int id) const {
    if (!decode_form.empty())
      if (auto it = decode_form.find(id); it != decode_form.end()) return it->second;
    return id_text[size_t(id)];
  }
  bool valid_id(int id) const {
    return id >= 0 && size_t(id) < id_kind.size() && id_kind[size_t(id)] != None;
  }
  void check_id(int id) const {
    if (!valid_id(id))
      fail(path + ": token id " + std::to_string(id) + " is not in the vocabulary (size " +
           std::to_string(id_kind.size()) + ")");
  }

  void split_added(std::string_view s, const TokenTrie& trie, bool parse_special,
                   std::vector<Span>& out) const;
  void encode_text(std::string_view s, std::vector<int>& ids) const;
  void bpe(const std::string& piece, std::vector<int>& ids) const;
  void bpe_uncached(std::string_view piece, std::vector<int>& ids) const;
};

// ---- loading ----------------------------------------------------------------------------------

namespace {

bool get_bool(const json& obj, const char* key, bool dflt, const std::string& ctx,
              const std::string& path) {
  const json* v = find_key(obj, key);
  if (!v || v->is_null()) return dflt;
  if (!v->is_boolean()) fail(path + ": " + ctx + "." + key + " is not a boolean");
  return v->get<bool>();
}

std::string get_type(const json& obj, const std::string& ctx, const std::string& path) {
  if (!obj.is_object()) fail(path + ": " + ctx + " is not an object");
  const json* t = find_key(obj, "type");
  if (!t || !t->is_string()) fail(path + ": " + ctx + " has no \"type\" string");
  return t->get<std::string>();
}

int get_id(const json& v, const std::string& ctx, const std::string& path) {
  if (!v.is_number_integer()) fail(path + ": " + ctx + " is not an integer id");
  const int64_t id = v.is_number_unsigned()
                         ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), 1ull << 40))
                         : v.get<int64_t>();
  if (id < 0 || id > 0x7fffffff)
    fail(path + ": " + ctx + " id " + std::to_string(id) + " is out of range");
  return static_cast<int>(id);
}

}  // namespace

void Tokenizer::Impl::load(const json& j) {
  if (!j.is_object()) bad("not a tokenizer.json (top level is not an object)");
  const json* model = find_key(j, "model");
  if (!model) bad("no \"model\"");
  load_model(*model);

  if (const json* n = find_key(j, "normalizer"); n && !n->is_null()) load_normalizer(*n, 0);
  if (const json* p = find_key(j, "pre_tokenizer"); p && !p->is_null()) load_pre_tokenizer(*p, 0);
  const json* d = find_key(j, "decoder");
  if (!d || d->is_null()) bad("unsupported decoder null (supported: ByteLevel)");
  load_decoder(*d, 0);
  if (const json* a = find_key(j, "added_tokens"); a && !a->is_null()) load_added_tokens(*a);
  // post_processor, truncation and padding only matter to encode(add_special_tokens=True) and
  // batching, which this tokenizer does not do.
}

void Tokenizer::Impl::load_model(const json& m) {
  if (!m.is_object()) bad("\"model\" is not an object");
  const json* t = find_key(m, "type");
  if (t && !t->is_string()) bad("model.type is not a string");
  const std::string type = t ? t->get<std::string>() : "BPE";
  if (type != "BPE") bad("unsupported model type " + quote(type) + " (supported: BPE)");
  if (get_bool(m, "byte_fallback", false, "model", path))
    bad("unsupported model.byte_fallback true");
  if (const json* d = find_key(m, "dropout"); d && !d->is_null()) {
    if (!d->is_number() || d->get<double>() != 0.0)
      bad("unsupported model.dropout " + d->dump() + " (supported: null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = find_key(m, key);
    if (v && !v->is_null() && !(v->is_string() && v->get<std::string>().empty()))
      bad(std::string("unsupported model.") + key + " " + quote(v->dump()) +
          " (supported: null, \"\")");
  }
  ignore_merges = get_bool(m, "ignore_merges", false, "model", path);
  fuse_unk = get_bool(m, "fuse_unk", false, "model", path);

  const json* v = find_key(m, "vocab");
  if (!v || !v->is_object()) bad("model.vocab is missing or not an object");
  vocab.reserve(v->size());
  int64_t max_id = -1;
  for (auto it = v->begin(); it != v->end(); ++it) {
    // (The context string is built only for a bad entry: this loop runs 150k times on Qwen.)
    const int id = it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                           it.value().get<int64_t>() <= 0x7fffffff
                       ? static_cast<int>(it.value().get<int64_t>())
                       : get_id(it.value(), "model.vocab[" + quote(it.key()) + "]", path);
    vocab.emplace(it.key(), id);
    max_id = std::max<int64_t>(max_id, id);
  }
  if (max_id >= int64_t(vocab.size()) + kMaxIdSlack)
    bad("model.vocab id " + std::to_string(max_id) + " leaves too many unused ids for " +
        std::to_string(vocab.size()) + " entries");
  id_text.assign(size_t(max_id + 1), std::string());
  id_kind.assign(size_t(max_id + 1), None);
  for (const auto& [text, id] : vocab) {
    // Two strings with one id: the first in the file's order is not knowable from the hash
    // map; keep the lexicographically smallest so the choice is deterministic.
    if (id_kind[size_t(id)] == None || text < id_text[size_t(id)]) id_text[size_t(id)] = text;
    id_kind[size_t(id)] = Model;
  }

  if (const json* u = find_key(m, "unk_token"); u && !u->is_null()) {
    if (!u->is_string()) bad("model.unk_token is not a string");
    auto it = vocab.find(u->get<std::string>());
    if (it == vocab.end())
      bad("model.unk_token " + quote(u->get<std::string>()) + " is not in the vocabulary");
    unk_id = it->second;
  }

  const json* ms = find_key(m, "merges");
  if (!ms || !ms->is_array()) bad("model.merges is missing or not an array");
  merges.reserve(ms->size());
  int rank = 0;
  std::string ab;  // a + b, reused
  for (const json& e : *ms) {
    std::string_view a, b;
    auto where = [&] { return "model.merges[" + std::to_string(rank) + "]"; };
    if (e.is_string()) {
      // Legacy form "a b": exactly one space.
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        bad(where() + " " + quote(s) + " is not two tokens separated by one space");
      a = std::string_view(s).substr(0, sp);
      b = std::string_view(s).substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get_ref<const std::string&>();
      b = e[1].get_ref<const std::string&>();
    } else {
      bad(where() + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    ab.assign(a);
    ab.append(b);
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(ab);
    if (ia == vocab.end() || ib == vocab.end() || iab == vocab.end())
      bad(where() + " " + quote(std::string(a) + " " + std::string(b)) +
          " uses or makes a token that is not in the vocabulary");
    // A repeated pair keeps its last rank, as `tokenizers` (a map filled in file order).
    merges[pair_key(ia->second, ib->second)] = {rank, iab->second};
    ++rank;
  }
}

void Tokenizer::Impl::load_normalizer(const json& n, int depth) {
  if (depth > kMaxComponentDepth) bad("normalizer Sequences nest too deeply");
  const std::string type = get_type(n, "normalizer", path);
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* icu_n = nullptr;
  if (type == "NFC") {
    icu_n = icu::Normalizer2::getNFCInstance(st);
  } else if (type == "NFD") {
    icu_n = icu::Normalizer2::getNFDInstance(st);
  } else if (type == "NFKC") {
    icu_n = icu::Normalizer2::getNFKCInstance(st);
  } else if (type == "NFKD") {
    icu_n = icu::Normalizer2::getNFKDInstance(st);
  } else if (type == "Sequence") {
    const json* list = find_key(n, "normalizers");
    if (!list || !list->is_array()) bad("normalizer Sequence has no \"normalizers\" array");
    for (const json& x : *list) load_normalizer(x, depth + 1);
    return;
  } else {
    bad("unsupported normalizer type " + quote(type) +
        " (supported: NFC, NFD, NFKC, NFKD, Sequence)");
  }
  if (U_FAILURE(st) || !icu_n) bad("ICU has no " + type + " normalizer: " + u_errorName(st));
  normalizer.add(icu_n);
}

void Tokenizer::Impl::load_pre_tokenizer(const json& p, int depth) {
  if (depth > kMaxComponentDepth) bad("pre_tokenizer Sequences nest too deeply");
  const std::string type = get_type(p, "pre_tokenizer", path);
  if (type == "Sequence") {
    const json* list = find_key(p, "pretokenizers");
    if (!list || !list->is_array()) bad("pre_tokenizer Sequence has no \"pretokenizers\" array");
    for (const json& x : *list) load_pre_tokenizer(x, depth + 1);
  } else if (type == "ByteLevel") {
    ByteLevelStep s;
    s.add_prefix_space = get_bool(p, "add_prefix_space", true, "pre_tokenizer ByteLevel", path);
    s.use_regex = get_bool(p, "use_regex", true, "pre_tokenizer ByteLevel", path);
    if (s.use_regex && !gpt2_regex)
      gpt2_regex = std::make_shared<const Regex>(kGpt2Pattern, false, path + ": GPT-2 regex");
    pre_steps.emplace_back(s);
  } else if (type == "Split") {
    const json* pat = find_key(p, "pattern");
    if (!pat || !pat->is_object() || pat->size() != 1)
      bad("pre_tokenizer Split needs \"pattern\": {\"Regex\": ...} or {\"String\": ...}");
    const json* rx = find_key(*pat, "Regex");
    const json* str = find_key(*pat, "String");
    const json* text = rx ? rx : str;
    if (!text || !text->is_string())
      bad("pre_tokenizer Split pattern is neither {\"Regex\": string} nor {\"String\": string}");
    SplitStep s;
    const std::string& pattern = text->get_ref<const std::string&>();
    s.re = std::make_shared<const Regex>(pattern, /*literal=*/rx == nullptr,
                                         path + ": pre_tokenizer Split pattern " + quote(pattern));
    const json* beh = find_key(p, "behavior");
    if (!beh || !beh->is_string()) bad("pre_tokenizer Split has no \"behavior\" string");
    const std::string& b = beh->get_ref<const std::string&>();
    if (b == "Removed") {
      s.behavior = Behavior::Removed;
    } else if (b == "Isolated") {
      s.behavior = Behavior::Isolated;
    } else if (b == "MergedWithPrevious") {
      s.behavior = Behavior::MergedWithPrevious;
    } else if (b == "MergedWithNext") {
      s.behavior = Behavior::MergedWithNext;
    } else if (b == "Contiguous") {
      s.behavior = Behavior::Contiguous;
    } else {
      bad("unsupported pre_tokenizer Split behavior " + quote(b));
    }
    s.invert = get_bool(p, "invert", false, "pre_tokenizer Split", path);
    pre_steps.emplace_back(std::move(s));
  } else if (type == "Digits") {
    // Each numeric character (Rust's char::is_numeric: Nd, Nl, No) is a match; Isolated keeps
    // each alone, Contiguous keeps runs together.
    SplitStep s;
    s.re = std::make_shared<const Regex>(R"(\p{N})", false, path + ": Digits");
    s.behavior = get_bool(p, "individual_digits", false, "pre_tokenizer Digits", path)
                     ? Behavior::Isolated
                     : Behavior::Contiguous;
    pre_steps.emplace_back(std::move(s));
  } else {
    bad("unsupported pre_tokenizer type " + quote(type) +
        " (supported: ByteLevel, Split, Digits, Sequence)");
  }
}

void Tokenizer::Impl::load_decoder(const json& d, int depth) {
  if (depth > kMaxComponentDepth) bad("decoder Sequences nest too deeply");
  const std::string type = get_type(d, "decoder", path);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json* list = find_key(d, "decoders");
    if (!list || !list->is_array() || list->empty())
      bad("decoder Sequence has no (non-empty) \"decoders\" array");
    for (const json& x : *list) load_decoder(x, depth + 1);
    return;
  }
  bad("unsupported decoder type " + quote(type) + " (supported: ByteLevel, Sequence of ByteLevel)");
}

void Tokenizer::Impl::load_added_tokens(const json& a) {
  if (!a.is_array()) bad("added_tokens is not an array");
  int64_t max_id = int64_t(id_kind.size()) - 1;
  for (const json& t : a) {
    const std::string ctx = "added_tokens[" + std::to_string(added.size()) + "]";
    if (!t.is_object()) bad(ctx + " is not an object");
    AddedToken tok;
    const json* c = find_key(t, "content");
    if (!c || !c->is_string()) bad(ctx + " has no \"content\" string");
    tok.content = c->get<std::string>();
    const json* id = find_key(t, "id");
    if (!id) bad(ctx + " has no \"id\"");
    tok.id = get_id(*id, ctx + ".id", path);
    tok.single_word = get_bool(t, "single_word", false, ctx, path);
    tok.lstrip = get_bool(t, "lstrip", false, ctx, path);
    tok.rstrip = get_bool(t, "rstrip", false, ctx, path);
    tok.special = get_bool(t, "special", false, ctx, path);
    tok.normalized = get_bool(t, "normalized", !tok.special, ctx, path);
    // `tokenizers` ignores empty contents.
    if (tok.content.empty()) continue;
    max_id = std::max<int64_t>(max_id, tok.id);
    added.push_back(std::move(tok));
  }
  if (max_id >= int64_t(vocab.size() + added.size()) + kMaxIdSlack)
    bad("added_tokens id " + std::to_string(max_id) + " leaves too many unused ids");
  id_text.resize(size_t(max_id + 1));
  id_kind.resize(size_t(max_id + 1), None);
  for (const AddedToken& t : added) {
    id_text[size_t(t.id)] = t.content;
    id_kind[size_t(t.id)] = t.special ? Special : Added;
    added_by_content.emplace(t.content, t.id);
    decode_form.erase(t.id);  // a later token with the same id replaces an earlier one
    if (t.normalized && !normalizer.empty()) {
      std::string n = normalizer.apply(t.content);
      if (n != t.content) decode_form[t.id] = std::move(n);
    }
  }
  // Matching order of `tokenizers`: special tokens, then the others, each in file order; the
  // first of equal contents wins.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < added.size(); ++i) {
      const AddedToken& t = added[i];
      if (t.special != (pass == 0)) continue;
      if (t.normalized) {
        normalized_trie.insert(normalizer.apply(t.content), int(i));
      } else {
        raw_trie.insert(t.content, int(i));
      }
    }
  }
}

// ---- encoding ---------------------------------------------------------------------------------

// AddedVocabulary::find_matches of `tokenizers`: leftmost-longest, non-overlapping matches of
// the added tokens in `s`, filtered by their flags; lstrip/rstrip widen a match over the
// whitespace beside it. `out` covers `s` with text spans (id -1) and token spans.
void Tokenizer::Impl::split_added(std::string_view s, const TokenTrie& trie, bool parse_special,
                                  std::vector<Span>& out) const {
  size_t start_offset = 0;
  if (!trie.empty()) {
    for (size_t pos = 0; pos < s.size();) {
      const auto [index, len] = trie.longest_at(s, pos);
      if (index < 0) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = pos + len;
      pos = stop;  // the next search starts after the raw match, whatever the flags do
      const AddedToken& t = added[size_t(index)];
      if (!parse_special && t.special) continue;
      if (t.single_word) {
        // Rejected when a word character (\w) touches either end of the match.
        bool word_before = false, word_after = false;
        if (start > 0) {
          size_t q = prev_char_start(s, start);
          word_before = is_word_char(utf8::decode(s, q));
        }
        if (stop < s.size()) {
          size_t q = stop;
          word_after = is_word_char(utf8::decode(s, q));
        }
        if (word_before || word_after) continue;
      }
      if (t.lstrip) {
        size_t b = start;
        while (b > 0) {
          size_t q = prev_char_start(s, b);
          const size_t c = q;
          if (!is_white_space(utf8::decode(s, q))) break;
          b = c;
        }
        start = std::max(b, start_offset);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          size_t q = stop;
          if (!is_white_space(utf8::decode(s, q))) break;
          stop = q;
        }
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, t.id});
      start_offset = stop;
    }
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
}

void Tokenizer::Impl::encode_text(std::string_view s, std::vector<int>& ids) const {
  std::vector<std::string> cur{std::string(s)}, next;
  for (const PreStep& step : pre_steps) {
    next.clear();
    if (const auto* sp = std::get_if<SplitStep>(&step)) {
      for (const std::string& piece : cur)
        split_piece(piece, *sp->re, sp->behavior, sp->invert, next);
    } else {
      const auto& bl = std::get<ByteLevelStep>(step);
      std::vector<std::string> parts;
      for (std::string& piece : cur) {
        if (bl.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
        parts.clear();
        if (bl.use_regex) {
          split_piece(piece, *gpt2_regex, Behavior::Isolated, false, parts);
        } else {
          parts.push_back(std::move(piece));
        }
        for (const std::string& p : parts) next.push_back(byte_level_encode(p));
      }
    }
    cur.swap(next);
  }
  for (const std::string& piece : cur) bpe(piece, ids);
}

void Tokenizer::Impl::bpe(const std::string& piece, std::vector<int>& ids) const {
  if (ignore_merges) {
    if (auto it = vocab.find(piece); it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (piece.size() > kMaxCachedPiece) return bpe_uncached(piece, ids);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (auto it = cache.find(piece); it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = ids.size();
  bpe_uncached(piece, ids);
  std::vector<int> result(ids.begin() + std::ptrdiff_t(before), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() >= kCacheEntries) cache.clear();
  cache.emplace(piece, std::move(result));
}

// BPE::merge_word + Word::merge_all of `tokenizers`: one symbol per character (characters
// missing from the vocabulary become the unk token, or are dropped without one), then the
// lowest-ranked adjacent pair is merged, leftmost first, until no pair has a merge.
void Tokenizer::Impl::bpe_uncached(std::string_view piece, std::vector<int>& ids) const {
  struct Sym {
    int id;
    int prev, next;  // neighbours in the list, -1 at the ends
    size_t len;      // bytes covered; 0 marks a symbol merged into its left neighbour
  };
  std::vector<Sym> syms;
  syms.reserve(piece.size());
  auto add = [&](int id, size_t len) {
    const int n = static_cast<int>(syms.size());
    syms.push_back({id, n - 1, -1, len});
    if (n > 0) syms[size_t(n - 1)].next = n;
  };
  size_t unk_len = 0;  // bytes of a pending unk symbol (0: none)
  for (size_t i = 0; i < piece.size();) {
    const size_t len = utf8::scan(piece, i).len;
    auto it = vocab.find(piece.substr(i, len));
    if (it != vocab.end()) {
      if (unk_len) add(unk_id, unk_len), unk_len = 0;
      add(it->second, len);
    } else if (unk_id >= 0) {
      if (unk_len && !fuse_unk) add(unk_id, unk_len), unk_len = 0;
      unk_len += len;
    }
    i += len;
  }
  if (unk_len) add(unk_id, unk_len);

  struct Cand {
    int rank, pos, new_id;
    bool operator<(const Cand& o) const {  // priority_queue pops the largest: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Cand> queue;
  auto lookup = [&](int a, int b) -> const MergeEntry* {
    auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i)
    if (const MergeEntry* m = lookup(syms[i].id, syms[i + 1].id))
      queue.push({m->rank, int(i), m->new_id});
  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    Sym& cur = syms[size_t(top.pos)];
    if (cur.len == 0 || cur.next < 0) continue;
    const int right_pos = cur.next;
    Sym& right = syms[size_t(right_pos)];
    // A stale entry: the pair at this position changed since it was queued.
    const MergeEntry* m = lookup(cur.id, right.id);
    if (!m || m->new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    right.len = 0;
    if (right.next >= 0) syms[size_t(right.next)].prev = top.pos;
    if (cur.prev >= 0)
      if (const MergeEntry* pm = lookup(syms[size_t(cur.prev)].id, cur.id))
        queue.push({pm->rank, cur.prev, pm->new_id});
    if (cur.next >= 0)
      if (const MergeEntry* nm = lookup(cur.id, syms[size_t(cur.next)].id))
        queue.push({nm->rank, top.pos, nm->new_id});
  }
  for (const Sym& s : syms)
    if (s.len != 0) ids.push_back(s.id);
}

// ---- public API -------------------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno(path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_errno(path);
  return from_json_text(ss.str(), path);
}

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& path) {
  Tokenizer t;
  t.impl_->path = path;
  // Nesting is checked by a scan of the text (strings skipped) rather than a parser callback,
  // which would cost a third of the parse on a 150k-entry vocabulary.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail(path + ": JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  json j;
  try {
    j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/true,
                    /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    fail(path + ": invalid JSON: " + msg);
  }
  try {
    t.impl_->load(j);
  } catch (const json::exception& e) {
    // A value of an unexpected JSON type that the checks above did not name.
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    fail(path + ": " + msg);
  }
  return t;
}

std::vector<int> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const Impl& m = *impl_;
  const std::string s = utf8::sanitize(text);
  std::vector<int> ids;
  std::vector<Span> raw, normalized;
  m.split_added(s, m.raw_trie, parse_special, raw);
  for (const Span& r : raw) {
    if (r.id >= 0) {
      ids.push_back(r.id);
      continue;
    }
    const std::string n = m.normalizer.apply(std::string_view(s).substr(r.b, r.e - r.b));
    normalized.clear();
    m.split_added(n, m.normalized_trie, parse_special, normalized);
    for (const Span& p : normalized) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else if (p.e > p.b) {
        m.encode_text(std::string_view(n).substr(p.b, p.e - p.b), ids);
      }
    }
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int> ids, bool skip_special) const {
  std::string out;
  for (int id : ids) {
    impl_->check_id(id);
    if (skip_special && impl_->id_kind[size_t(id)] == Impl::Special) continue;
    out += byte_level_decode(impl_->decode_text(id));
  }
  return out;
}

std::string Tokenizer::token_bytes(int id) const {
  impl_->check_id(id);
  return byte_level_decode(impl_->decode_text(id));
}

const std::string& Tokenizer::token_text(int id) const {
  impl_->check_id(id);
  return impl_->id_text[size_t(id)];
}

int Tokenizer::vocab_size() const {
  return static_cast<int>(impl_->id_kind.size());
}

std::optional<int> Tokenizer::token_id(std::string_view token_text) const {
  if (auto it = impl_->added_by_content.find(token_text); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->vocab.find(token_text); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int id) const {
  return impl_->valid_id(id) && impl_->id_kind[size_t(id)] == Impl::Special;
}

// ---- streaming detokenizer --------------------------------------------------------------------

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

std::string StreamingDetokenizer::push(int id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  // Emit every complete character; an invalid subpart becomes U+FFFD as soon as it is known to
  // be invalid; a sequence cut by the end of the buffer waits for more bytes.
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const utf8::Scan sc = utf8::scan(pending_, i);
    if (sc.truncated) break;
    if (sc.valid) {
      out.append(pending_, i, sc.len);
    } else {
      out.append(utf8::kReplacement);
    }
    i += sc.len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out = pending_.empty() ? std::string() : std::string(utf8::kReplacement);
  pending_.clear();
  return out;
}

}  // namespace moeflux
