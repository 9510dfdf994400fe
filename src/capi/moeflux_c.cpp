// The C API (include/moeflux.h) over Model, Engine, Session and Tokenizer: every entry point
// catches every exception and turns it into a status and a thread-local message.
#include <filesystem>
#include <new>
#include <string>

#include "core/error.hpp"
#include "moeflux.h"
#include "runtime/session.hpp"
#include "text/tokenizer.hpp"

struct moeflux_model {
  std::unique_ptr<moeflux::Model> m;
};
struct moeflux_engine {
  std::unique_ptr<moeflux::Engine> e;
};
struct moeflux_session {
  std::unique_ptr<moeflux::Session> s;
};
struct moeflux_tokenizer {
  std::unique_ptr<moeflux::Tokenizer> t;
};

namespace {

thread_local std::string g_error;

moeflux_status fail_with(moeflux_status st, const std::string& msg) {
  g_error = msg;
  return st;
}

// Runs `f`, mapping exceptions to statuses.
template <class F>
moeflux_status guarded(F&& f) {
  try {
    f();
    return MOEFLUX_OK;
  } catch (const moeflux::UsageError& e) {
    return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, e.what());
  } catch (const moeflux::Error& e) {
    return fail_with(MOEFLUX_ERR_FAILED, e.what());
  } catch (const std::bad_alloc&) {
    return fail_with(MOEFLUX_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail_with(MOEFLUX_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail_with(MOEFLUX_ERR_INTERNAL, "unknown error");
  }
}

#define MF_C_REQUIRE(p)                                                               \
  do {                                                                                \
    if (!(p)) return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, #p " must not be NULL"); \
  } while (0)

}  // namespace

extern "C" {

const char* moeflux_last_error(void) {
  return g_error.c_str();
}

void moeflux_engine_options_default(moeflux_engine_options* o) {
  if (!o) return;
  *o = {};  // prefill_chunk 0: the backend's default
}

moeflux_status moeflux_model_open(const char* dir, moeflux_model** out) {
  MF_C_REQUIRE(dir);
  MF_C_REQUIRE(out);
  *out = nullptr;
  return guarded([&] { *out = new moeflux_model{moeflux::Model::open(dir)}; });
}

void moeflux_model_free(moeflux_model* m) {
  delete m;
}

int moeflux_model_vocab_size(const moeflux_model* m) {
  return m ? m->m->config().vocab_size : 0;
}

int moeflux_model_context(const moeflux_model* m) {
  return m ? m->m->config().max_position_embeddings : 0;
}

moeflux_status moeflux_tokenizer_open(const moeflux_model* m, moeflux_tokenizer** out) {
  MF_C_REQUIRE(m);
  MF_C_REQUIRE(out);
  *out = nullptr;
  return guarded([&] {
    for (const auto& f : m->m->package().manifest().tokenizer_files)
      if (std::filesystem::path(f).filename() == "tokenizer.json") {
        const std::string path = (std::filesystem::path(m->m->package().dir()) / f).string();
        *out = new moeflux_tokenizer{
            std::make_unique<moeflux::Tokenizer>(moeflux::Tokenizer::from_file(path))};
        return;
      }
    moeflux::fail(m->m->package().dir() + ": the package has no tokenizer");
  });
}

void moeflux_tokenizer_free(moeflux_tokenizer* t) {
  delete t;
}

moeflux_status moeflux_tokenize(const moeflux_tokenizer* t, const char* text, int32_t* ids,
                                size_t cap, size_t* n) {
  MF_C_REQUIRE(t);
  MF_C_REQUIRE(text);
  MF_C_REQUIRE(n);
  if (cap > 0 && !ids) return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, "ids must not be NULL");
  return guarded([&] {
    const std::vector<int> v = t->t->encode(text);
    *n = v.size();
    for (size_t i = 0; i < v.size() && i < cap; ++i) ids[i] = v[i];
  });
}

moeflux_status moeflux_detokenize(const moeflux_tokenizer* t, const int32_t* ids, size_t n,
                                  char* buf, size_t cap, size_t* len) {
  MF_C_REQUIRE(t);
  MF_C_REQUIRE(len);
  if (n > 0 && !ids) return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, "ids must not be NULL");
  if (cap > 0 && !buf) return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, "buf must not be NULL");
  return guarded([&] {
    const std::vector<int> v(ids, ids + n);
    for (int id : v)
      if (id < 0 || id >= t->t->vocab_size())
        moeflux::usage_fail("token id " + std::to_string(id) + " is out of range");
    const std::string s = t->t->decode(v);
    *len = s.size();
    if (cap == 0) return;
    const size_t k = std::min(s.size(), cap - 1);
    std::copy_n(s.data(), k, buf);
    buf[k] = '\0';
  });
}

