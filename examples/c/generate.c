/* The C API end to end (built and run by the tests: ctest c_api_example).
 *   generate PACKAGE_DIR STATE_FILE
 * Opens the package, evaluates a prompt, decodes greedily (one session alone, then two sessions
 * in one batch), saves the state to a file and loads it into a fresh session, whose next logits
 * must equal the original's bit for bit; then checks that misuse is an error code and a
 * message, not a crash. Prints the generated text; exits 0 when every check holds. */
#include <moeflux.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                   \
  do {                                                                                \
    moeflux_status st_ = (call);                                                      \
    if (st_ != MOEFLUX_OK) {                                                          \
      fprintf(stderr, "%s failed (%d): %s\n", #call, (int)st_, moeflux_last_error()); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

static int argmax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: generate PACKAGE_DIR STATE_FILE\n");
    return 2;
  }
  moeflux_model* model = NULL;
  moeflux_tokenizer* tok = NULL;
  moeflux_engine* engine = NULL;
  moeflux_session *a = NULL, *b = NULL, *c = NULL;
  CHECK(moeflux_model_open(argv[1], &model));
  CHECK(moeflux_tokenizer_open(model, &tok));
  moeflux_engine_options opts;
  moeflux_engine_options_default(&opts);
  opts.threads = 2;
  opts.context = 256;
  CHECK(moeflux_engine_create(model, &opts, &engine));
  CHECK(moeflux_session_create(engine, 0, &a));
  CHECK(moeflux_session_create(engine, 0, &b));

  int32_t ids[64];
  size_t n = 0;
  CHECK(moeflux_tokenize(tok, "In the beginning God created", ids, 64, &n));
  if (n == 0 || n > 64) return 1;
  CHECK(moeflux_session_eval(a, ids, n));
  CHECK(moeflux_session_eval(b, ids, n));
  const int vocab = moeflux_model_vocab_size(model);

  /* Greedy decode of both sessions in one batch: they must stay identical. */
  int32_t out[16];
  for (int i = 0; i < 16; ++i) {
    out[i] = argmax(moeflux_session_logits(a), vocab);
    moeflux_session* both[2] = {a, b};
    int32_t next[2] = {out[i], argmax(moeflux_session_logits(b), vocab)};
    if (next[0] != next[1]) {
      fprintf(stderr, "batched sessions diverged at step %d\n", i);
      return 1;
    }
    CHECK(moeflux_eval_batch(both, next, 2));
  }
  char text[512];
  size_t len = 0;
  CHECK(moeflux_detokenize(tok, out, 16, text, sizeof text, &len));
  printf("%s\n", text);

  /* State round trip through a file. */
  CHECK(moeflux_session_state_save_file(a, argv[2]));
  CHECK(moeflux_session_create(engine, 0, &c));
  CHECK(moeflux_session_state_load_file(c, argv[2]));
  if (moeflux_session_position(c) != moeflux_session_position(a) ||
      memcmp(moeflux_session_logits(a), moeflux_session_logits(c), sizeof(float) * vocab) != 0) {
    fprintf(stderr, "the loaded state differs\n");
    return 1;
  }
  const int32_t t = argmax(moeflux_session_logits(a), vocab);
  CHECK(moeflux_session_eval(a, &t, 1));
  CHECK(moeflux_session_eval(c, &t, 1));
  if (memcmp(moeflux_session_logits(a), moeflux_session_logits(c), sizeof(float) * vocab) != 0) {
    fprintf(stderr, "the next logits after loading differ\n");
    return 1;
  }
  /* Cut back and go on: lossless through the checkpoint at the end of the prompt. */
  CHECK(moeflux_session_seq_rm(a, (int)n, -1));
  CHECK(moeflux_session_eval(a, &out[0], 1));
  moeflux_stats st;
  CHECK(moeflux_session_stats(a, &st));
  printf("experts requested %llu, read %llu; checkpoints %llu\n",
         (unsigned long long)st.expert_requests, (unsigned long long)st.storage_reads,
         (unsigned long long)st.checkpoints);

  /* Misuse: codes and messages. */
  moeflux_model* none = NULL;
  if (moeflux_model_open("/nonexistent/package", &none) != MOEFLUX_ERR_FAILED || none ||
      strstr(moeflux_last_error(), "/nonexistent/package") == NULL) {
    fprintf(stderr, "opening a missing package: %s\n", moeflux_last_error());
    return 1;
  }
  const int32_t bad = vocab + 5;
  if (moeflux_session_eval(a, &bad, 1) != MOEFLUX_ERR_INVALID_ARGUMENT ||
      moeflux_session_eval(NULL, &bad, 1) != MOEFLUX_ERR_INVALID_ARGUMENT ||
      moeflux_session_state_load(c, "junk", 4) != MOEFLUX_ERR_FAILED ||
      moeflux_session_seq_rm(a, 1, 2) != MOEFLUX_ERR_FAILED) {
    fprintf(stderr, "misuse was not reported: %s\n", moeflux_last_error());
    return 1;
  }
  moeflux_session_free(c);
  moeflux_session_free(b);
  moeflux_session_free(a);
  moeflux_engine_free(engine);
  moeflux_tokenizer_free(tok);
  moeflux_model_free(model);
  printf("ok\n");
  return 0;
}
