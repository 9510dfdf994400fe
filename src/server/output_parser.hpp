// A reply's text, as it streams, split into reasoning, content and tool calls.
//
//   <think> ... </think>        reasoning (reasoning_content); a reply may start inside it when
//                               the prompt opened the block (Qwen3.5's generation prompt)
//   <tool_call> ... </tool_call> one tool call, in either syntax the Qwen families write:
//       Qwen3:    {"name": "f", "arguments": {"x": 1}}
//       Qwen3.5:  <function=f>\n<parameter=x>\n1\n</parameter>\n</function>
//   anything else               content
//
// A tool call streams (server/tool_call_stream.hpp): its first delta carries its name, the next
// ones fragments of its arguments, and when it ends it is also returned whole (for replies that
// are not streamed). Text that may be the start of a tag is held until it is told apart, so a
// delta never carries part of a tag. Newlines around tags are the format's, not the model's answer:
// reasoning drops the newline after <think> and those before </think>; content drops the newlines
// after
// </think> and those before a tool call and at the very end. A tool call whose body does not
// parse is returned as content, verbatim.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/request.hpp"
#include "server/tool_call_stream.hpp"

namespace moeflux::server {

// A piece of a streamed tool call. The pieces of call `index` (its order in the reply), in order:
// the first has its name, and their arguments concatenated are the call's arguments.
struct ToolCallDelta {
  size_t index = 0;
  std::string name;       // the first piece only
  std::string arguments;  // a fragment, maybe empty
};

struct ParsedDelta {
  std::string reasoning;
  std::string content;
  std::vector<ToolCallDelta> tool_call_deltas;  // pieces of calls, as they are written
  std::vector<ToolCall> tool_calls;  // calls that ended, whole (id empty: the server names them)
  bool empty() const {
    return reasoning.empty() && content.empty() && tool_call_deltas.empty() && tool_calls.empty();
  }
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
  // Ends the tool call being read (the body is whole; `closed`: </tool_call> was read).
  void end_call(ParsedDelta& d, bool closed);
  void take(ParsedDelta& d, const ToolCallStream::Piece& p);
  std::string buf_;         // text not yet classified
  std::string pending_nl_;  // content newlines held (dropped before a tool call / the end)
  ToolCallStream call_;     // the tool call being read
  size_t calls_ = 0;        // tool calls begun
};

// The body of one tool call (between the tags), in either syntax; nullopt if it does not parse.
std::optional<ToolCall> parse_tool_call(std::string_view body);
// A Qwen3.5 parameter's value (the text between its tags, without the newlines around it): a
// value that is JSON keeps its type (number, boolean, null, object, array); else a string.
Json xml_parameter_value(std::string_view value);

}  // namespace moeflux::server