moeflux_status moeflux_engine_create(const moeflux_model* m, const moeflux_engine_options* o,
                                     moeflux_engine** out) {
  MF_C_REQUIRE(m);
  MF_C_REQUIRE(out);
  *out = nullptr;
  return guarded([&] {
    moeflux::EngineOptions eo;
    if (o) {
      eo.threads = o->threads;
      eo.active_experts = o->active_experts;
      eo.prefill_chunk = o->prefill_chunk;
      eo.context = o->context;
      eo.stream.ram_cache_bytes = o->ram_cache_bytes;
      if (o->active_experts < 0) moeflux::usage_fail("active_experts must not be negative");
    }
    *out = new moeflux_engine{std::make_unique<moeflux::Engine>(*m->m, eo)};
  });
}

void moeflux_engine_free(moeflux_engine* e) {
  delete e;
}

moeflux_status moeflux_session_create(moeflux_engine* e, size_t context, moeflux_session** out) {
  MF_C_REQUIRE(e);
  MF_C_REQUIRE(out);
  *out = nullptr;
  return guarded(
      [&] { *out = new moeflux_session{std::make_unique<moeflux::Session>(*e->e, context)}; });
}

void moeflux_session_free(moeflux_session* s) {
  delete s;
}

moeflux_status moeflux_session_eval(moeflux_session* s, const int32_t* ids, size_t n) {
  MF_C_REQUIRE(s);
  if (n > 0 && !ids) return fail_with(MOEFLUX_ERR_INVALID_ARGUMENT, "ids must not be NULL");
  return guarded([&] {
    const std::vector<int> v(ids, ids + n);
    const int vocab = s->s->model().config().vocab_size;
    for (int id : v)
      if (id < 0 || id >= vocab)
        moeflux::usage_fail("token id " + std::to_string(id) + " is out of range (vocabulary " +
                            std::to_string(vocab) + ")");
    s->s->eval_prompt(v);
  });
}

const float* moeflux_session_logits(const moeflux_session* s) {
  return s ? s->s->logits().data() : nullptr;
}

int moeflux_session_position(const moeflux_session* s) {
  return s ? s->s->position() : 0;
}

moeflux_status moeflux_session_clear(moeflux_session* s) {
  MF_C_REQUIRE(s);
  return guarded([&] { s->s->clear(); });
}

moeflux_status moeflux_session_seq_rm(moeflux_session* s, int from, int to) {
  MF_C_REQUIRE(s);
  return guarded([&] { s->s->memory_seq_rm(from, to); });
}

moeflux_status moeflux_session_checkpoint(moeflux_session* s) {
  MF_C_REQUIRE(s);
  return guarded([&] { s->s->checkpoint(); });
}

size_t moeflux_session_state_size(const moeflux_session* s) {
  return s ? s->s->state_size() : 0;
}

moeflux_status moeflux_session_state_save(const moeflux_session* s, void* dst, size_t cap) {
  MF_C_REQUIRE(s);
  MF_C_REQUIRE(dst);
  return guarded([&] {
    const std::vector<std::byte> v = s->s->state_save();
    if (v.size() > cap)
      moeflux::usage_fail("the state needs " + std::to_string(v.size()) +
                          " bytes, the buffer has " + std::to_string(cap));
    std::copy(v.begin(), v.end(), static_cast<std::byte*>(dst));
  });
}

moeflux_status moeflux_session_state_load(moeflux_session* s, const void* src, size_t size) {
  MF_C_REQUIRE(s);
  MF_C_REQUIRE(src);
  return guarded([&] { s->s->state_load({static_cast<const std::byte*>(src), size}); });
}

moeflux_status moeflux_session_state_save_file(const moeflux_session* s, const char* path) {
  MF_C_REQUIRE(s);
  MF_C_REQUIRE(path);
  return guarded([&] { s->s->state_save_file(path); });
}

moeflux_status moeflux_session_state_load_file(moeflux_session* s, const char* path) {
  MF_C_REQUIRE(s);
  MF_C_REQUIRE(path);
  return guarded([&] { s->s->state_load_file(path); });
}

moeflux_status moeflux_eval_batch(moeflux_session* const* sessions, const int32_t* ids, size_t n) {
  if (n == 0) return MOEFLUX_OK;
  MF_C_REQUIRE(sessions);
  MF_C_REQUIRE(ids);
  return guarded([&] {
    std::vector<moeflux::Session*> ss(n);
    std::vector<int> tok(ids, ids + n);
    for (size_t i = 0; i < n; ++i) {
      if (!sessions[i]) moeflux::usage_fail("sessions[" + std::to_string(i) + "] is NULL");
      ss[i] = sessions[i]->s.get();
    }
    moeflux::eval_batch(ss, tok);
  });
}

moeflux_status moeflux_session_stats(const moeflux_session* s, moeflux_stats* out) {
  MF_C_REQUIRE(s);
  MF_C_REQUIRE(out);
  return guarded([&] {
    const moeflux::ExpertStreamer& st = s->s->streamer();
    const moeflux::LayerStreamStats t = st.stats().total();
    const moeflux::CheckpointStats c = s->s->checkpoint_stats();
    *out = {t.requests,        t.cache_hits(), t.prefetch_hits, t.misses, st.stats().storage_reads,
            st.record_bytes(), c.count,        c.bytes};
  });
}

}  // extern "C"
