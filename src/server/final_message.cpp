#include "server/final_message.hpp"

#include "server/api_error.hpp"

namespace moeflux::server {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view lstrip(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  return s;
}

std::string_view strip(std::string_view s) {
  s = lstrip(s);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

Prompt cut_after_final_message(std::string text, std::string_view content) {
  const std::string_view stripped = strip(content);
  if (stripped.empty())
    throw ApiError(400,
                   "continue_final_message: the final message is empty, there is nothing to "
                   "continue (leave it out to start a new reply)",
                   "continue_final_message");
  const size_t at = text.rfind(stripped);
  if (at == std::string::npos)
    throw ApiError(400,
                   "continue_final_message: the chat template does not write the final message's "
                   "content as given, so the reply cannot continue it",
                   "continue_final_message");
  // The template kept the content whole (or it has no leading whitespace, and the text goes on
  // with its trailing whitespace): cut after all of it; else after the stripped content.
  const std::string_view lstripped = lstrip(content);
  const size_t end = std::string_view(text).substr(at, lstripped.size()) == content
                         ? at + lstripped.size()
                         : at + stripped.size();
  text.resize(end);
  std::string continued = text.substr(at);
  return {std::move(text), std::move(continued)};
}

}  // namespace moeflux::server
