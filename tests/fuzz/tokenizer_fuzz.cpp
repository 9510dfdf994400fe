// libFuzzer target: the tokenizer on arbitrary text, and on arbitrary tokenizer.json files.
//
// Input starting with 'J': the rest is a tokenizer.json. It must either load, after which
// encoding a few fixed strings and the file's own bytes gives ids inside the vocabulary that
// decode and stream cleanly, or throw moeflux::Error with one line starting with the file name.
// Any other input: text, encoded (with and without special tokens) by the three fixture
// tokenizers (tests/fixtures/tokenizers). Every id must be in the vocabulary; the streaming
// detokenizer must give valid UTF-8 equal to the sanitized decode; for the qwen2 fixture (NFC,
// no whitespace-stripping tokens) encoding the decoded text must give the same ids again.
// Anything else (crash, sanitizer report, other exception, assertion) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "text/tokenizer.hpp"
#include "text/utf8.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "tokenizer_fuzz: %s\n", what.c_str());
  std::abort();
}

const std::vector<moeflux::Tokenizer>& fixtures() {
  static const std::vector<moeflux::Tokenizer> t = [] {
    std::vector<moeflux::Tokenizer> v;
    for (const char* name : {"qwen2", "deepseek", "gpt2"})
      v.push_back(moeflux::Tokenizer::from_file(std::string(MOEFLUX_FIXTURE_DIR) + "/tokenizers/" +
                                                name + ".json"));
    return v;
  }();
  return t;
}

// Ids in range; decode and the streaming detokenizer agree.
void check_ids(const moeflux::Tokenizer& tok, const std::vector<int>& ids) {
  for (int id : ids)
    if (id < 0 || id >= tok.vocab_size()) finding("id outside the vocabulary");
  const std::string bytes = tok.decode(ids);
  moeflux::StreamingDetokenizer st(tok);
  std::string streamed;
  for (int id : ids) {
    const std::string piece = st.push(id);
    if (!moeflux::utf8::is_valid(piece)) finding("streaming emitted invalid UTF-8");
    streamed += piece;
  }
  streamed += st.flush();
  if (streamed != moeflux::utf8::sanitize(bytes)) finding("streaming differs from decode");
}

void fuzz_text(std::string_view text) {
  const auto& toks = fixtures();
  for (size_t t = 0; t < toks.size(); ++t) {
    for (bool special : {true, false}) {
      const std::vector<int> ids = toks[t].encode(text, special);
      check_ids(toks[t], ids);
      if (t == 0 && toks[t].encode(toks[t].decode(ids), special) != ids)
        finding("qwen2: encode(decode(encode(x))) != encode(x)");
    }
  }
}

void fuzz_json(std::string_view json_text) {
  const std::string path = "fuzz/tokenizer.json";
  try {
    const moeflux::Tokenizer tok = moeflux::Tokenizer::from_json_text(json_text, path);
    if (tok.vocab_size() < 0) finding("negative vocab_size");
    for (std::string_view s :
         {std::string_view("Hello, world! 123  \n\t x"),
          std::string_view("\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80 e\xCC\x81"),
          json_text.substr(0, 256)}) {
      for (bool special : {true, false}) check_ids(tok, tok.encode(s, special));
    }
  } catch (const moeflux::Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(path + ": ", 0) != 0)
      finding("error message does not start with the file name: " + msg);
    if (msg.find('\n') != std::string::npos) finding("multi-line error message");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  if (!in.empty() && in[0] == 'J') {
    fuzz_json(in.substr(1));
  } else {
    fuzz_text(in);
  }
  return 0;
}
