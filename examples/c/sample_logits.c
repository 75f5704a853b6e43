/* Sample STEER tokens from a logits buffer through libsteer's C ABI (csrc/include/steer/steer.h).
 *
 * Two batch rows, each with K = 3 streams over a padded vocabulary of V = 1000 (the tokenizer has
 * 990 tokens): the expert on the prompt (weight 1 + gamma), the base model on the prompt
 * (-gamma) and the expert on one negative context (-eta). Each row has a clear winner, a token
 * the expert forbids (-inf) and huge garbage in the padding columns. The program checks combine
 * (including a -inf in the base stream, which is floored rather than propagated), greedy
 * decoding, that sampling never draws a forbidden or padding token over many seeds, top-k and
 * top-p, bfloat16 input, and the error path; it prints what it checked and exits non-zero if any
 * check failed.
 *
 *   cmake -S . -B build/c -DSTEER_BUILD_PYTHON=OFF && cmake --build build/c && ctest --test-dir build/c
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steer/steer.h"

enum { B = 2, K = 3, V = 1000, VOCAB = 990, FORBIDDEN = 5, FLOORED = 6, DRAWS = 2000 };

static const int64_t WINNER[B] = {123, 777};

static int failures = 0;

#define CHECK(condition, ...)                              \
  do {                                                     \
    if (!(condition)) {                                    \
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
      ++failures;                                          \
    }                                                      \
  } while (0)

/* A small deterministic generator (no rand(): its sequence differs between C libraries). */
static uint32_t lcg_state = 12345u;
static float uniform_pm2(void) {
  lcg_state = lcg_state * 1664525u + 1013904223u;
  return (float)(lcg_state >> 8) / 16777216.0f * 4.0f - 2.0f;
}

static float logits[B][K][V];

static void fill_logits(void) {
  for (int b = 0; b < B; ++b) {
    for (int k = 0; k < K; ++k) {
      for (int v = 0; v < V; ++v) logits[b][k][v] = uniform_pm2();
      for (int v = VOCAB; v < V; ++v) logits[b][k][v] = 100.0f; /* LM-head padding: never sampled */
    }
    logits[b][0][WINNER[b]] += 12.0f;       /* the expert is sure about this one */
    logits[b][0][FORBIDDEN] = -INFINITY;    /* the expert forbids this one: never drawn */
  }
}

static const float WEIGHTS[K] = {1.2f, -0.2f, -0.2f}; /* gamma = 0.2, eta = 0.2, one negative stream */

/* The strides of the [B, K, V] array above, in elements. */
#define LOGITS_ARGS(ptr, dtype) (ptr), (dtype), B, K, V, (int64_t)K * V, V, 1, WEIGHTS, 0, VOCAB

static int sample(const void* data, int dtype, float temperature, int64_t top_k, float top_p, int64_t seed,
                  int64_t step, int64_t tokens[B], float logprobs[B], int64_t* err_row, int64_t* err_stream) {
  const int64_t seeds[B] = {seed, seed};
  const int64_t row_keys[B] = {1000, 1001};
  const int64_t steps[B] = {step, step};
  return steer_sample(LOGITS_ARGS(data, dtype), 0.0f, temperature, top_k, top_p, seeds, row_keys, steps, tokens,
                      logprobs, 0, err_row, err_stream);
}

