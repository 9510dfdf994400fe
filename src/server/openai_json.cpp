#include "server/openai_json.hpp"

#include <chrono>

namespace moeflux::server {

long long unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Json usage_json(const JobResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", r.cached_tokens}}}};
}

Json timings_json(const JobResult& r) {
  return {{"queue_ms", r.queue_seconds * 1e3},
          {"prompt_ms", r.prompt_seconds * 1e3},
          {"decode_ms", r.decode_seconds * 1e3}};
}

Json tool_call_delta_json(const ToolCallDelta& d, const std::string& id) {
  Json c = {{"index", d.index}};
  if (d.name.empty()) {
    c["function"] = {{"arguments", d.arguments}};
    return c;
  }
  c["id"] = id;
  c["type"] = "function";
  c["function"] = {{"name", d.name}, {"arguments", d.arguments}};
  return c;
}

Json tool_calls_json(const std::vector<ToolCall>& calls) {
  Json a = Json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    Json c;
    c["id"] = calls[i].id;
    c["type"] = "function";
    c["function"] = {{"name", calls[i].name}, {"arguments", calls[i].arguments}};
    a.push_back(std::move(c));
  }
  return a;
}

Json chat_response(const std::string& id, const std::string& model, const ParsedDelta& reply,
                   const JobResult& r) {
  Json msg = {{"role", "assistant"}};
  msg["content"] =
      reply.content.empty() && !reply.tool_calls.empty() ? Json() : Json(reply.content);
  if (!reply.reasoning.empty()) msg["reasoning_content"] = reply.reasoning;
  if (!reply.tool_calls.empty()) msg["tool_calls"] = tool_calls_json(reply.tool_calls);
  const std::string finish = reply.tool_calls.empty() ? r.finish_reason : "tool_calls";
  return {
      {"id", id},
      {"object", "chat.completion"},
      {"created", unix_time()},
      {"model", model},
      {"choices",
       Json::array(
           {{{"index", 0}, {"message", msg}, {"logprobs", nullptr}, {"finish_reason", finish}}})},
      {"usage", usage_json(r)},
      {"timings", timings_json(r)}};
}

Json chat_chunk(const std::string& id, const std::string& model, long long created,
                const Json& delta, const std::string& finish_reason) {
  return {
      {"id", id},
      {"object", "chat.completion.chunk"},
      {"created", created},
      {"model", model},
      {"choices",
       Json::array({{{"index", 0},
                     {"delta", delta},
                     {"logprobs", nullptr},
                     {"finish_reason", finish_reason.empty() ? Json() : Json(finish_reason)}}})}};
}

Json completion_response(const std::string& id, const std::string& model, const std::string& text,
                         const JobResult& r) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", unix_time()},
          {"model", model},
          {"choices", Json::array({{{"index", 0},
                                    {"text", text},
                                    {"logprobs", nullptr},
                                    {"finish_reason", r.finish_reason}}})},
          {"usage", usage_json(r)},
          {"timings", timings_json(r)}};
}

Json completion_chunk(const std::string& id, const std::string& model, long long created,
                      const std::string& text, const std::string& finish_reason) {
  return {
      {"id", id},
      {"object", "text_completion"},
      {"created", created},
      {"model", model},
      {"choices",
       Json::array({{{"index", 0},
                     {"text", text},
                     {"logprobs", nullptr},
                     {"finish_reason", finish_reason.empty() ? Json() : Json(finish_reason)}}})}};
}

Json models_json(const std::string& model_id) {
  return {
      {"object", "list"},
      {"data",
       Json::array(
           {{{"id", model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "moeflux"}}})}};
}

Json health_json(const SchedulerStats& s, const std::string& model_id) {
  return {{"status", "ok"},
          {"model", model_id},
          {"slots", s.slots},
          {"active", s.active},
          {"queued", s.queued},
          {"requests",
           {{"submitted", s.submitted},
            {"completed", s.completed},
            {"cancelled", s.cancelled},
            {"failed", s.failed},
            {"rejected", s.rejected}}},
          {"tokens",
           {{"prompt", s.prompt_tokens},
            {"prompt_cached", s.cached_prompt_tokens},
            {"generated", s.generated_tokens}}},
          {"decode",
           {{"steps", s.decode_steps},
            {"rows", s.decode_rows},
            {"seconds", s.decode_seconds},
            {"expert_bytes", s.decode_expert_bytes},
            {"storage_bytes", s.decode_storage_bytes}}}};
}

}  // namespace moeflux::server
