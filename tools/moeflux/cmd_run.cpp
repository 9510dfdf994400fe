// moeflux run: one prompt in, the completion streamed to stdout, a one-line summary on stderr.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/output_file.hpp"
#include "engine_options.hpp"
#include "text_model.hpp"

namespace moeflux::tool {

namespace {

Runner add_run(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt (streamed to stdout)");
  struct Args {
    std::string model, prompt, system, json;
    int n = 256;
    std::vector<std::string> stop;
    bool chat = false, no_think = false;
    int think_budget = -1;
    EngineArgs engine;
    SamplerArgs sampling;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-m,--model", a->model,
                  "Package directory (default: $MOEFLUX_MODEL, else the bundled model)");
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("-n,--n-predict", a->n, "Tokens to generate at most (default 256)")
      ->check(integer_range(0, 1 << 30));
  cmd->add_option("--stop", a->stop, "Stop when the text contains this string (repeatable)");
  cmd->add_flag("--chat", a->chat, "Wrap the prompt as a user turn with the chat template");
  cmd->add_option("--system", a->system, "System message (with --chat)");
  cmd->add_flag("--no-think", a->no_think, "With --chat: answer without a thinking block");
  cmd->add_option("--think-budget", a->think_budget,
                  "Force </think> after N tokens of thinking (default: no limit)")
      ->check(integer_range(0, 1 << 30));
  cmd->add_option("--json", a->json, "Also write the ids, text and timings to this JSON file");
  add_sampler_options(cmd, &a->sampling);
  add_engine_options(cmd, &a->engine);
  return [a] {
    if (a->prompt.empty()) usage_fail("-p: the prompt is empty");
    if (!a->chat && (a->no_think || !a->system.empty()))
      usage_fail(std::string(a->no_think ? "--no-think" : "--system") + " needs --chat");
    const EngineOptions engine = a->engine.to_options();
    a->sampling.check();
    if (!a->json.empty()) check_output_path(a->json, "--json");
    const TextModel tm = TextModel::open(a->model);
    check_engine_options(engine, tm.model->package());
    const SamplerOptions sampling = a->sampling.resolve(tm);

    std::string text = a->prompt;
    std::unique_ptr<ChatFormat> chat;
    if (a->chat) {
      chat = tm.chat_format();
      std::vector<ChatMessage> messages;
      if (!a->system.empty()) messages.push_back({"system", a->system, {}});
      messages.push_back({"user", a->prompt, {}});
      ChatOptions co;
      if (a->no_think) co.enable_thinking = false;
      text = chat->render(messages, co);
    }
    const std::vector<int> ids = tm.tokenizer->encode(text);
    const int ctx = tm.model->config().max_position_embeddings;
    if (ids.size() > size_t(ctx))
      usage_fail("-p: the prompt has " + std::to_string(ids.size()) +
                 " tokens, more than the model's context of " + std::to_string(ctx) + " positions");

    Session session(*tm.model, engine);
    Generator gen(session, *tm.tokenizer, sampling,
                  tm.generate_options(a->n, a->stop, a->think_budget, chat.get()));
    const GenerateResult r = gen.run(ids, [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    });
    if (::isatty(STDOUT_FILENO)) std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "[run] %s | seed %llu\n",
                 generation_summary(r, session, tm.model->package().resident_bytes()).c_str(),
                 static_cast<unsigned long long>(sampling.seed));
    if (a->engine.timing) print_timings(session);
    if (!a->json.empty()) {
      nlohmann::json j = {{"prompt_tokens", r.prompt},
                          {"tokens", r.generated},
                          {"text", r.text},
                          {"stop_reason", stop_reason_name(r.reason)},
                          {"seed", sampling.seed},
                          {"prompt_seconds", r.prompt_seconds},
                          {"generate_seconds", r.generate_seconds},
                          {"generate_expert_bytes", r.generate_expert_bytes},
                          {"forced_think_close", r.forced_think_close}};
      // Text that is not valid UTF-8 cannot be a JSON string; replace like the tokenizer does.
      write_output_file(a->json,
                        {j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"},
                        "--json");
    }
    return 0;
  };
}

const CommandRegistration registration(40, add_run);

}  // namespace

}  // namespace moeflux::tool
