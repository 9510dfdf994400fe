#include "chat_bash_tool.hpp"

#include <sys/wait.h>

#include <cstdio>

namespace moeflux::tool {

namespace {

constexpr size_t kMaxOutput = 16 << 10;

std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

}  // namespace

server::Json bash_tool_definitions() {
  return server::Json::parse(R"([{"type": "function", "function": {"name": "bash",
    "description": "Run a bash command on the user's machine (the user approves each one) and get its output.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string",
    "description": "The command line"}}, "required": ["command"]}}}])");
}

std::string answer_tool_call(const server::ToolCall& call, ChatInput& input) {
  if (call.name != "bash") return "error: there is no tool named " + call.name;
  const server::Json args = server::Json::parse(call.arguments, nullptr, false);
  if (!args.is_object() || !args.contains("command") || !args["command"].is_string())
    return "error: bash needs {\"command\": \"...\"}";
  const std::string command = args["command"].get<std::string>();
  std::fprintf(stderr, "\n[chat] the model wants to run:\n    %s\n[chat] run it? [y/N]\n",
               command.c_str());
  const std::optional<std::string> answer = input.next();
  if (!answer || (*answer != "y" && *answer != "Y" && *answer != "yes"))
    return "The user declined to run this command.";
  FILE* p = ::popen(("bash -c " + shell_quote(command) + " 2>&1").c_str(), "r");
  if (!p) return "error: cannot start bash";
  std::string out;
  char buf[4096];
  size_t n;
  bool cut = false;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) {
    if (out.size() < kMaxOutput) out.append(buf, std::min(n, kMaxOutput - out.size()));
    cut = cut || out.size() >= kMaxOutput;
  }
  const int status = ::pclose(p);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::fprintf(stderr, "[chat] exit status %d, %zu bytes of output\n", code, out.size());
  return "exit status " + std::to_string(code) + "\n" + out + (cut ? "\n[output cut]" : "");
}

}  // namespace moeflux::tool
