// Session: one sequence evaluated on an Engine — its position, KV cache and recurrent state
// (preallocated for its context), and the logits of its last evaluated token.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "runtime/engine.hpp"

namespace moeflux {

class Session {
 public:
  // A session on a shared engine, with room for `context` positions (0: the engine's).
  explicit Session(Engine& engine, size_t context = 0);
  // A session with an engine of its own (tools that evaluate one sequence).
  Session(const Model& model, const EngineOptions& opts);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Evaluates `token` at the next position and returns the logits [vocab]. Throws
  // moeflux::Error for an out-of-range token, a full context or an expert read failure;
  // after an error the session must be clear()ed before further use.
  const std::vector<float>& eval_token(int token);

  // Evaluates `tokens` at the next positions in chunks of the engine's prefill_chunk: per chunk
  // and MoE layer every expert the chunk selected is fetched once and run over its tokens
  // together. Returns the last token's logits; with all_logits, also every position's
  // ([n, vocab]).
  const std::vector<float>& eval_prompt(std::span<const int> tokens,
                                        std::vector<float>* all_logits = nullptr);

  // Forgets the sequence (position 0, empty caches). The expert cache is kept.
  void clear();

  int position() const { return pos_; }
  size_t context() const { return context_; }
  int active_experts() const { return engine_.active_experts(); }
  const Model& model() const { return engine_.model(); }
  Engine& engine() { return engine_; }
  ExpertStreamer& streamer() { return engine_.streamer(); }
  const ExpertStreamer& streamer() const { return engine_.streamer(); }
  // Routing of the last evaluated token, per layer (empty for dense layers).
  const std::vector<RoutingRecord>& last_routing() const { return state_.last_routing; }
  // Per-layer timings of the engine since it was created (empty unless EngineOptions::timing).
  const ForwardTimings& timings() const { return engine_.timings(); }
  const std::vector<float>& logits() const { return logits_; }

 private:
  friend void eval_batch(std::span<Session* const>, std::span<const int>);
  void check_tokens(std::span<const int> tokens) const;
  void allocate_state();  // state, logits and scratch for context_ positions

  std::unique_ptr<Engine> own_engine_;
  Engine& engine_;
  size_t context_;
  std::unique_ptr<BackendBuffer> state_buffer_;
  SequenceState state_;
  std::vector<float> logits_;
  std::vector<float*> dst_;  // scratch: logits destinations of a chunk
  int pos_ = 0;
};

// Batched decode: evaluates tokens[i] at the next position of sessions[i], all in one forward
// pass of their engine (which they must share; at most max_rows() sessions): each MoE layer
// fetches the union of their experts once. Each session's logits() then holds its next-token
// logits. Throws like eval_token; then every session must be clear()ed.
void eval_batch(std::span<Session* const> sessions, std::span<const int> tokens);

}  // namespace moeflux
