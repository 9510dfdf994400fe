// moeflux chat: an interactive conversation (GNU readline: line editing and history).
//
// The session keeps its state across turns: each turn evaluates only the new tokens (the end of
// the previous reply, the user's turn and the generation prompt; ChatFormat::continue_after_reply).
// Commands: /clear (new conversation), /save FILE and /load FILE (the conversation's state:
// Session::state_save_file, so a loaded conversation goes on without evaluating it again),
// /quit; end of input (Ctrl-D) exits. Ctrl-C stops the reply being written (the conversation
// keeps what was written of it) and returns to the prompt; Ctrl-C at the prompt exits (130).
//
// --bash offers the model a bash tool (chat_bash_tool.hpp): each command it asks for is shown
// and runs only if the user says yes; its output goes back to the model as the tool's result,
// and the model goes on (at most kMaxToolRounds calls per user turn).
#include <cstdio>

#include "chat_bash_tool.hpp"
#include "chat_input.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "engine_options.hpp"
#include "interrupt.hpp"
#include "model_dir.hpp"
#include "server/chat_template.hpp"
#include "server/output_parser.hpp"
#include "text_model.hpp"

namespace moeflux::tool {

namespace {

constexpr int kMaxToolRounds = 8;

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// After a failed turn (non-finite logits, a failed read), the session's state is unknown: the
// conversation before the turn (its first `before` tokens) is evaluated again; if that fails
// too, the conversation starts over.
void restore_conversation(Generator& gen, size_t before, bool& fresh) {
  try {
    gen.rewind(before);
    if (before > 0)
      std::fprintf(stderr, "[chat] the conversation before this turn was kept (%zu tokens)\n",
                   before);
  } catch (const Error& e) {
    gen.clear();
    fresh = true;
    std::fprintf(stderr, "[chat] error: %s; the conversation was cleared\n", e.what());
  }
}

Runner add_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Interactive chat with the model's chat template");
  struct Args {
    std::string model, system;
    int n = 4096;
    std::vector<std::string> stop;
    bool no_think = false, bash = false;
    int think_budget = -1;
    EngineArgs engine;
    SamplerArgs sampling;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("--system", a->system, "System message");
  cmd->add_option("-n,--n-predict", a->n, "Tokens per reply at most (default 4096)")
      ->check(integer_range(1, 1 << 30));
  cmd->add_option("--stop", a->stop, "End a reply when its text contains this string (repeatable)");
  cmd->add_flag("--no-think", a->no_think, "Answer without a thinking block");
  cmd->add_option("--think-budget", a->think_budget,
                  "Force </think> after N tokens of thinking (default: no limit)")
      ->check(integer_range(0, 1 << 30));
  cmd->add_flag("--bash", a->bash, "Let the model run bash commands, each after you approve it");
  add_sampler_options(cmd, &a->sampling);
  add_engine_options(cmd, &a->engine);
  return [a] {
    const EngineOptions engine = a->engine.to_options();
    a->sampling.check();
    const TextModel tm = TextModel::open(a->model, !a->engine.no_verify);
    check_engine_options(engine, tm.model->package());
    const SamplerOptions sampling = a->sampling.resolve(tm);
    const std::unique_ptr<ChatFormat> chat = tm.chat_format();
    Session session(*tm.model, engine);
    GenerateOptions go = tm.generate_options(a->n, a->stop, a->think_budget, chat.get());
    go.stop_requested = [] { return interrupted(); };
    Generator gen(session, *tm.tokenizer, sampling, std::move(go));
    ChatOptions co;
    if (a->no_think) co.enable_thinking = false;
    ChatInput input;
    install_interrupt_handler();
    std::fprintf(stderr,
                 "[chat] %s (%s format, context %d, seed %llu): /clear starts over; Ctrl-C stops "
                 "a reply; /quit, Ctrl-D or Ctrl-C at the prompt exits\n",
                 tm.dir.c_str(), std::string(chat->name()).c_str(),
                 tm.model->config().max_position_embeddings,
                 static_cast<unsigned long long>(sampling.seed));
    const std::unique_ptr<server::ChatTemplate> with_tools =
        a->bash ? server::chat_template_from_format(tm.chat_format()) : nullptr;
    const server::Json tools = a->bash ? bash_tool_definitions() : server::Json::array();
    bool fresh = true;  // nothing evaluated since the start or /clear

    // Evaluates `text` after the conversation and streams the reply; false after an error (the
    // conversation is restored as it was before).
    auto turn = [&](const std::string& text, GenerateResult& r) {
      const std::vector<int> ids = tm.tokenizer->encode(text);
      try {
        gen.check(ids);  // nothing evaluated yet: the conversation stays as it was
      } catch (const Error& e) {
        std::fprintf(stderr, "[chat] %s; /clear starts a new conversation\n", e.what());
        return false;
      }
      const size_t before = gen.sequence().size();  // the conversation before this turn
      try {
        r = gen.run(ids, [](std::string_view s) {
          std::fwrite(s.data(), 1, s.size(), stdout);
          std::fflush(stdout);
        });
      } catch (const Error& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "\n[chat] error: %s\n", e.what());
        restore_conversation(gen, before, fresh);
        clear_interrupt();
        return false;
      }
      fresh = false;
      clear_interrupt();  // handled: the reply stopped (or had ended anyway)
      std::fputc('\n', stdout);
      std::fflush(stdout);
      std::fprintf(stderr, "[chat] %zu tokens at %.2f tok/s, stopped: %s; context %d/%d\n",
                   r.generated.size(),
                   r.generate_seconds > 0 ? double(r.generated.size()) / r.generate_seconds : 0.0,
                   stop_reason_name(r.reason), gen.position(),
                   tm.model->config().max_position_embeddings);
      return true;
    };

