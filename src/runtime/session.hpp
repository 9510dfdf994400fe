// Session: one sequence evaluated on an Engine — its position, KV cache and recurrent state
// (preallocated for its context), the ids evaluated so far, the logits of its last evaluated
// token, and position checkpoints (runtime/checkpoints.hpp) to go back to an earlier position.
//
// State files (state_save / state_load, runtime/session_state.cpp): the ids, the logits of the
// last position, the KV cache of positions [0, position) and the recurrent state, behind a
// versioned header naming the model (its shape and its resident tensors' checksums) and followed
// by a CRC-32C of everything before it. A state is validated whole (size, version, model,
// checksum, ids, position within the context) before the session is changed.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/checkpoints.hpp"
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
  // after an error the session must be clear()ed before further use. With `pick`, also what it
  // asks of the logits (forward.hpp: the greedy pick, or the k best the sampler draws from),
  // computed by the engine's backend where the logits are (a GPU's pick saves scanning a
  // vocabulary's logits on the host).
  const std::vector<float>& eval_token(int token, LogitsPick* pick = nullptr);

  // Evaluates `tokens` at the next positions in chunks of the engine's prefill_chunk: per chunk
  // and MoE layer every expert the chunk selected is fetched once and run over its tokens
  // together. Returns the last token's logits; with all_logits, also every position's
  // ([n, vocab]).
  // With `pick`, also the last token's pick (as eval_token's).
  const std::vector<float>& eval_prompt(std::span<const int> tokens,
                                        std::vector<float>* all_logits = nullptr,
                                        LogitsPick* pick = nullptr);

  // Forgets the sequence (position 0, empty caches, no checkpoints). The expert cache is kept.
  void clear();

  // Removes positions [from, to) (to < 0: to the end). Only the end of the sequence can be
  // removed (to == position()); anything else throws moeflux::Error. Lossless: afterwards the
  // session is as if only ids [0, from) had been evaluated, and logits() holds position
  // from - 1's logits (from > 0). The recurrent layers resume from the latest checkpoint at or
  // before `from` (or from position 0) and the ids between it and `from` are evaluated again.
  void memory_seq_rm(int from, int to = -1);

  // Stores a checkpoint at the current position. eval_prompt of more than one id stores one at
  // its end (where a follow-up request or turn resumes); decode (eval_token, eval_batch)
  // stores none.
  void checkpoint();
  // Bytes of checkpoints kept at most (least recently used evicted first); 0 keeps none.
  void set_checkpoint_budget(size_t bytes) { checkpoints_.set_budget(bytes); }
  CheckpointStats checkpoint_stats() const { return checkpoints_.stats(); }

  // Bytes state_save writes for the current position.
  size_t state_size() const;
  // The state as bytes (state_size() of them).
  std::vector<std::byte> state_save() const;
  // Replaces the session's sequence with a saved one. Throws moeflux::Error, leaving the
  // session unchanged, for a state that is truncated, of another version or model, corrupt
  // (checksum), or longer than this session's context.
  void state_load(std::span<const std::byte> state);
  // The same through a file, written atomically (core/output_file.hpp). Errors name the path.
  void state_save_file(const std::string& path) const;
  void state_load_file(const std::string& path);

  int position() const { return pos_; }
  // The ids at positions [0, position()).
  const std::vector<int>& tokens() const { return tokens_; }
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
  void allocate_state();            // state, logits and scratch for context_ positions
  size_t recurrent_floats() const;  // the recurrent layers' state, all of them
  void save_recurrent(float* dst) const;
  void load_recurrent(const float* src);

  std::unique_ptr<Engine> own_engine_;
  Engine& engine_;
  size_t context_;
  std::unique_ptr<BackendBuffer> state_buffer_;
  SequenceState state_;
  std::vector<float> logits_;
  std::unique_ptr<HostPin> logits_pin_;  // logits_ page-locked for the GPU's copies; after it
  std::vector<float*> dst_;              // scratch: logits destinations of a chunk
  std::vector<int> tokens_;  // ids at [0, pos_); capacity context_ (decode does not allocate)
  CheckpointStore checkpoints_{kDefaultCheckpointBudget};
  int pos_ = 0;

 public:
  static constexpr size_t kDefaultCheckpointBudget = size_t(256) << 20;
};

// Batched decode: evaluates tokens[i] at the next position of sessions[i], all in one forward
// pass of their engine (which they must share; at most max_rows() sessions): each MoE layer
// fetches the union of their experts once. Each session's logits() then holds its next-token
// logits. Throws like eval_token; then every session must be clear()ed.
void eval_batch(std::span<Session* const> sessions, std::span<const int> tokens);

}  // namespace moeflux