static void check_combine(void) {
  static float out[B][V];
  int64_t err_row, err_stream;
  /* -inf in the base stream (weight -gamma < 0) is floored at STEER_NEG_INF_FLOOR, so the token
   * gets a large finite bonus (-gamma * -1e4) instead of +inf. */
  logits[0][1][FLOORED] = logits[1][1][FLOORED] = -INFINITY;
  int status = steer_combine(LOGITS_ARGS(&logits[0][0][0], STEER_DTYPE_FLOAT32), 1, 0.0f, &out[0][0], V, 0,
                             &err_row, &err_stream);
  CHECK(status == STEER_OK, "steer_combine: %s", steer_error_string(status));
  for (int b = 0; b < B; ++b) {
    CHECK(isfinite(out[b][FLOORED]), "combine row %d: a -inf in the base stream must stay finite", b);
    CHECK(out[b][FLOORED] > -1e-3f, "combine row %d: the floored token should take all the mass", b);
  }
  logits[0][1][FLOORED] = logits[1][1][FLOORED] = 0.0f;
  status = steer_combine(LOGITS_ARGS(&logits[0][0][0], STEER_DTYPE_FLOAT32), 1, 0.0f, &out[0][0], V, 0, &err_row,
                         &err_stream);
  CHECK(status == STEER_OK, "steer_combine: %s", steer_error_string(status));
  for (int b = 0; b < B; ++b) {
    double total = 0.0;
    int64_t best = 0;
    for (int v = 0; v < V; ++v) {
      if (out[b][v] > out[b][best]) best = v;
      if (isfinite(out[b][v])) total += exp(out[b][v]);
    }
    CHECK(best == WINNER[b], "combine row %d: argmax %lld, want %lld", b, (long long)best, (long long)WINNER[b]);
    CHECK(fabs(total - 1.0) < 1e-4, "combine row %d: probabilities sum to %f", b, total);
    CHECK(isinf(out[b][FORBIDDEN]) && out[b][FORBIDDEN] < 0, "combine row %d: forbidden token not -inf", b);
    for (int v = VOCAB; v < V; ++v) CHECK(isinf(out[b][v]), "combine row %d: padding column %d not -inf", b, v);
  }
  printf("steer_combine: log-probabilities normalised, winner first, -inf rules and padding ok\n");
}

static void check_greedy(void) {
  int64_t tokens[B];
  float logprobs[B];
  int64_t err_row, err_stream;
  int status = sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, 0.0f, 10, 1.0f, 0, 0, tokens, logprobs, &err_row,
                      &err_stream);
  CHECK(status == STEER_OK, "greedy: %s", steer_error_string(status));
  for (int b = 0; b < B; ++b) {
    CHECK(tokens[b] == WINNER[b], "greedy row %d: token %lld, want %lld", b, (long long)tokens[b],
          (long long)WINNER[b]);
    CHECK(logprobs[b] <= 0.0f && logprobs[b] > -1.0f, "greedy row %d: log-probability %f", b, logprobs[b]);
  }
  printf("steer_sample greedy: tokens %lld %lld (log-probabilities %.4f %.4f)\n", (long long)tokens[0],
         (long long)tokens[1], logprobs[0], logprobs[1]);
}

/* bfloat16 = the top half of a float32 (truncation is fine for this test). */
static void check_bfloat16(void) {
  static uint16_t half[B][K][V];
  for (int b = 0; b < B; ++b) {
    for (int k = 0; k < K; ++k) {
      for (int v = 0; v < V; ++v) {
        uint32_t bits;
        memcpy(&bits, &logits[b][k][v], sizeof bits);
        half[b][k][v] = (uint16_t)(bits >> 16);
      }
    }
  }
  int64_t tokens[B];
  float logprobs[B];
  int status = sample(&half[0][0][0], STEER_DTYPE_BFLOAT16, 0.0f, 0, 1.0f, 0, 0, tokens, logprobs, NULL, NULL);
  CHECK(status == STEER_OK, "bfloat16 greedy: %s", steer_error_string(status));
  for (int b = 0; b < B; ++b) {
    CHECK(tokens[b] == WINNER[b], "bfloat16 greedy row %d: token %lld", b, (long long)tokens[b]);
  }
  printf("steer_sample bfloat16: greedy tokens match float32\n");
}

/* Draws DRAWS times per row; the winner must take at least min_winner_percent of the draws and
 * at least min_distinct tokens must appear (at most 2 * top_k with top-k: two rows). */
