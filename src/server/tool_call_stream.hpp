// One tool call's body (the text between <tool_call> and </tool_call>) parsed as the model writes
// it, so that a streamed reply sends the call's name as soon as it is known and then its
// arguments in fragments, as OpenAI streams them.
//
//   Qwen3:    {"name": "f", "arguments": {"x": 1}}
//             The call begins once `{"name": <string>, "arguments": {` has been read; from there
//             the arguments object streams as the model writes it, byte for byte, up to its
//             closing brace (found by tracking strings, escapes and nesting).
//   Qwen3.5:  <function=f>\n<parameter=x>\n1\n</parameter>\n</function>
//             The call begins at `<function=f>`; each parameter is one fragment once its
//             </parameter> is read (its value's JSON type is known only then): `{"x": 1`, then
//             `, "y": "text"`, and `}` at </function>.
//   Anything else (other key orders, arguments as a JSON string): the body is parsed whole at
//   its end (parse_tool_call()) and, if it is a call, its arguments are one fragment.
//
// Invariants: the fragments of a call, concatenated, are its arguments (arguments()); a call
// that has begun stays a call: text after the part recognised is ignored, and a body cut short
// (the reply ended inside it) keeps the arguments written so far (closed with `}` in the
// Qwen3.5 syntax; in the Qwen3 syntax they may then be incomplete JSON, as OpenAI's may be
// when a reply hits its length). A body that never began and does not parse whole is no call:
// body() is returned to the reply as content.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace moeflux::server {

class ToolCallStream {
 public:
  struct Piece {
    bool begins = false;    // the first piece of the call: `name` is set
    std::string name;       // the function's name (begins only)
    std::string arguments;  // the next fragment of the arguments (maybe empty)
    bool empty() const { return !begins && arguments.empty(); }
  };

  // More of the body.
  Piece push(std::string_view text);
  // The end of the body. The last piece; nullopt when the body is no tool call.
  std::optional<Piece> finish();

  bool begun() const { return begun_; }
  const std::string& name() const { return name_; }
  const std::string& arguments() const { return arguments_; }
  const std::string& body() const { return body_; }

 private:
  enum class State {
    Undecided,  // the syntax is not known yet
    Whole,      // parsed at the end
    JsonArgs,   // streaming the arguments object
    XmlParams,  // between parameters
    Done,       // the arguments are complete (or the syntax was left): the rest is ignored
  };
  void begin(Piece& p, std::string name);
  void emit(Piece& p, std::string_view fragment);
  void decide(Piece& p);
  void scan_json(Piece& p);
  void scan_xml(Piece& p);

  std::string body_;
  size_t pos_ = 0;  // body_[0, pos_) has been consumed by the state machine
  State state_ = State::Undecided;
  bool begun_ = false;
  std::string name_, arguments_;
  // JsonArgs: the object's nesting and whether the scan is inside a string / after a backslash.
  int depth_ = 0;
  bool in_string_ = false, escaped_ = false;
  bool xml_ = false;     // the Qwen3.5 syntax
  size_t params_ = 0;    // parameters written
  bool closed_ = false;  // the arguments object's `}` was written
};

}  // namespace moeflux::server
