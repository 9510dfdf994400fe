// A reply's text, as it streams, split into reasoning, content and tool calls.
//
//   <think> ... </think>        reasoning (reasoning_content); a reply may start inside it when
//                               the prompt opened the block (Qwen3.5's generation prompt)
//   <tool_call> ... </tool_call> one tool call, in either syntax the Qwen families write:
//       Qwen3:    {"name": "f", "arguments": {"x": 1}}
//       Qwen3.5:  <function=f>\n<parameter=x>\n1\n</parameter>\n</function>
//   anything else               content
//
// Text that may be the start of a tag is held until it is told apart, so a delta never carries
// part of a tag. Newlines around tags are the format's, not the model's answer: reasoning drops
// the newline after <think> and those before </think>; content drops the newlines after
// </think> and those before a tool call and at the very end. A tool call whose body does not
// parse is returned as content, verbatim.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/request.hpp"

namespace moeflux::server {

struct ParsedDelta {
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;  // complete calls (id empty: the server names them)
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

class OutputParser {
 public:
  // think tags empty: no reasoning split; parse_tools false: tool-call tags are content.
  OutputParser(std::string think_open, std::string think_close, bool parse_tools,
               bool starts_in_reasoning);
  ParsedDelta push(std::string_view text);
  // The end of the reply: what was held is released (an open reasoning block is reasoning, an
  // unterminated tool call is parsed if it can be, else content).
  ParsedDelta finish();

 private:
  enum class Mode { Content, Reasoning, ToolCall };
  void run(ParsedDelta& d, bool final);
  void emit_content(ParsedDelta& d, std::string_view s);
  std::string open_, close_;
  bool tools_;
  Mode mode_;
  bool at_reasoning_start_;  // the newline after <think> is dropped
  bool at_content_start_;    // newlines after </think> (and between tool calls) are dropped
  std::string buf_;          // text not yet classified
  std::string pending_nl_;   // content newlines held (dropped before a tool call / the end)
};

// The body of one tool call (between the tags), in either syntax; nullopt if it does not parse.
std::optional<ToolCall> parse_tool_call(std::string_view body);

}  // namespace moeflux::server
