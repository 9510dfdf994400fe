#include "text_model.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "commands.hpp"
#include "core/error.hpp"
#include "model_dir.hpp"

namespace fs = std::filesystem;

namespace moeflux::tool {

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path + ": invalid JSON (" + e.what() + ")");
  }
}

// The path of a package's tokenizer file `name` if the manifest lists it, else "".
std::string tokenizer_file(const Package& pkg, const std::string& name) {
  for (const auto& f : pkg.manifest().tokenizer_files)
    if (fs::path(f).filename() == name) return (fs::path(pkg.dir()) / f).string();
  return "";
}

}  // namespace

TextModel TextModel::open(const std::string& model_arg, bool verify_resident) {
  TextModel t;
  t.dir = resolve_model_dir(model_arg);
  t.model = Model::open(t.dir, {.verify_resident = verify_resident});
  const Package& pkg = t.model->package();
  const std::string tok = tokenizer_file(pkg, "tokenizer.json");
  if (tok.empty())
    fail(t.dir + ": the package has no tokenizer (tokenizer/tokenizer.json); convert it from a " +
         "checkpoint directory that holds tokenizer.json");
  t.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(tok));
  t.end_tokens = end_token_ids(pkg, *t.tokenizer);
  t.generation_config_path = tokenizer_file(pkg, "generation_config.json");
  if (!t.generation_config_path.empty()) t.generation_config = read_json(t.generation_config_path);
  return t;
}

ChatTemplates TextModel::chat_templates() const {
  const Package& pkg = model->package();
  try {
    return load_chat_templates([&](const std::string& name) -> std::optional<std::string> {
      const std::string p = tokenizer_file(pkg, name);
      if (p.empty()) return std::nullopt;
      return read_file(p);
    });
  } catch (const Error& e) {
    fail(dir + ": " + e.what());
  }
}

ChatRenderOptions TextModel::chat_render_options() const {
  ChatRenderOptions o;
  if (auto p = tokenizer_file(model->package(), "tokenizer_config.json"); !p.empty())
    o.special_tokens = special_tokens_from_config(read_json(p));
  return o;
}

std::unique_ptr<ChatFormat> TextModel::chat_format() const {
  const ChatTemplates templates = chat_templates();
  if (const std::string* text = templates.select(/*with_tools=*/false)) {
    try {
      return make_template_chat_format(ChatTemplate::parse(*text), chat_render_options());
    } catch (const Error& e) {
      fail(dir + ": the package's chat template: " + e.what());
    }
  }
  // No template: the hand-written ChatML format, if the vocabulary has its tokens.
  if (tokenizer->token_id("<|im_start|>")) return chat_format_by_name("chatml");
  fail(dir + ": the package has no chat template (tokenizer_config.json chat_template or " +
       "chat_template.jinja) and no <|im_start|> token");
}

GenerateOptions TextModel::generate_options(int max_tokens, std::vector<std::string> stop,
                                            int think_budget, const ChatFormat* chat) const {
  GenerateOptions g;
  g.max_tokens = max_tokens;
  g.end_tokens = end_tokens;
  g.stop = std::move(stop);
  g.think_budget = think_budget;
  const std::string open =
      chat && !chat->think_open().empty() ? std::string(chat->think_open()) : "<think>";
  const std::string close =
      chat && !chat->think_close().empty() ? std::string(chat->think_close()) : "</think>";
  g.think_open_id = tokenizer->token_id(open);
  g.think_close_id = tokenizer->token_id(close);
  if (think_budget >= 0 && !(g.think_open_id && g.think_close_id))
    usage_fail("--think-budget: the model's vocabulary has no " + open + " / " + close + " tokens");
  return g;
}

void SamplerArgs::check() const {
  try {
    opts.validate();  // the command line's values (and the defaults of those not given)
  } catch (const Error& e) {
    usage_fail(e.what());
  }
}

SamplerOptions SamplerArgs::resolve(const TextModel& tm) const {
  check();
  SamplerOptions o = opts;
  const nlohmann::json& g = tm.generation_config;
  // A recommendation of the model's generation_config.json, if the command line did not say.
  auto from_config = [&](CLI::Option* given, const char* key, auto& field) {
    if ((given && given->count() > 0) || !g.is_object() || !g.contains(key)) return;
    if (g.at(key).is_number()) field = g.at(key).get<std::decay_t<decltype(field)>>();
  };
  from_config(temp, "temperature", o.temperature);
  from_config(top_k, "top_k", o.top_k);
  from_config(top_p, "top_p", o.top_p);
  from_config(min_p, "min_p", o.min_p);
  from_config(repeat, "repetition_penalty", o.repetition_penalty);
  // do_sample false: greedy decoding (transformers' rule), unless --temp asks otherwise.
  if (!(temp && temp->count() > 0) && g.is_object() && g.contains("do_sample") &&
      g.at("do_sample").is_boolean() && !g.at("do_sample").get<bool>())
    o.temperature = 0;
  o.seed = seed ? *seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  try {
    o.validate();  // with the package's recommendations
  } catch (const Error& e) {
    fail(tm.generation_config_path + ": invalid sampling default (" + e.what() + ")");
  }
  return o;
}

