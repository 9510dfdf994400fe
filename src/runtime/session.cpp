#include "runtime/session.hpp"

#include "core/error.hpp"

namespace moeflux {

Session::Session(Engine& engine, size_t context)
    : engine_(engine), context_(context > 0 ? context : engine.context()) {
  allocate_state();
}

Session::Session(const Model& model, const EngineOptions& opts)
    : own_engine_(std::make_unique<Engine>(model, opts)),
      engine_(*own_engine_),
      context_(engine_.context()) {
  allocate_state();
}

void Session::allocate_state() {
  state_ = engine_.new_sequence(context_, &state_buffer_);
  logits_.assign(engine_.config().vocab_size, 0.0f);  // never resized: pinned below
  logits_pin_ = engine_.backend().pin_host(logits_.data(), logits_.size() * sizeof(float));
  dst_.reserve(engine_.max_rows());
  tokens_.reserve(context_);
}

Session::~Session() = default;

void Session::clear() {
  engine_.reset_sequence(state_);
  engine_.cancel_prefetches();
  pos_ = 0;
  tokens_.clear();
  checkpoints_.clear();
}

size_t Session::recurrent_floats() const {
  size_t n = 0;
  for (const LayerState& ls : state_.layers)
    if (ls.delta.S.rank)
      n += ls.delta.conv.rows() * ls.delta.conv.cols() + ls.delta.S.rows() * ls.delta.S.cols();
  return n;
}

void Session::save_recurrent(float* dst) const {
  for (const LayerState& ls : state_.layers) {
    if (!ls.delta.S.rank) continue;
    engine_.download(ls.delta.conv, dst, ls.delta.conv.rows());
    dst += ls.delta.conv.rows() * ls.delta.conv.cols();
    engine_.download(ls.delta.S, dst, ls.delta.S.rows());
    dst += ls.delta.S.rows() * ls.delta.S.cols();
  }
}

void Session::load_recurrent(const float* src) {
  for (const LayerState& ls : state_.layers) {
    if (!ls.delta.S.rank) continue;
    engine_.upload(src, ls.delta.conv, ls.delta.conv.rows());
    src += ls.delta.conv.rows() * ls.delta.conv.cols();
    engine_.upload(src, ls.delta.S, ls.delta.S.rows());
    src += ls.delta.S.rows() * ls.delta.S.cols();
  }
}

void Session::checkpoint() {
  const size_t rec = recurrent_floats();
  Checkpoint* c = checkpoints_.begin(pos_, (rec + logits_.size()) * sizeof(float));
  if (!c) return;  // larger than the whole budget
  c->recurrent.resize(rec);
  save_recurrent(c->recurrent.data());
  c->logits = logits_;
  checkpoints_.commit(c);
}

void Session::memory_seq_rm(int from, int to) {
  if (to < 0) to = pos_;
  if (from < 0 || from > to || to > pos_)
    fail("memory_seq_rm: positions [" + std::to_string(from) + ", " + std::to_string(to) +
         ") are not within the sequence's " + std::to_string(pos_));
  if (to != pos_)
    fail("memory_seq_rm: only the end of the sequence can be removed ([" + std::to_string(from) +
         ", " + std::to_string(pos_) + "), not [" + std::to_string(from) + ", " +
         std::to_string(to) + "))");
  if (from == pos_) return;
  checkpoints_.drop_after(from);
  engine_.cancel_prefetches();
  const Checkpoint* c = checkpoints_.latest_at_or_before(from);
  // Ids [start, from) are evaluated again from the recurrent state (and logits) of `start`. A
  // model without recurrent layers keeps its KV cache and needs only the logits of from - 1:
  // from a checkpoint at `from`, else by evaluating id from - 1 again.
  if (recurrent_floats() == 0 && c && c->position != from) c = nullptr;
  int start = c ? c->position : 0;
  if (!c && recurrent_floats() == 0) start = std::max(0, from - 1);
  if (c) {
    load_recurrent(c->recurrent.data());
    std::copy(c->logits.begin(), c->logits.end(), logits_.begin());
  } else if (start == 0) {
    engine_.reset_sequence(state_);
  }
  pos_ = start;
  const std::vector<int> replay(tokens_.begin() + start, tokens_.begin() + from);
  tokens_.resize(start);
  if (!replay.empty()) {
    eval_prompt(replay);
    checkpoints_.count_restore(replay.size());
  } else if (c) {
    checkpoints_.count_restore(0);
  }
}

void Session::check_tokens(std::span<const int> tokens) const {
  const ModelConfig& c = engine_.config();
  for (int token : tokens)
    if (token < 0 || token >= c.vocab_size)
      fail("token id " + std::to_string(token) + " is out of range (vocabulary size " +
           std::to_string(c.vocab_size) + ")");
  if (static_cast<size_t>(pos_) + tokens.size() > context_)
    fail("context is full: " + std::to_string(pos_) + " + " + std::to_string(tokens.size()) +
         " tokens exceed the " + std::to_string(context_) + " positions of this session (--ctx)");
}

const std::vector<float>& Session::eval_token(int token, LogitsPick* pick) {
  const int t[1] = {token};
  return eval_prompt(t, nullptr, pick);
}

const std::vector<float>& Session::eval_prompt(std::span<const int> tokens,
                                               std::vector<float>* all_logits, LogitsPick* pick) {
  check_tokens(tokens);
  const size_t V = engine_.config().vocab_size, chunk = engine_.max_rows();
  if (all_logits) all_logits->assign(tokens.size() * V, 0.0f);
  for (size_t b = 0; b < tokens.size(); b += chunk) {
    const std::span<const int> part = tokens.subspan(b, std::min(chunk, tokens.size() - b));
    const size_t T = part.size();
    const SequenceChunk seq{&state_, pos_, 0, T};
    dst_.clear();
    size_t first = T - 1;
    if (all_logits) {
      first = 0;
      for (size_t t = 0; t < T; ++t) dst_.push_back(all_logits->data() + (b + t) * V);
    } else if (b + T == tokens.size()) {
      dst_.push_back(logits_.data());
    }
    // The pick of the last token, by the backend (only its logits row: not all_logits).
    const bool pick_here = pick && !all_logits && b + T == tokens.size();
    engine_.forward(part, {&seq, 1}, first, dst_,
                    pick_here ? std::span<LogitsPick>(pick, 1) : std::span<LogitsPick>());
    pos_ += static_cast<int>(T);
    tokens_.insert(tokens_.end(), part.begin(), part.end());
  }
  if (all_logits && !tokens.empty())
    std::copy_n(all_logits->data() + (tokens.size() - 1) * V, V, logits_.data());
  if (pick && all_logits && !tokens.empty()) pick_from_host(logits_, *pick);  // the last row
  if (tokens.size() > 1) checkpoint();
  return logits_;
}

void eval_batch(std::span<Session* const> sessions, std::span<const int> tokens) {
  MF_ASSERT(sessions.size() == tokens.size());
  if (sessions.empty()) return;
  Engine& engine = sessions[0]->engine_;
  if (sessions.size() > engine.max_rows())
    fail("a batch of " + std::to_string(sessions.size()) + " sessions exceeds the engine's " +
         std::to_string(engine.max_rows()) + " rows");
  std::vector<SequenceChunk> seqs(sessions.size());
  std::vector<float*> dst(sessions.size());
  for (size_t i = 0; i < sessions.size(); ++i) {
    Session& s = *sessions[i];
    if (&s.engine_ != &engine) fail("eval_batch: the sessions do not share one engine");
    for (size_t j = 0; j < i; ++j)
      if (sessions[j] == &s) fail("eval_batch: a session appears twice in one batch");
    s.check_tokens(tokens.subspan(i, 1));
    seqs[i] = {&s.state_, s.pos_, i, 1};
    dst[i] = s.logits_.data();
  }
  engine.forward(tokens, seqs, 0, dst);
  for (size_t i = 0; i < sessions.size(); ++i) {
    ++sessions[i]->pos_;
    sessions[i]->tokens_.push_back(tokens[i]);
  }
}

}  // namespace moeflux
