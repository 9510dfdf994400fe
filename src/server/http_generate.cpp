// The generation routes of HttpServer: a validated request becomes a Job; its events become one
// JSON reply or a stream of server-sent events.
//
// Both kinds of reply are written through a chunked content provider, so that a write notices a
// client that went away and cancels the job: a stream writes each delta as it comes; a
// non-streamed reply writes a space (JSON allows leading whitespace) about once a second while
// it waits, and the whole reply at the end. Until the job's first event the status is open: a
// job that fails before any text answers with its own status and error object.
#include <httplib.h>

#include <chrono>

#include "core/error.hpp"
#include "server/api_error.hpp"
#include "server/http_server.hpp"
#include "server/http_util.hpp"
#include "server/openai_json.hpp"
#include "server/output_parser.hpp"

namespace moeflux::server {

namespace {

using namespace std::chrono_literals;

std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string sse(const Json& j) {
  return "data: " + dump(j) + "\n\n";
}

// What a reply has produced so far, and how it is being written.
struct Reply {
  std::shared_ptr<Job> job;
  std::string id, model;
  long long created = 0;
  bool chat = false, stream = false, include_usage = false;
  OutputParser parser;
  ParsedDelta whole;              // non-streamed: everything
  ParsedDelta prefilled;          // streamed: the tool calls of a continued message
  std::string text;               // completions: everything
  size_t tool_calls = 0;          // tool calls begun so far
  size_t ended_calls = 0;         // tool calls that ended so far
  bool started = false;           // streamed: the role chunk was written
  std::optional<JobEvent> first;  // the event taken to decide the status

  Reply(std::shared_ptr<Job> j, std::string think_open, std::string think_close, bool tools)
      : job(std::move(j)),
        parser(std::move(think_open), std::move(think_close), tools,
               job->params.starts_in_reasoning) {}

  std::string call_id(size_t index) const { return "call_" + id + "_" + std::to_string(index); }

  // Counts the calls `d` begins and names those it ends (a call's id follows from its index).
  void note(ParsedDelta& d) {
    for (const ToolCallDelta& t : d.tool_call_deltas) tool_calls += !t.name.empty();
    for (ToolCall& c : d.tool_calls) c.id = call_id(ended_calls++);
  }

  // The SSE chunks of a parsed delta: its tool calls as their pieces, one chunk per call.
  std::string chunks(const ParsedDelta& d) const {
    std::string out;
    if (!d.reasoning.empty())
      out += sse(chat_chunk(id, model, created, {{"reasoning_content", d.reasoning}}, ""));
    if (!d.content.empty())
      out += sse(chat_chunk(id, model, created, {{"content", d.content}}, ""));
    for (size_t i = 0; i < d.tool_call_deltas.size();) {
      // The consecutive pieces of one call go out together.
      ToolCallDelta t = d.tool_call_deltas[i];
      while (++i < d.tool_call_deltas.size() && d.tool_call_deltas[i].index == t.index)
        t.arguments += d.tool_call_deltas[i].arguments;
      out += sse(chat_chunk(id, model, created,
                            {{"tool_calls", Json::array({tool_call_delta_json(
                                                t, t.name.empty() ? "" : call_id(t.index))})}},
                            ""));
    }
    return out;
  }

  void absorb(ParsedDelta d) {
    whole.reasoning += d.reasoning;
    whole.content += d.content;
    for (auto& c : d.tool_calls) whole.tool_calls.push_back(std::move(c));
  }

