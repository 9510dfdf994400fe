// The bash tool of `moeflux chat --bash`: the model may ask to run a shell command; nothing runs
// unless the user answers yes at the terminal (or on standard input, when that is not one).
#pragma once

#include <string>

#include "chat_input.hpp"
#include "server/request.hpp"

namespace moeflux::tool {

// The tools array offered to the model: one function, bash(command: string).
server::Json bash_tool_definitions();

// The result of one tool call, as the tool message's content: the command's exit status and its
// output (stdout and stderr, the first 16 KiB), or why it did not run (declined, not the bash
// tool, no command).
std::string answer_tool_call(const server::ToolCall& call, ChatInput& input);

}  // namespace moeflux::tool
