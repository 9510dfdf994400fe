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
  logits_.assign(engine_.config().vocab_size, 0.0f);
  dst_.reserve(engine_.max_rows());
}

Session::~Session() = default;

void Session::clear() {
  engine_.reset_sequence(state_);
  engine_.cancel_prefetches();
  pos_ = 0;
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

const std::vector<float>& Session::eval_token(int token) {
  const int t[1] = {token};
  return eval_prompt(t);
}

const std::vector<float>& Session::eval_prompt(std::span<const int> tokens,
                                               std::vector<float>* all_logits) {
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
    engine_.forward(part, {&seq, 1}, first, dst_);
    pos_ += static_cast<int>(T);
  }
  if (all_logits && !tokens.empty())
    std::copy_n(all_logits->data() + (tokens.size() - 1) * V, V, logits_.data());
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
  for (Session* s : sessions) ++s->pos_;
}

}  // namespace moeflux
