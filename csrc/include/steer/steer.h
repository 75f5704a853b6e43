/* steer: the C ABI of the STEER kernels, for inference stacks that are not Python.
 *
 * Plain C99 (also valid C++): link libsteer (CMake target `steer`) and include this header.
 * The functions take raw pointers with explicit shapes and element strides; the caller owns all
 * memory; every function returns STEER_OK (0) or an error code, which steer_error_string() turns
 * into text. They run on the CPU, threaded with OpenMP, and are safe to call from several
 * threads at once. Examples: examples/c/sample_logits.c.
 *
 * The maths (docs/design.md section 1; steer/reference.py is the oracle). A batch row b has K streams
 * of logits z_k over a vocabulary: stream 0 is the expert on the prompt, then the base model on
 * the prompt, then the expert on each negative context, with weights w[b, k], e.g.
 * (1 + gamma, -gamma, -eta / M, ..., -eta / M). Then
 *
 *   s(v) = sum_{k : w != 0} w[b,k] * zz_k(v)   zz: -inf where w > 0 stays -inf (the token is
 *                                              forbidden); -inf where w < 0 becomes -1e4
 *   s(v) = -inf  where plausibility_alpha > 0 and z_0(v) < log(alpha) + max z_0
 *   s(v) = -inf  for vocab_size <= v < vocab (LM-head padding: never read, never sampled)
 *
 * steer_combine writes s, or its log_softmax (normalize != 0). steer_sample draws one token per
 * row from softmax(s / temperature) restricted to the top_k best tokens, then to the top_p
 * nucleus, by the Gumbel-max trick with counter-based Philox noise keyed by (seed, row key,
 * step, token id): the same tokens as every steer backend (Python "torch", "cpp", "triton",
 * "cuda"), and a row's tokens never depend on the other rows of the batch.
 *
 * Errors, in this precedence: a NaN logit anywhere (STEER_ERR_NAN), then a +inf logit anywhere
 * (STEER_ERR_POSINF), each naming the first (row, stream) in row-major order; then the first row
 * whose s is -inf everywhere (STEER_ERR_EMPTY_ROW; stream -1). Only columns < vocab_size are
 * inspected. Outputs are unspecified after an error.
 */
#ifndef STEER_STEER_H
#define STEER_STEER_H

#include <stdint.h>

#if defined(_WIN32) && defined(STEER_BUILDING_LIBRARY)
#define STEER_API __declspec(dllexport)
#elif defined(_WIN32)
#define STEER_API __declspec(dllimport)
#elif defined(__GNUC__)
#define STEER_API __attribute__((visibility("default")))
#else
#define STEER_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes (the same numbers as steer::Status of the C++ headers). */
enum steer_status {
  STEER_OK = 0,
  STEER_ERR_NAN = 1,              /* a logit is NaN: *err_row, *err_stream name the first */
  STEER_ERR_POSINF = 2,           /* a logit is +inf: *err_row, *err_stream name the first */
  STEER_ERR_EMPTY_ROW = 3,        /* row *err_row has no token with a finite score */
  STEER_ERR_INVALID_ARGUMENT = 4, /* a shape, stride, pointer, dtype, weight or parameter out of range */
  STEER_ERR_CUDA = 5,             /* (CUDA builds only; never returned by these CPU functions) */
  STEER_ERR_OUT_OF_MEMORY = 6     /* a scratch allocation failed */
};

/* Storage types of the logits (the `dtype` arguments). Half types are read natively. */
enum steer_dtype {
  STEER_DTYPE_FLOAT32 = 0,
  STEER_DTYPE_FLOAT16 = 1, /* IEEE binary16 */
  STEER_DTYPE_BFLOAT16 = 2 /* the top 16 bits of a float32 */
};

/* What -inf becomes in a negatively weighted stream. */
#define STEER_NEG_INF_FLOOR (-1.0e4f)

/* Combine [B, K, V] logits into float32 scores out [B, V].
 *
 *   logits        element (b, k, v) at ((const T*)logits)[b*stride_b + k*stride_k + v*stride_v],
 *                 T given by dtype (enum steer_dtype); strides in elements, >= 0.
 *   batch, streams, vocab   B >= 0, K >= 1, V >= 1 (V may include LM-head padding).
 *   weights       float32, (b, k) at weights[b*weight_stride_b + k]; weight_stride_b = 0 shares
 *                 one [K] vector by all rows. Finite.
 *   vocab_size    the tokenizer's vocabulary, 1 <= vocab_size <= V; columns beyond it are -inf.
 *   normalize     nonzero: out = log_softmax(s) (log-probabilities); zero: out = s.
 *   plausibility_alpha  in [0, 1); 0 turns the floor off.
 *   out           (b, v) at out[b*out_stride_b + v], out_stride_b >= V; must not overlap logits.
 *   num_threads   <= 0: the OpenMP default.
 *   err_row, err_stream  may be NULL; set to -1, or to the offending row / stream on error.
 */
STEER_API int steer_combine(const void* logits, int dtype, int64_t batch, int64_t streams, int64_t vocab,
                            int64_t stride_b, int64_t stride_k, int64_t stride_v, const float* weights,
                            int64_t weight_stride_b, int64_t vocab_size, int normalize, float plausibility_alpha,
                            float* out, int64_t out_stride_b, int num_threads, int64_t* err_row,
                            int64_t* err_stream);

/* Draw one token per row. The arguments up to plausibility_alpha are those of steer_combine.
 *
 *   temperature   0, greedy (argmax of s, lowest id on ties), or in [1e-5, 1e4]: the scores are
 *                 float32, and near 0 they overflow when divided by it.
 *   top_k         >= 0; 0 (or >= vocab_size) is off. Ties with the k-th best are all kept.
 *   top_p         in (0, 1]; 1 is off.
 *   seeds, row_keys, steps  [batch] each: the noise of row b is keyed by (seeds[b], row_keys[b],
 *                 steps[b]) (seeds and row keys as 64-bit patterns, steps modulo 2^32). Give a
 *                 sample the same row key at every step and a new step each time.
 *   tokens        [batch] out: token ids, each < vocab_size.
 *   logprobs      [batch] out, or NULL: the log-probability of each token under the distribution
 *                 it was drawn from (for temperature 0: the filtered distribution at temperature 1).
 */
STEER_API int steer_sample(const void* logits, int dtype, int64_t batch, int64_t streams, int64_t vocab,
                           int64_t stride_b, int64_t stride_k, int64_t stride_v, const float* weights,
                           int64_t weight_stride_b, int64_t vocab_size, float plausibility_alpha, float temperature,
                           int64_t top_k, float top_p, const int64_t* seeds, const int64_t* row_keys,
                           const int64_t* steps, int64_t* tokens, float* logprobs, int num_threads, int64_t* err_row,
                           int64_t* err_stream);

/* A static, human-readable description of a return code ("unknown steer status" for others). */
STEER_API const char* steer_error_string(int status);

/* The library's version, e.g. "0.1.0". */
STEER_API const char* steer_version(void);

#ifdef __cplusplus
}
#endif

#endif /* STEER_STEER_H */
