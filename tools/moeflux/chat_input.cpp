#include "chat_input.hpp"

#include <readline/history.h>
#include <readline/readline.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "interrupt.hpp"

namespace moeflux::tool {

namespace {

// readline's character source: EOF once Ctrl-C was pressed (the handler, installed without
// SA_RESTART, makes the blocked read return EINTR), so readline() returns as at Ctrl-D and restores
// the terminal itself.
int interruptible_getc(FILE* in) {
  for (;;) {
    if (interrupted()) return EOF;
    unsigned char c = 0;
    const ssize_t n = ::read(fileno(in), &c, 1);
    if (n == 1) return c;
    if (n == 0 || errno != EINTR) return EOF;
  }
}

}  // namespace

ChatInput::ChatInput() : interactive_(::isatty(STDIN_FILENO)) {
  if (interactive_) {
    rl_catch_signals = 0;  // SIGINT stays ours (interrupt.hpp)
    rl_getc_function = interruptible_getc;
  }
}

std::optional<std::string> ChatInput::next() {
  if (interactive_) {
    char* l = ::readline("> ");
    if (!l) return std::nullopt;
    std::string s(l);
    std::free(l);
    if (interrupted()) return std::nullopt;
    return s;
  }
  for (;;) {
    if (const size_t nl = buffered_.find('\n'); nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    if (at_end_) {
      if (buffered_.empty()) return std::nullopt;
      return std::exchange(buffered_, std::string());
    }
    if (interrupted()) return std::nullopt;
    char chunk[4096];
    const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
    if (n > 0)
      buffered_.append(chunk, static_cast<size_t>(n));
    else if (n == 0 || errno != EINTR)
      at_end_ = true;  // a read error ends the input like end of file
  }
}

void ChatInput::remember(const std::string& line) {
  if (interactive_) ::add_history(line.c_str());
}

}  // namespace moeflux::tool
