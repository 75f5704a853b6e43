// steer: the STEER sample op as a raw-pointer C++ API (no torch, no pybind11; see combine.h for
// the conventions shared by every op: pointers plus element strides, caller-owned memory,
// Status codes).
//
// For a batch row b, with s(v) the unnormalised combined score of combine.h (normalize = false:
// the -inf rules, the vocabulary padding and the plausibility floor included):
//
//   f(v)   = s(v) / T                        (T = temperature, a float32 division; f = s if T == 0)
//   top-k: keep v with f(v) >= the k-th largest f (ties with the k-th all kept); 0 = off
//   top-p: of what top-k kept, with p = softmax(f) over it, sorted by p descending, keep a token
//          when the probability mass strictly before it is < top_p; the most probable token is
//          always kept, and so is every token tied with the least probable kept one; top_p >= 1
//          is off
//   token  = argmax over kept v of f(v) + g(v), g(v) = -log(-log(u(v))), lowest id on ties,
//            u = philox_uniform(seeds[b], row_keys[b], steps[b], v)  (steer/philox.h)
//   T == 0: token = argmax_v s(v), lowest id on ties (greedy; the filters run at T = 1 only for
//           the log-probability)
//   logprob = log_softmax over kept v of f(v), at the token
//
// which is steer.reference.sample / steer.reference.draw, token for token (up to the last ulp of
// the logs and exps: ties closer than that may break differently).

#pragma once

#include <cstdint>

#include "steer/combine.h"

namespace steer {

// CPU kernel (csrc/cpu/sample.cpp): one pass over the K * V logits of each row, OpenMP over rows
// and, when rows are few, vocabulary chunks. With top_k > 0 the pass keeps only the candidates
// that can still be among the k best, and noise is drawn for those only; with top-p alone the
// combined row is kept in a per-thread buffer and the nucleus found by histograms over it (no
// sort of the vocabulary); with neither, the Gumbel race runs inside the pass.
//
//   logits, dtype, B, K, V, strides, weights, weight_stride_b, vocab_size, plausibility_alpha:
//            as for combine_cpu.
//   temperature  0 (greedy) or in [kMinTemperature, kMaxTemperature] = [1e-5, 1e4].
//   top_k        >= 0 (0 = off; >= vocab_size is off too).
//   top_p        in (0, 1] (>= 1 = off).
//   seeds, row_keys, steps  [B] int64 each: the Philox key of each row (seeds and row_keys used
//            as their 64-bit patterns, steps modulo 2^32).
//   tokens   [B] int64 out: the drawn token ids (all < vocab_size).
//   logprobs [B] float32 out, may be null: each token's log-probability under the distribution
//            it was drawn from (for T == 0, the filtered distribution at T = 1).
//   err_row, err_stream  as for combine_cpu.
//
// Errors: those of combine_cpu, same precedence (NaN anywhere, then +inf anywhere, then the first
// row with no finite score), and STEER_ERR_INVALID_ARGUMENT for bad shapes, strides, null
// pointers, non-finite weights, or sampling parameters out of range. On error tokens and
// logprobs are unspecified. B == 0 is valid and does nothing. If a weighted sum overflows float
// (finite logits near 3e38), the result is unspecified but memory-safe.
Status sample_cpu(const void* logits, DType dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                  int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                  int64_t vocab_size, float plausibility_alpha, float temperature, int64_t top_k, float top_p,
                  const int64_t* seeds, const int64_t* row_keys, const int64_t* steps, int64_t* tokens,
                  float* logprobs, int64_t* err_row, int64_t* err_stream, int num_threads);

}  // namespace steer