  // Handles one event; returns the bytes to write and sets *end at the last one.
  std::string on_event(JobEvent& e, bool* end) {
    *end = false;
    if (e.kind == JobEvent::Failed) {
      *end = true;
      const Json err = error_body(e.text, "server_error");
      return stream ? sse(err) + "data: [DONE]\n\n" : dump(err);
    }
    if (e.kind == JobEvent::Text) {
      if (!chat) {
        text += e.text;
        return stream ? sse(completion_chunk(id, model, created, e.text, "")) : "";
      }
      ParsedDelta d = parser.push(e.text);
      note(d);
      if (!stream) {
        absorb(std::move(d));
        return "";
      }
      return chunks(d);
    }
    // Done.
    *end = true;
    const JobResult& r = e.result;
    std::string out;
    if (!chat) {
      if (!stream) return dump(completion_response(id, model, text, r));
      Json last = completion_chunk(id, model, created, "", r.finish_reason);
      out = sse(last);
    } else {
      ParsedDelta d = parser.finish();
      note(d);
      if (!stream) {
        absorb(std::move(d));
        return dump(chat_response(id, model, whole, r));
      }
      out = chunks(d);
      const std::string finish = tool_calls > 0 ? "tool_calls" : r.finish_reason;
      Json last = chat_chunk(id, model, created, Json::object(), finish);
      last["timings"] = timings_json(r);
      out += sse(last);
    }
    if (include_usage) {
      Json u = chat ? chat_chunk(id, model, created, Json::object(), "")
                    : completion_chunk(id, model, created, "", "");
      u["choices"] = Json::array();
      u["usage"] = usage_json(r);
      out += sse(u);
    }
    return out + "data: [DONE]\n\n";
  }
};

}  // namespace

void HttpServer::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const GenerationRequest g = chat ? parse_chat_request(req.body, opts_.limits)
                                   : parse_completion_request(req.body, opts_.limits);
  std::string prefill;
  std::shared_ptr<Job> job = make_job(g, &prefill);
  scheduler_->submit(job);

  auto reply = std::make_shared<Reply>(job, std::string(model_.chat->think_open()),
                                       std::string(model_.chat->think_close()),
                                       chat && g.tool_choice != "none");
  reply->id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  reply->model = opts_.model_id;
  reply->created = unix_time();
  reply->chat = chat;
  reply->stream = g.stream;
  reply->include_usage = g.include_usage;
  if (!prefill.empty()) {
    // A continued message: tool calls written in it count; its text was the client's.
    ParsedDelta d = reply->parser.push(prefill);
    d.content.clear();
    d.reasoning.clear();
    reply->note(d);
    if (g.stream) {
      reply->first = JobEvent{JobEvent::Text, "", 0, {}};
      reply->prefilled = std::move(d);
    } else {
      reply->absorb(std::move(d));
    }
  }

  // The status is decided by the first event (a job that fails before writing anything gets
  // its own status), waiting while the client is still there.
  if (!reply->first) {
    for (;;) {
      auto e = job->next(200ms);
      if (e) {
        reply->first = std::move(*e);
        break;
      }
    }
  }
  if (reply->first->kind == JobEvent::Failed) {
    send_error(res,
               ApiError(reply->first->status, reply->first->text, "",
                        reply->first->status >= 500 ? "server_error" : "invalid_request_error"));
    --in_flight_;
    return;
  }

  auto last_write =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      g.stream ? "text/event-stream" : "application/json",
      [reply, last_write](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& s) {
          if (s.empty()) return true;
          *last_write = std::chrono::steady_clock::now();
          return sink.write(s.data(), s.size());
        };
        std::optional<JobEvent> e;
        if (reply->first) {
          e = std::move(reply->first);
          reply->first.reset();
          if (reply->stream && !reply->started) {
            reply->started = true;
            const Json role = reply->chat ? chat_chunk(reply->id, reply->model, reply->created,
                                                       {{"role", "assistant"}, {"content", ""}}, "")
                                          : Json();
            std::string head = reply->chat ? sse(role) : "";
            // Tool calls of a continued message go out first.
            if (reply->chat) head += reply->chunks(reply->prefilled);
            if (!write(head)) {
              reply->job->cancel();
              return false;
            }
          }
        } else {
          e = reply->job->next(200ms);
        }
        if (!e) {
          // Nothing new: a non-streamed reply proves the client is still there once a second.
          if (!reply->stream &&
              std::chrono::steady_clock::now() - *last_write > std::chrono::seconds(1) &&
              !write(" ")) {
            reply->job->cancel();
            return false;
          }
          return true;
        }
        bool end = false;
        if (!write(reply->on_event(*e, &end))) {
          reply->job->cancel();
          return false;
        }
        if (end) sink.done();
        return true;
      },
      [this, reply](bool) {
        reply->job->cancel();  // a no-op once it is done; else the client went away
        --in_flight_;
      });
}

}  // namespace moeflux::server
