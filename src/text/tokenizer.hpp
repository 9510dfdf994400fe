// Hugging Face tokenizer.json: byte-level BPE as used by Qwen and DeepSeek.
//
// Pipeline (encode): added/special tokens are matched in the raw text first (longest match,
// honouring each added token's lstrip/rstrip/single_word/normalized flags); every other span
// goes through the normalizer (NFC, ...), the pre-tokenizer (the file's Split regex, then the
// byte-level mapping of bytes to printable code points), and BPE merges by rank.
// decode maps tokens back to bytes (byte-level decoder) and concatenates.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moeflux {

class Tokenizer {
 public:
  // Loads and validates a tokenizer.json. Throws moeflux::Error naming the file for anything
  // unsupported (model type other than BPE, unknown normalizer / pre-tokenizer / decoder kinds).
  static Tokenizer from_file(const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text -> ids. Invalid UTF-8 in `text` is replaced by U+FFFD per maximal invalid subsequence
  // (documented behaviour), never an error. With parse_special, added tokens in the text are
  // recognised; without, they are encoded as plain text.
  std::vector<int> encode(std::string_view text, bool parse_special = true) const;

  // Ids -> bytes (UTF-8 unless the ids split a character). skip_special drops special tokens.
  // Throws moeflux::Error for an id outside the vocabulary.
  std::string decode(std::span<const int> ids, bool skip_special = false) const;

  // The raw bytes a token stands for (after byte-level decoding).
  std::string token_bytes(int id) const;
  // The token's string as written in the vocabulary ("Ġthe", "<|im_end|>").
  const std::string& token_text(int id) const;

  int vocab_size() const;  // highest id + 1, added tokens included
  std::optional<int> token_id(std::string_view token_text) const;
  bool is_special(int id) const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text without ever emitting half a UTF-8 sequence: each
// complete character is returned as soon as its last byte arrives.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tok, bool skip_special = false);
  // The newly completed text after appending `id` (possibly empty).
  std::string push(int id);
  // Whatever is left (an incomplete sequence comes out as U+FFFD).
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
};

}  // namespace moeflux