    while (auto raw = input.next()) {
      const std::string line = trim(*raw);
      if (line.empty()) continue;
      input.remember(*raw);
      if (line == "/quit" || line == "/exit") break;
      if (line == "/clear") {
        gen.clear();
        fresh = true;
        std::fprintf(stderr, "[chat] cleared\n");
        continue;
      }
      if (line.starts_with("/save ") || line.starts_with("/load ")) {
        const std::string path = trim(line.substr(6));
        try {
          if (line[1] == 's') {
            gen.evaluate_pending();
            session.state_save_file(path);
            std::fprintf(stderr, "[chat] saved %d tokens to %s\n", session.position(),
                         path.c_str());
          } else {
            session.state_load_file(path);
            gen.adopt_session();
            fresh = session.position() == 0;
            std::fprintf(stderr, "[chat] loaded %d tokens from %s\n", session.position(),
                         path.c_str());
          }
        } catch (const Error& e) {
          std::fprintf(stderr, "[chat] %s\n", e.what());
        }
        continue;
      }
      if (line[0] == '/' && line.find(' ') == std::string::npos) {
        std::fprintf(stderr, "[chat] unknown command %s (/clear, /save FILE, /load FILE, /quit)\n",
                     line.c_str());
        continue;
      }
      const ChatMessage user{"user", *raw, {}};
      std::string text;
      if (fresh) {
        std::vector<ChatMessage> messages;
        if (!a->system.empty()) messages.push_back({"system", a->system, {}});
        messages.push_back(user);
        if (with_tools) {
          std::vector<server::Message> m;
          for (const ChatMessage& c : messages) m.push_back({c.role, c.content, {}, {}, {}});
          server::TemplateOptions to;
          to.enable_thinking = co.enable_thinking;
          text = with_tools->render(m, tools, to).text;
        } else {
          text = chat->render(messages, co);
        }
      } else {
        text = chat->continue_after_reply(std::span(&user, 1), co, /*reply_closed=*/false);
      }
      GenerateResult r;
      if (!turn(text, r)) continue;
      // Tool calls in the reply: answered (after asking), then the model goes on.
      for (int round = 0; with_tools && round < kMaxToolRounds && !interrupted(); ++round) {
        server::OutputParser parser(std::string(chat->think_open()),
                                    std::string(chat->think_close()), true, false);
        server::ParsedDelta d = parser.push(r.text);
        server::ParsedDelta tail = parser.finish();
        for (auto& c : tail.tool_calls) d.tool_calls.push_back(std::move(c));
        if (d.tool_calls.empty()) break;
        std::vector<ChatMessage> results;
        for (const server::ToolCall& c : d.tool_calls)
          results.push_back({"tool", answer_tool_call(c, input), {}});
        if (!turn(chat->continue_after_reply(results, co, /*reply_closed=*/false), r)) break;
      }
    }
    if (!interrupted()) return 0;                       // end of input or /quit
    if (input.interactive()) std::fputc('\n', stdout);  // off the prompt line
    return kInterruptedExit;
  };
}

const CommandRegistration registration(45, add_chat);

}  // namespace

}  // namespace moeflux::tool
