// What the text commands (run, chat, perplexity) share: the package's tokenizer, end tokens and
// chat format, and the sampling options.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/generate.hpp"
#include "runtime/session.hpp"
#include "sample/sampler.hpp"
#include "text/chat_format.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"

namespace moeflux::tool {

// A package opened for text: the model, its tokenizer (PKG/tokenizer/tokenizer.json) and end
// tokens. Throws moeflux::Error for a package without a tokenizer.
struct TextModel {
  std::string dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int> end_tokens;
  nlohmann::json generation_config;    // tokenizer/generation_config.json, {} if absent
  std::string generation_config_path;  // its path, "" if absent

  // The package of -m `model_arg` (model_dir.hpp: the bundled one without it); verify_resident:
  // check the resident tensors' checksums at open (off with --no-verify).
  static TextModel open(const std::string& model_arg, bool verify_resident = true);

  // The chat format of the package's own Jinja template (chat_template.jinja, chat_template.json
  // or tokenizer_config.json "chat_template", rendered by text/chat_template.hpp with the
  // tokenizer's special tokens); without a template, the hand-written ChatML format if the
  // vocabulary has <|im_start|>. Throws moeflux::Error when there is neither, or when the
  // template does not parse.
  std::unique_ptr<ChatFormat> chat_format() const;
  // For a server rendering requests itself (ChatTemplate::parse(*templates.select(has_tools)),
  // then render(messages, tools, options)): the package's templates, and options carrying the
  // tokenizer's special tokens (tokenizer_config.json). Throw moeflux::Error naming the package
  // for unreadable template files.
  ChatTemplates chat_templates() const;
  ChatRenderOptions chat_render_options() const;

  // Generation options with the package's end tokens and, for a format with thinking, the
  // <think> / </think> ids (think_budget >= 0 needs them: error otherwise).
  GenerateOptions generate_options(int max_tokens, std::vector<std::string> stop, int think_budget,
                                   const ChatFormat* chat) const;
};

// --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n --presence-penalty --seed.
// Precedence: the command line, then the package's generation_config.json (do_sample,
// temperature, top_k, top_p, min_p, repetition_penalty: what the model's authors recommend),
// then SamplerOptions' defaults.
struct SamplerArgs {
  SamplerOptions opts;
  std::optional<uint64_t> seed;  // unset: a random seed (reported, so the run can be repeated)
  CLI::Option *temp = nullptr, *top_k = nullptr, *top_p = nullptr, *min_p = nullptr,
              *repeat = nullptr;

  // Checks the command line's values (before the model is opened): throws moeflux::UsageError.
  void check() const;
  // Validated options with the seed filled in; `tm` supplies generation_config.json (a bad value
  // there is a moeflux::Error naming the file).
  SamplerOptions resolve(const TextModel& tm) const;
};
void add_sampler_options(CLI::App* cmd, SamplerArgs* args);

// The text file `path` (a prompt, a perplexity corpus), whole. Throws moeflux::Error
// "<what>: cannot read <path>..." if it is missing, not a regular file or unreadable.
std::string read_text_file(const std::string& path, const std::string& what);

// Ends text streamed to stdout: a newline unless `at_line_start`, when stdout is a terminal or
// the same file as stderr (`2>&1`), so that what follows on stderr starts a line of its own;
// otherwise stdout holds exactly the text. Flushes stdout.
void end_text_output(bool at_line_start);

// The bytes-per-token model of a generation: one line (no newline) for the summary.
std::string generation_summary(const GenerateResult& r, const Session& s, uint64_t resident_bytes);

}  // namespace moeflux::tool
