#include "server/request.hpp"

#include <cmath>

#include "server/api_error.hpp"

namespace moeflux::server {

namespace {

Json parse_body(std::string_view body) {
  Json j;
  try {
    j = Json::parse(body);
  } catch (const Json::exception&) {
    throw ApiError(400, "the request body is not valid JSON");
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

const char* type_name(const Json& v) {
  return v.type_name();
}

// The field `key` of `j` if present and not null.
const Json* field(const Json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const Json& v, const std::string& param) {
  if (!v.is_string()) bad_field(param, std::string("expected a string, got ") + type_name(v));
  return v.get<std::string>();
}

bool get_bool(const Json& v, const std::string& param) {
  if (!v.is_boolean()) bad_field(param, std::string("expected a boolean, got ") + type_name(v));
  return v.get<bool>();
}

double get_number(const Json& v, const std::string& param, double lo, double hi) {
  if (!v.is_number()) bad_field(param, std::string("expected a number, got ") + type_name(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad_field(param, "must be between " + Json(lo).dump() + " and " + Json(hi).dump());
  return x;
}

long long get_int(const Json& v, const std::string& param, long long lo, long long hi) {
  if (!v.is_number_integer())
    bad_field(param, std::string("expected an integer, got ") + type_name(v));
  if (v.is_number_unsigned() && v.get<unsigned long long>() > static_cast<unsigned long long>(hi))
    bad_field(param, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  const long long x = v.get<long long>();
  if (x < lo || x > hi)
    bad_field(param, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return x;
}

// content: a string, null, or an array of {"type": "text", "text": ...} parts.
std::string get_content(const Json& v, const std::string& param) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array())
    bad_field(param, std::string("expected a string or an array of parts, got ") + type_name(v));
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = param + "[" + std::to_string(i) + "]";
    if (!v[i].is_object()) bad_field(p, "expected a content part object");
    const Json* type = field(v[i], "type");
    if (!type || get_string(*type, p + ".type") != "text")
      bad_field(p + ".type", "only text content parts are supported");
    const Json* text = field(v[i], "text");
    if (!text) bad_field(p + ".text", "missing");
    out += get_string(*text, p + ".text");
  }
  return out;
}

std::vector<ToolCall> get_tool_calls(const Json& v, const std::string& param) {
  if (!v.is_array()) bad_field(param, "expected an array");
  std::vector<ToolCall> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = param + "[" + std::to_string(i) + "]";
    if (!v[i].is_object()) bad_field(p, "expected an object");
    ToolCall c;
    if (const Json* id = field(v[i], "id")) c.id = get_string(*id, p + ".id");
    const Json* fn = field(v[i], "function");
    if (!fn || !fn->is_object()) bad_field(p + ".function", "expected an object");
    const Json* name = field(*fn, "name");
    if (!name) bad_field(p + ".function.name", "missing");
    c.name = get_string(*name, p + ".function.name");
    const Json* args = field(*fn, "arguments");
    if (!args) {
      c.arguments = "{}";
    } else if (args->is_string()) {
      c.arguments = args->get<std::string>();
    } else if (args->is_object()) {
      c.arguments = args->dump();
    } else {
      bad_field(p + ".function.arguments", "expected a JSON string");
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<Message> get_messages(const Json& j) {
  const Json* v = field(j, "messages");
  if (!v) bad_field("messages", "missing");
  if (!v->is_array()) bad_field("messages", std::string("expected an array, got ") + type_name(*v));
  if (v->empty()) bad_field("messages", "must hold at least one message");
  std::vector<Message> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string p = "messages[" + std::to_string(i) + "]";
    const Json& m = (*v)[i];
    if (!m.is_object()) bad_field(p, "expected an object");
    Message msg;
    const Json* role = field(m, "role");
    if (!role) bad_field(p + ".role", "missing");
    msg.role = get_string(*role, p + ".role");
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool")
      bad_field(p + ".role", "must be system, developer, user, assistant or tool");
    const Json* content = field(m, "content");
    if (!content && msg.role != "assistant") bad_field(p + ".content", "missing");
    if (content) msg.content = get_content(*content, p + ".content");
    if (const Json* r = field(m, "reasoning_content"))
      msg.reasoning_content = get_string(*r, p + ".reasoning_content");
    if (const Json* tc = field(m, "tool_calls")) {
      if (msg.role != "assistant")
        bad_field(p + ".tool_calls", "only assistant messages have them");
      msg.tool_calls = get_tool_calls(*tc, p + ".tool_calls");
    }
    if (const Json* id = field(m, "tool_call_id"))
      msg.tool_call_id = get_string(*id, p + ".tool_call_id");
    out.push_back(std::move(msg));
  }
  return out;
}

Json get_tools(const Json& j) {
  const Json* v = field(j, "tools");
  if (!v) return Json::array();
  if (!v->is_array()) bad_field("tools", "expected an array");
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string p = "tools[" + std::to_string(i) + "]";
    const Json& t = (*v)[i];
    if (!t.is_object()) bad_field(p, "expected an object");
    const Json* type = field(t, "type");
    if (!type || get_string(*type, p + ".type") != "function")
      bad_field(p + ".type", "only \"function\" tools are supported");
    const Json* fn = field(t, "function");
    if (!fn || !fn->is_object()) bad_field(p + ".function", "expected an object");
    const Json* name = field(*fn, "name");
    if (!name) bad_field(p + ".function.name", "missing");
    if (get_string(*name, p + ".function.name").empty())
      bad_field(p + ".function.name", "must not be empty");
    if (const Json* params = field(*fn, "parameters"); params && !params->is_object())
      bad_field(p + ".function.parameters", "expected a JSON Schema object");
  }
  return *v;
}

// Fields both endpoints share.
void common_fields(const Json& j, const RequestLimits& limits, GenerationRequest& r) {
  if (const Json* v = field(j, "model")) r.model = get_string(*v, "model");
  if (const Json* v = field(j, "stream")) r.stream = get_bool(*v, "stream");
  if (const Json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad_field("stream_options", "expected an object");
    if (const Json* u = field(*v, "include_usage"))
      r.include_usage = get_bool(*u, "stream_options.include_usage");
  }
  r.max_tokens = limits.default_max_tokens;
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (const Json* v = field(j, key)) r.max_tokens = int(get_int(*v, key, 1, limits.max_tokens));
  if (const Json* v = field(j, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i)
        r.stop.push_back(get_string((*v)[i], "stop[" + std::to_string(i) + "]"));
    } else {
      bad_field("stop", "expected a string or an array of strings");
    }
    if (r.stop.size() > limits.max_stop_strings)
      bad_field("stop", "at most " + std::to_string(limits.max_stop_strings) + " stop strings");
  }
  if (const Json* v = field(j, "temperature"))
    r.temperature = float(get_number(*v, "temperature", 0, 2));
  if (const Json* v = field(j, "top_p")) {
    r.top_p = float(get_number(*v, "top_p", 0, 1));
    if (*r.top_p <= 0) bad_field("top_p", "must be greater than 0");
  }
  if (const Json* v = field(j, "min_p")) r.min_p = float(get_number(*v, "min_p", 0, 1));
  if (const Json* v = field(j, "top_k")) r.top_k = int(get_int(*v, "top_k", 0, 1 << 30));
  if (const Json* v = field(j, "presence_penalty"))
    r.presence_penalty = float(get_number(*v, "presence_penalty", -2, 2));
  if (const Json* v = field(j, "repetition_penalty")) {
    r.repetition_penalty = float(get_number(*v, "repetition_penalty", 0, 10));
    if (*r.repetition_penalty <= 0) bad_field("repetition_penalty", "must be greater than 0");
  }
  if (const Json* v = field(j, "frequency_penalty");
      v && get_number(*v, "frequency_penalty", -2, 2) != 0)
    bad_field("frequency_penalty", "is not supported (use presence_penalty or repetition_penalty)");
  if (const Json* v = field(j, "seed")) {
    if (!v->is_number_integer()) bad_field("seed", "expected an integer");
    r.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
  }
  if (const Json* v = field(j, "n"); v && get_int(*v, "n", 1, 1 << 20) != 1)
    bad_field("n", "only n = 1 is supported");
  if (const Json* v = field(j, "logprobs"); v && get_bool(*v, "logprobs"))
    bad_field("logprobs", "is not supported");
  if (const Json* v = field(j, "ignore_eos")) r.ignore_eos = get_bool(*v, "ignore_eos");
  if (const Json* v = field(j, "think_budget"))
    r.think_budget = int(get_int(*v, "think_budget", 0, 1 << 30));
}

}  // namespace

GenerationRequest parse_chat_request(std::string_view body, const RequestLimits& limits) {
  const Json j = parse_body(body);
  GenerationRequest r;
  r.chat = true;
  r.messages = get_messages(j);
  r.tools = get_tools(j);
  common_fields(j, limits, r);
  if (const Json* v = field(j, "tool_choice")) {
    if (v->is_string()) {
      r.tool_choice = v->get<std::string>();
      if (r.tool_choice != "auto" && r.tool_choice != "none" && r.tool_choice != "required")
        bad_field("tool_choice", "must be auto, none or required");
    } else {
      bad_field("tool_choice", "only \"auto\", \"none\" and \"required\" are supported");
    }
  }
  if (const Json* v = field(j, "response_format")) {
    const Json* type = v->is_object() ? field(*v, "type") : nullptr;
    if (!type || get_string(*type, "response_format.type") != "text")
      bad_field("response_format", "only {\"type\": \"text\"} is supported");
  }
  if (const Json* v = field(j, "enable_thinking"))
    r.enable_thinking = get_bool(*v, "enable_thinking");
  if (const Json* v = field(j, "chat_template_kwargs")) {
    if (!v->is_object()) bad_field("chat_template_kwargs", "expected an object");
    if (const Json* t = field(*v, "enable_thinking"))
      r.enable_thinking = get_bool(*t, "chat_template_kwargs.enable_thinking");
  }
  if (const Json* v = field(j, "continue_final_message"))
    r.continue_final_message = get_bool(*v, "continue_final_message");
  if (r.continue_final_message && r.messages.back().role != "assistant")
    bad_field("continue_final_message", "the last message must be an assistant message");
  return r;
}

GenerationRequest parse_completion_request(std::string_view body, const RequestLimits& limits) {
  const Json j = parse_body(body);
  GenerationRequest r;
  const Json* p = field(j, "prompt");
  if (!p) bad_field("prompt", "missing");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    r.prompt = (*p)[0].get<std::string>();
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
    for (size_t i = 0; i < p->size(); ++i)
      r.prompt_ids.push_back(
          int(get_int((*p)[i], "prompt[" + std::to_string(i) + "]", 0, INT32_MAX)));
  } else {
    bad_field("prompt", "expected a string, an array of one string or an array of token ids");
  }
  if (const Json* v = field(j, "echo"); v && get_bool(*v, "echo"))
    bad_field("echo", "is not supported");
  if (const Json* v = field(j, "suffix"); v && !get_string(*v, "suffix").empty())
    bad_field("suffix", "is not supported");
  common_fields(j, limits, r);
  return r;
}

}  // namespace moeflux::server
