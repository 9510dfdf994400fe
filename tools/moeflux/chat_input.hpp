// The lines `moeflux chat` reads: with GNU readline (line editing, history, a "> " prompt) when
// standard input is a terminal, plainly otherwise (no prompt, no echo, so a script can drive it).
// Either way a wait for input ends at end of input (Ctrl-D) or at Ctrl-C (interrupt.hpp).
#pragma once

#include <optional>
#include <string>

namespace moeflux::tool {

class ChatInput {
 public:
  ChatInput();
  bool interactive() const { return interactive_; }
  // The next line without its newline; nullopt at end of input or when interrupted() (the
  // caller tells the two apart).
  std::optional<std::string> next();
  // Adds a line to the readline history (interactive only).
  void remember(const std::string& line);

 private:
  bool interactive_;
  std::string buffered_;  // read, not yet returned (plain input)
  bool at_end_ = false;
};

}  // namespace moeflux::tool