void add_sampler_options(CLI::App* cmd, SamplerArgs* a) {
  const SamplerOptions d;
  auto def = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string(buf);
  };
  a->temp = cmd->add_option(
      "--temp", a->opts.temperature,
      "Temperature; 0 = greedy (default: generation_config.json, else " + def(d.temperature) + ")");
  a->top_k = cmd->add_option(
      "--top-k", a->opts.top_k,
      "Keep the k most likely tokens; 0 = off (default: generation_config.json, else " +
          std::to_string(d.top_k) + ")");
  a->top_p = cmd->add_option("--top-p", a->opts.top_p,
                             "Nucleus: smallest set with this probability mass; 1 = off (default: "
                             "generation_config.json, else " +
                                 def(d.top_p) + ")");
  a->min_p =
      cmd->add_option("--min-p", a->opts.min_p,
                      "Drop tokens below this fraction of the top probability; 0 = off (default: "
                      "generation_config.json, else " +
                          def(d.min_p) + ")");
  a->repeat =
      cmd->add_option("--repeat-penalty", a->opts.repetition_penalty,
                      "Repetition penalty over seen tokens (HF semantics); 1 = off (default: "
                      "generation_config.json, else 1)");
  cmd->add_option("--repeat-last-n", a->opts.penalty_last_n,
                  "Penalties look at the last N tokens; 0 = the whole sequence (default 0)");
  cmd->add_option("--presence-penalty", a->opts.presence_penalty,
                  "Subtracted from each seen token's logit; 0 = off (default 0)");
  cmd->add_option("--seed", a->seed,
                  "Random seed: same seed, same text (default: random, reported)");
}

std::string read_text_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(what + ": cannot read " + path + ": not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(what + ": cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(what + ": cannot read " + path);
  return ss.str();
}

void end_text_output(bool at_line_start) {
  struct stat out {
  }, err{};
  const bool same_file = ::fstat(STDOUT_FILENO, &out) == 0 && ::fstat(STDERR_FILENO, &err) == 0 &&
                         out.st_dev == err.st_dev && out.st_ino == err.st_ino;
  if (!at_line_start && (::isatty(STDOUT_FILENO) || same_file)) std::fputc('\n', stdout);
  std::fflush(stdout);
}

std::string generation_summary(const GenerateResult& r, const Session& s, uint64_t resident_bytes) {
  const double n_prompt = double(r.prompt.size()), n_gen = double(r.generated.size());
  const double mib = 1024.0 * 1024.0;
  const ModelConfig& c = s.model().config();
  // Bytes per decoded token (one forward): the resident weights once, K expert records per MoE
  // layer (from the RAM cache or the files). Read from files = expert bytes our reader read /
  // decode forwards; of those, the device gave what the kernel counts as storage reads and the
  // page cache the rest (buffered reads), or the device all of them (O_DIRECT).
  const double requested = double(s.active_experts()) * c.num_moe_layers() *
                           double(s.model().package().manifest().experts.record_bytes);
  const double evals = std::max(1, r.decode_evals);
  const double files = double(r.generate_expert_bytes) / evals;
  char where[160];
  if (s.streamer().options().io.mode == IoMode::Direct) {
    std::snprintf(where, sizeof where, "from storage (O_DIRECT)");
  } else if (r.generate_storage_bytes) {
    const double device = double(*r.generate_storage_bytes) / evals;
    std::snprintf(where, sizeof where,
                  "through the page cache: %.2f MiB from storage, %.2f MiB page-cache hits",
                  device / mib, std::max(0.0, files - device) / mib);
  } else {
    std::snprintf(where, sizeof where, "through the page cache (hits not measurable here)");
  }
  char buf[768];
  std::snprintf(
      buf, sizeof buf,
      "prompt %.0f tok in %.3f s (%.1f tok/s) | generated %.0f tok in %.3f s (%.2f tok/s), "
      "stopped: %s | per token: resident %.2f MiB, experts %.2f MiB (K=%d), %.2f MiB read from "
      "files at %.2f GB/s %s",
      n_prompt, r.prompt_seconds, r.prompt_seconds > 0 ? n_prompt / r.prompt_seconds : 0.0, n_gen,
      r.generate_seconds, r.generate_seconds > 0 ? n_gen / r.generate_seconds : 0.0,
      stop_reason_name(r.reason), double(resident_bytes) / mib, requested / mib, s.active_experts(),
      files / mib,
      r.generate_read_seconds > 0 ? double(r.generate_expert_bytes) / r.generate_read_seconds / 1e9
                                  : 0.0,
      where);
  return buf;
}

}  // namespace moeflux::tool
