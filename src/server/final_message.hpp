// continue_final_message: the reply goes on inside the last (assistant) message instead of a new
// turn. transformers renders the conversation without a generation prompt and cuts the text
// right after that message's content; this is that cut, for renderings by a Jinja template.
#pragma once

#include <string>
#include <string_view>

#include "server/chat_template.hpp"

namespace moeflux::server {

// transformers' continue_final_message cut of a rendering `text` (made without a generation
// prompt) whose final message's content is `content`: the text up to the last occurrence of the
// content with its whitespace stripped, then as much of it as the template kept (all of it when
// the template wrote the content as given; else the stripped content). `continued` is the
// content as `text` now ends with it. Throws ApiError(400) when the stripped content does not
// occur in `text` (the template changed it), and when the content is empty or whitespace only
// (transformers would then keep the whole rendering, the closed turn included: nothing to
// continue). Whitespace is ASCII whitespace (Python's strip() also strips a few Unicode spaces).
Prompt cut_after_final_message(std::string text, std::string_view content);

}  // namespace moeflux::server
