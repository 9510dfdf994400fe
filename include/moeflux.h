/* moeflux C API: models, engines and sessions (src/runtime/engine.hpp, session.hpp) behind
 * opaque handles.
 *
 * Errors: every function that can fail returns a moeflux_status; MOEFLUX_OK is 0. The message
 * of the last failure on the calling thread is moeflux_last_error() (valid until that thread's
 * next failing call). No C++ exception crosses this boundary. A NULL handle or pointer argument
 * is MOEFLUX_ERR_INVALID_ARGUMENT, never a crash.
 *
 * Threads: a model and an engine may be shared by any threads; one session is used by one
 * thread at a time. Free sessions before their engine, engines before their model.
 */
#ifndef MOEFLUX_H
#define MOEFLUX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moeflux_status {
  MOEFLUX_OK = 0,
  MOEFLUX_ERR_INVALID_ARGUMENT = 1, /* a NULL handle, a bad option, a token out of range */
  MOEFLUX_ERR_FAILED = 2,           /* files, I/O, a full context, a corrupt state, ... */
  MOEFLUX_ERR_OUT_OF_MEMORY = 3,
  MOEFLUX_ERR_INTERNAL = 4
} moeflux_status;

typedef struct moeflux_model moeflux_model;         /* an opened package (immutable) */
typedef struct moeflux_engine moeflux_engine;       /* backend, weights, expert caches */
typedef struct moeflux_session moeflux_session;     /* one sequence */
typedef struct moeflux_tokenizer moeflux_tokenizer; /* the package's tokenizer */

/* The message of the last failure on this thread ("" if none). */
const char* moeflux_last_error(void);

typedef struct moeflux_engine_options {
  size_t threads;         /* compute threads; 0 = all hardware threads */
  int active_experts;     /* experts per token; 0 = the model's top-k */
  size_t prefill_chunk;   /* rows per forward pass (prompt chunk, batch width); 0 = the
                             backend's default: 512 on a GPU, 256 on the CPU */
  size_t context;         /* positions a session may hold; 0 = the model's */
  size_t ram_cache_bytes; /* RAM expert cache; 0 = none */
} moeflux_engine_options;

/* The defaults of the command-line tools. */
void moeflux_engine_options_default(moeflux_engine_options* opts);

moeflux_status moeflux_model_open(const char* package_dir, moeflux_model** out);
void moeflux_model_free(moeflux_model* model); /* NULL: nothing */
int moeflux_model_vocab_size(const moeflux_model* model);
int moeflux_model_context(const moeflux_model* model); /* max_position_embeddings */

moeflux_status moeflux_tokenizer_open(const moeflux_model* model, moeflux_tokenizer** out);
void moeflux_tokenizer_free(moeflux_tokenizer* tok);
/* Writes up to `cap` ids to `ids`; *n receives how many the text has (call again with a larger
 * buffer when *n > cap). Special tokens in the text are parsed. */
moeflux_status moeflux_tokenize(const moeflux_tokenizer* tok, const char* text, int32_t* ids,
                                size_t cap, size_t* n);
/* The text of `ids`, NUL-terminated, into `buf` of `cap` bytes; *len receives its length
 * without the NUL (call again with a larger buffer when *len >= cap). */
moeflux_status moeflux_detokenize(const moeflux_tokenizer* tok, const int32_t* ids, size_t n,
                                  char* buf, size_t cap, size_t* len);

moeflux_status moeflux_engine_create(const moeflux_model* model, const moeflux_engine_options* opts,
                                     moeflux_engine** out);
void moeflux_engine_free(moeflux_engine* engine);

/* A session with room for `context` positions (0: the engine's). */
moeflux_status moeflux_session_create(moeflux_engine* engine, size_t context,
                                      moeflux_session** out);
void moeflux_session_free(moeflux_session* session);

/* Evaluates `n` ids at the next positions (a prompt in chunks; n = 1 is one decode step). */
moeflux_status moeflux_session_eval(moeflux_session* s, const int32_t* ids, size_t n);
/* The logits of the last evaluated position [vocab], valid until the session changes. */
const float* moeflux_session_logits(const moeflux_session* s);
int moeflux_session_position(const moeflux_session* s);
moeflux_status moeflux_session_clear(moeflux_session* s);
/* Removes positions [from, to) (to < 0: to the end; only the end can be removed), losslessly
 * for recurrent layers through the session's checkpoints. */
moeflux_status moeflux_session_seq_rm(moeflux_session* s, int from, int to);
moeflux_status moeflux_session_checkpoint(moeflux_session* s);

size_t moeflux_session_state_size(const moeflux_session* s);
/* Writes the state (moeflux_session_state_size bytes) to `dst` of `cap` bytes. */
moeflux_status moeflux_session_state_save(const moeflux_session* s, void* dst, size_t cap);
/* Replaces the session's sequence; a bad state changes nothing. */
moeflux_status moeflux_session_state_load(moeflux_session* s, const void* src, size_t size);
moeflux_status moeflux_session_state_save_file(const moeflux_session* s, const char* path);
moeflux_status moeflux_session_state_load_file(moeflux_session* s, const char* path);

/* One decode step of `n` sessions of one engine together: ids[i] at the next position of
 * sessions[i]; each MoE layer fetches the union of their experts once. */
moeflux_status moeflux_eval_batch(moeflux_session* const* sessions, const int32_t* ids, size_t n);

typedef struct moeflux_stats {
  uint64_t expert_requests;  /* expert records compute asked for (engine, all sessions) */
  uint64_t cache_hits;       /* found in a cache tier */
  uint64_t prefetch_hits;    /* brought by a prefetch */
  uint64_t misses;           /* read on demand */
  uint64_t storage_reads;    /* records read from the package's files */
  uint64_t record_bytes;     /* bytes of one expert record */
  uint64_t checkpoints;      /* this session's position checkpoints held */
  uint64_t checkpoint_bytes; /* their memory */
} moeflux_stats;
moeflux_status moeflux_session_stats(const moeflux_session* s, moeflux_stats* out);

#ifdef __cplusplus
}
#endif

#endif /* MOEFLUX_H */
