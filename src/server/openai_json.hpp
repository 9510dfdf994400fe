// The JSON shapes of OpenAI's API the server answers with.
#pragma once

#include <string>
#include <vector>

#include "server/job.hpp"
#include "server/output_parser.hpp"
#include "server/request.hpp"
#include "server/scheduler.hpp"

namespace moeflux::server {

long long unix_time();

// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details":
// {"cached_tokens"}}
Json usage_json(const JobResult& r);
// moeflux's own timings of a reply (ms): queue, prompt, decode.
Json timings_json(const JobResult& r);
Json tool_calls_json(const std::vector<ToolCall>& calls);
// One piece of a streamed tool call: {"index", "function": {"arguments"}}, with "id", "type" and
// the function's "name" on the call's first piece (`id` is set for it only).
Json tool_call_delta_json(const ToolCallDelta& d, const std::string& id);

// The whole reply of /v1/chat/completions.
Json chat_response(const std::string& id, const std::string& model, const ParsedDelta& reply,
                   const JobResult& r);
// One chunk of a streamed chat reply: `delta` (an object), finish_reason (null if "").
Json chat_chunk(const std::string& id, const std::string& model, long long created,
                const Json& delta, const std::string& finish_reason);
Json completion_response(const std::string& id, const std::string& model, const std::string& text,
                         const JobResult& r);
Json completion_chunk(const std::string& id, const std::string& model, long long created,
                      const std::string& text, const std::string& finish_reason);

Json models_json(const std::string& model_id);
Json health_json(const SchedulerStats& s, const std::string& model_id);

}  // namespace moeflux::server
