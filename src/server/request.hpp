// OpenAI-style requests (/v1/chat/completions, /v1/completions), parsed and validated.
//
// Every problem is an ApiError (400 naming the field; 413 for a body over the limit) raised
// before any work starts: malformed JSON, a field of the wrong type, a value out of range, a
// feature the server does not have (n > 1, logprobs, frequency_penalty, non-text content parts).
// Fields the server does not know are ignored, as OpenAI's own API does for most metadata.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeflux::server {

using Json = nlohmann::ordered_json;  // keeps the client's key order (tools render in it)

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text, as OpenAI sends and returns it
};

struct Message {
  std::string role;  // system | developer (as system) | user | assistant | tool
  std::string content;
  std::optional<std::string> reasoning_content;
  std::vector<ToolCall> tool_calls;  // assistant
  std::string tool_call_id;          // tool
};

struct RequestLimits {
  int max_tokens = 4096;          // the most a request may ask for
  int default_max_tokens = 1024;  // when it asks for none
  size_t max_stop_strings = 8;
};

struct GenerationRequest {
  bool chat = false;
  std::string model;
  std::vector<Message> messages;     // chat
  std::string prompt;                // completions: text ...
  std::vector<int> prompt_ids;       // ... or token ids
  Json tools = Json::array();        // [{"type": "function", "function": {...}}]
  std::string tool_choice = "auto";  // auto | none | required
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int max_tokens = 0;
  std::vector<std::string> stop;
  std::optional<float> temperature, top_p, min_p, presence_penalty, repetition_penalty;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::optional<bool> enable_thinking;  // chat_template_kwargs.enable_thinking or top level
  std::optional<int> think_budget;      // tokens of thinking before </think> is forced
  bool ignore_eos = false;              // generate max_tokens whatever the model says (bench)
  // The last message is an assistant message the reply continues (its turn is left open); a
  // tool call written there is parsed with the reply.
  bool continue_final_message = false;
};

GenerationRequest parse_chat_request(std::string_view body, const RequestLimits& limits);
GenerationRequest parse_completion_request(std::string_view body, const RequestLimits& limits);

}  // namespace moeflux::server