static void check_sampling(float temperature, int64_t top_k, float top_p, int min_winner_percent, int min_distinct) {
  int winner_draws = 0, distinct = 0;
  static int seen[V];
  memset(seen, 0, sizeof seen);
  for (int64_t seed = 0; seed < DRAWS; ++seed) {
    int64_t tokens[B];
    float logprobs[B];
    int status = sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, temperature, top_k, top_p, seed, 3, tokens, logprobs,
                        NULL, NULL);
    if (status != STEER_OK) {
      CHECK(0, "sampling seed %lld: %s", (long long)seed, steer_error_string(status));
      return;
    }
    for (int b = 0; b < B; ++b) {
      const int64_t t = tokens[b];
      CHECK(t >= 0 && t < VOCAB, "seed %lld row %d: token %lld outside the vocabulary", (long long)seed, b,
            (long long)t);
      if (t < 0 || t >= VOCAB) return;
      CHECK(t != FORBIDDEN, "seed %lld row %d: drew the forbidden token", (long long)seed, b);
      CHECK(logprobs[b] <= 0.0f && isfinite(logprobs[b]), "seed %lld row %d: log-probability %f", (long long)seed, b,
            logprobs[b]);
      winner_draws += t == WINNER[b];
      distinct += !seen[t]++;
    }
  }
  CHECK(winner_draws * 100 >= min_winner_percent * 2 * DRAWS, "T=%g top_k=%lld top_p=%g: winner drawn %d times of %d",
        temperature, (long long)top_k, top_p, winner_draws, 2 * DRAWS);
  CHECK(distinct >= min_distinct, "T=%g top_k=%lld top_p=%g: only %d distinct tokens over %d draws", temperature,
        (long long)top_k, top_p, distinct, 2 * DRAWS);
  if (top_k > 0) CHECK(distinct <= 2 * top_k, "top_k=%lld: %d distinct tokens", (long long)top_k, distinct);
  printf("steer_sample T=%g top_k=%lld top_p=%g: %d draws, winner %d times, %d distinct tokens, never forbidden or "
         "padding\n",
         temperature, (long long)top_k, top_p, 2 * DRAWS, winner_draws, distinct);
}

static void check_reproducible(void) {
  int64_t first[B], second[B];
  float lp[B];
  sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, 3.0f, 0, 1.0f, 42, 7, first, lp, NULL, NULL);
  sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, 3.0f, 0, 1.0f, 42, 7, second, lp, NULL, NULL);
  CHECK(first[0] == second[0] && first[1] == second[1], "same seed and step, different tokens");
  printf("steer_sample: same (seed, row key, step), same tokens\n");
}

static void check_errors(void) {
  int64_t tokens[B], err_row = 0, err_stream = 0;
  float logprobs[B];
  const float saved = logits[1][2][17];
  logits[1][2][17] = NAN;
  int status = sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, 1.0f, 0, 1.0f, 0, 0, tokens, logprobs, &err_row,
                      &err_stream);
  CHECK(status == STEER_ERR_NAN, "NaN logit: got status %d (%s)", status, steer_error_string(status));
  CHECK(err_row == 1 && err_stream == 2, "NaN logit: reported row %lld stream %lld, want 1, 2", (long long)err_row,
        (long long)err_stream);
  static float out[B][V];
  status = steer_combine(LOGITS_ARGS(&logits[0][0][0], STEER_DTYPE_FLOAT32), 0, 0.0f, &out[0][0], V, 0, NULL, NULL);
  CHECK(status == STEER_ERR_NAN, "steer_combine on a NaN logit: got status %d", status);
  logits[1][2][17] = saved;

  status = sample(&logits[0][0][0], STEER_DTYPE_FLOAT32, 1.0f, 0, 0.0f, 0, 0, tokens, logprobs, NULL, NULL);
  CHECK(status == STEER_ERR_INVALID_ARGUMENT, "top_p = 0: got status %d", status);
  status = sample(&logits[0][0][0], 7, 1.0f, 0, 1.0f, 0, 0, tokens, logprobs, NULL, NULL);
  CHECK(status == STEER_ERR_INVALID_ARGUMENT, "dtype 7: got status %d", status);
  CHECK(strcmp(steer_error_string(12345), "unknown steer status") == 0, "steer_error_string of an unknown code");
  printf("errors: NaN -> \"%s\" at row 1, stream 2; bad arguments -> \"%s\"\n", steer_error_string(STEER_ERR_NAN),
         steer_error_string(STEER_ERR_INVALID_ARGUMENT));
}

int main(void) {
  printf("libsteer %s\n", steer_version());
  fill_logits();
  check_combine();
  check_greedy();
  check_bfloat16();
  check_sampling(1.0f, 0, 1.0f, 90, 2);   /* the winner is 14 nats ahead: nearly always drawn */
  check_sampling(3.0f, 0, 1.0f, 2, 100);  /* T = 3 flattens it: the winner about 10%, many others */
  check_sampling(3.0f, 10, 1.0f, 2, 6);   /* ... but top-k keeps 10 tokens per row */
  check_sampling(3.0f, 0, 0.9f, 2, 50);
  check_reproducible();
  check_errors();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  printf("all checks passed\n");
  return EXIT_SUCCESS;
}
