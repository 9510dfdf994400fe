// Hugging Face tokenizer.json: byte-level BPE as used by Qwen and DeepSeek.
//
// Pipeline (encode), as `tokenizers`' encode(text, add_special_tokens=False):
//  0. invalid UTF-8 in the input is replaced by U+FFFD, one per maximal invalid subsequence
//     (text/utf8.hpp), before anything else;
//  1. added tokens with normalized=false are matched in the raw text (leftmost-longest,
//     honouring each one's lstrip/rstrip/single_word flags);
//  2. every other span goes through the normalizer (NFC, NFD, NFKC, NFKD, Sequence), then
//     added tokens with normalized=true are matched in the normalized span;
//  3. the remaining spans go through the pre-tokenizer (Split regex / string with any
//     behavior and invert, ByteLevel with its GPT-2 regex and add_prefix_space, Digits,
//     Sequence) and are BPE-merged by rank (ignore_merges honoured), with a cache of
//     pre-token -> ids.
// The post_processor (and truncation / padding) are not applied: ids never get a BOS or other
// template tokens added; chat formatting adds those explicitly.
// decode maps tokens back to bytes (ByteLevel decoder: a token whose characters are not all in
// the byte alphabet, such as "<｜begin▁of▁sentence｜>", stands for its own UTF-8) and
// concatenates.
//
// Supported tokenizer.json: model BPE (vocab; merges as "a b" or ["a", "b"]; byte_fallback
// false; dropout null; unk_token null or a vocabulary token, fuse_unk; no subword prefix /
// suffix), the normalizers and pre-tokenizers above, decoder ByteLevel (or a Sequence of them).
// Anything else throws a one-line moeflux::Error naming the file and the unsupported kind.
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
  // The same from the file's text; `path` only names it in errors.
  static Tokenizer from_json_text(std::string_view json_text, const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text -> ids. Invalid UTF-8 in `text` is replaced by U+FFFD per maximal invalid subsequence
  // (documented behaviour), never an error. With parse_special, added tokens in the text are
  // recognised; without, special ones are encoded as plain text (as `tokenizers` with
  // encode_special_tokens=True: non-special added tokens such as <think> are still recognised).
  // Thread-safe. Throws moeflux::Error only if a pre-tokenizer regex exceeds PCRE2's limits.
  std::vector<int> encode(std::string_view text, bool parse_special = true) const;

  // Ids -> bytes (UTF-8 unless the ids split a character: the bytes are returned as they are,
  // where `tokenizers` would substitute U+FFFD). skip_special drops special tokens.
  // Throws moeflux::Error for an id outside the vocabulary (or in a hole of it).
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
// complete character is returned as soon as its last byte arrives. Bytes that can never form a
// character come out as U+FFFD (per maximal invalid subsequence) as soon as that is known, so
// the output is always valid UTF-8. For ids whose bytes are valid UTF-8 the concatenated output
// equals decode(ids).
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
