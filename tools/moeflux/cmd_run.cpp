// moeflux run: one prompt in, the completion streamed to stdout, a one-line summary on stderr.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/output_file.hpp"
#include "engine_options.hpp"
#include "interrupt.hpp"
#include "model_dir.hpp"
#include "text_model.hpp"

namespace moeflux::tool {

namespace {

// The prompt: -f FILE, -p - (standard input) or -p TEXT; `what` names where it came from.
std::string read_prompt(const std::string& prompt, const std::string& file, std::string* what) {
  if (!file.empty()) {
    *what = "-f " + file;
    return read_text_file(file, "-f");
  }
  if (prompt == "-") {
    *what = "-p - (standard input)";
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (std::cin.bad()) fail("-p -: cannot read standard input");
    return text;
  }
  *what = "-p";
  return prompt;
}

Runner add_run(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt (streamed to stdout)");
  struct Args {
    std::string model, prompt, file, system, json;
    int n = 256;
    std::vector<std::string> stop;
    bool chat = false, no_think = false, no_echo = false;
    int think_budget = -1;
    EngineArgs engine;
    SamplerArgs sampling;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  auto* p = cmd->add_option("-p,--prompt", a->prompt, "Prompt text; - reads standard input");
  auto* f = cmd->add_option("-f,--file", a->file, "Read the prompt from this file");
  p->excludes(f);
  cmd->add_flag("--no-echo", a->no_echo, "Print only the completion, not the prompt before it");
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
  cmd->footer(
      "Ctrl-C stops the generation and prints the summary (exit status 130); a second Ctrl-C "
      "quits at once.");
  return [a, p, f] {
    if (p->count() == 0 && f->count() == 0)
      usage_fail("give the prompt: -p TEXT, -p - (standard input) or -f FILE");
    if (!a->chat && (a->no_think || !a->system.empty()))
      usage_fail(std::string(a->no_think ? "--no-think" : "--system") + " needs --chat");
    const EngineOptions engine = a->engine.to_options();
    a->sampling.check();
    if (!a->json.empty()) check_output_path(a->json, "--json");
    std::string source;
    const std::string prompt = read_prompt(a->prompt, a->file, &source);
    if (prompt.empty()) usage_fail(source + ": the prompt is empty");
    const TextModel tm = TextModel::open(a->model, !a->engine.no_verify);
    check_engine_options(engine, tm.model->package());
    const SamplerOptions sampling = a->sampling.resolve(tm);

    std::string text = prompt;
    std::unique_ptr<ChatFormat> chat;
    if (a->chat) {
      chat = tm.chat_format();
      std::vector<ChatMessage> messages;
      if (!a->system.empty()) messages.push_back({"system", a->system, {}});
      messages.push_back({"user", prompt, {}});
      ChatOptions co;
      if (a->no_think) co.enable_thinking = false;
      text = chat->render(messages, co);
    }
    const std::vector<int> ids = tm.tokenizer->encode(text);
    const int ctx = tm.model->config().max_position_embeddings;
    if (ids.size() > size_t(ctx))
      usage_fail(source + ": the prompt has " + std::to_string(ids.size()) +
                 " tokens, more than the model's context of " + std::to_string(ctx) + " positions");

    Session session(*tm.model, engine);
    GenerateOptions go = tm.generate_options(a->n, a->stop, a->think_budget, chat.get());
    go.stop_requested = [] { return interrupted(); };
    Generator gen(session, *tm.tokenizer, sampling, std::move(go));
    char last = '\n';  // the last character written to stdout (none yet: a line start)
    auto out = [&last](std::string_view s) {
      if (s.empty()) return;
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      last = s.back();
    };
    // Like llama.cpp: the prompt, then its completion (a chat reply on a line of its own).
    if (!a->no_echo) out(a->chat ? prompt + "\n" : prompt);
    install_interrupt_handler();
    const GenerateResult r = gen.run(ids, out);
    end_text_output(last == '\n');
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
    return r.reason == StopReason::Interrupted ? kInterruptedExit : 0;
  };
}

const CommandRegistration registration(40, add_run);

}  // namespace

}  // namespace moeflux::tool
