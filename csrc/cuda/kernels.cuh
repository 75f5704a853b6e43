// steer CUDA kernels: the fused STEER sampler and the multi-block combine.
//
// One source for two compilers (see portable.cuh): nvcc builds it into steer._C_cuda
// (csrc/cuda/sample.cu, combine.cu), and a host compiler builds it with STEER_EMULATE into
// csrc/cuda/emulate/driver.cpp, which tests/ops/test_cuda.py runs against steer.reference.
//
// ----------------------------------------------------------------------------------------------
// What is computed (steer/reference.py is the oracle; the header steer/sample_cuda.h the contract)
//
//   s(v) = sum_{k : w_k != 0} w_k * zz_k(v)   (-inf floored to NEG_INF_FLOOR where w_k < 0)
//   s(v) = -inf  where z_0(v) < log(alpha) + max z_0        (plausibility, alpha > 0)
//   f(v) = s(v) / T  (IEEE division; T == 0: f = s, the filters then act at T = 1)
//   top-k keeps f >= the k-th largest f (ties all kept), top-p keeps f >= f*, where
//   f* = min { x : mass of tokens with f > x is < top_p } under softmax of the top-k-kept f,
//   token = argmax over kept v of f(v) + g(v)   (g: Philox Gumbel noise, steer/philox.h)
//           or argmax_v s(v) when T == 0;  ties go to the lowest id
//   logprob = f(token) - logsumexp over kept f
//
// ----------------------------------------------------------------------------------------------
// Design
//
// Every row's vocabulary is cut into chunks of kChunk = 1024 tokens, a count that depends on
// the vocabulary size only, never on the batch, so a row's result is a function of the row
// alone (bit for bit: every reduction below runs in a fixed order, and histograms are integer).
//
// Stage 1, sample_chunk_kernel, grid (chunks, rows): one block per (chunk, row) reads the K
// streams of its 1024 tokens once (16-byte loads when the rows are 16-byte aligned and
// stride_v == 1, coalesced scalar loads otherwise), keeps the 1024 f values in registers
// (kVec = 4 fp32 or 8 fp16/bf16 per thread) and writes per-chunk partials:
//   - max f and its lowest id (greedy; the logsumexp's shift), sum of exp(f - max);
//   - the Gumbel winner of the chunk (argmax f + g) for unfiltered sampling and top-p;
//     Philox is skipped for tokens that cannot win (f < chunk max - 20: g lies in [-2.9, 16.7]);
//   - with top-k (k <= kMaxTopKCandidates) or top-p: the chunk's m best tokens (m = k, plus up to
//     kTieExtra tokens tied with the m-th; m = kTopPCandidates for top-p alone), found by a radix
//     select on the order-preserving 32-bit keys of f in registers (4 passes, 8-bit digits,
//     warp-aggregated shared-memory histograms), and the m-th best value "cut" of the chunk;
//   - with top-k or top-p: the row of f values itself, [B, vocab_size] float32 (rows padded to
//     8 floats), for exact second passes that never re-read the K streams.
// Small batches still fill the GPU: B = 1 and V = 128256 is 126 blocks.
//
// Stage 2, sample_merge_kernel, one block per row:
//   - no filter: merge (max, sum) into the logsumexp and the chunk winners into the token;
//   - top-k: the k-th largest of the candidates (radix select, count histograms) is the exact
//     k-th largest of the row, because every chunk sent its k best; the kept set is the
//     candidates >= it unless a chunk that had to drop tokens dropped one equal to it (a tie
//     beyond kTieExtra): then the exact path below runs;
//   - top-p on the top-k set: a radix select with probability-mass histograms (mass in 2^-40
//     fixed point, so sums are exact and order-free) finds f* among the kept candidates;
//   - top-p alone: the same select over the chunks' 32 best gives f*, which is exact when it is
//     above every truncated chunk's cut (then every token >= f* is a candidate);
//   - otherwise (a nucleus wider than the candidates, ties, or k > kMaxTopKCandidates) the exact
//     path: the same radix selects run over the stored [B, V] row of f (3 passes each, never
//     the K streams, never a sort), then one pass sums the kept mass and draws the Gumbel winner
//     among kept tokens, reusing a chunk's stage-1 winner whenever that winner is itself kept.
//
// Errors go to the caller's err buffer (three uint64: NaN key, +inf key, empty row; see
// steer/combine.h), with atomicMin so that "the first one" is well defined.

#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "portable.cuh"
#include "steer/combine.h"
#include "steer/philox.h"

namespace steer {
namespace kern {

constexpr int kChunk = 1024;               // tokens per (chunk, row) block, a multiple of 256
constexpr int kMergeThreads = 512;         // threads of the per-row merge block
constexpr int kFinishThreads = 256;        // threads of combine's normalisation blocks
constexpr int kMaxTopKCandidates = 256;    // top_k above this goes straight to the exact path
constexpr int kTieExtra = 32;              // extra tokens tied with a chunk's k-th kept per chunk
constexpr int kTopPCandidates = 32;        // per-chunk candidates for top-p alone
constexpr int kStreamBatch = 4;            // stream loads in flight per thread
constexpr int kBins = 2048;                // merge radix digits: 11 + 11 + 10 bits
constexpr uint32_t kNoBin = 0xffffffffu;
constexpr unsigned long long kNoError = ~0ull;
constexpr float kMassScale = 1099511627776.0f;  // 2^40: fixed-point probability mass
constexpr float kGumbelReach = 20.0f;           // > max g - min g = 16.64 + 2.81

// ------------------------------------------------------------------------------ small helpers

SK_DEV bool is_finite(float x) { return x > -INFINITY && x < INFINITY; }  // false for NaN

// Order-preserving key: a < b (as floats, -0 == +0) iff key(a) < key(b). Callers pass +0 for 0.
SK_DEV uint32_t order_key(float x) {
  const uint32_t u = sk::f2u(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SK_DEV float key_value(uint32_t k) { return sk::u2f((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

SK_DEV float plus_zero(float x) { return x == 0.0f ? 0.0f : x; }

SK_DEV unsigned long long mass_fixed(float f, float lse) {
  return static_cast<unsigned long long>(expf(f - lse) * kMassScale + 0.5f);
}

SK_DEV float gumbel(uint64_t seed, uint64_t row_key, uint32_t step, uint32_t token) {
  const float u = philox_uniform(seed, row_key, step, token);
  return -logf(-logf(u));
}

struct ArgMax {
  float value;
  int32_t index;
};
struct Winner {  // a Gumbel race: value = f + g
  float value;
  int32_t index;
  float f;
};

struct BetterArgMax {
  SK_DEV ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return (a.value > b.value || (a.value == b.value && a.index < b.index)) ? a : b;
  }
};
struct BetterWinner {
  SK_DEV Winner operator()(const Winner& a, const Winner& b) const {
    return (a.value > b.value || (a.value == b.value && a.index < b.index)) ? a : b;
  }
};
struct MaxOp {
  SK_DEV float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <class T>
struct AddOp {
  SK_DEV T operator()(T a, T b) const { return a + b; }
};
struct MinU32 {
  SK_DEV uint32_t operator()(uint32_t a, uint32_t b) const { return a < b ? a : b; }
};
struct MaxI32 {
  SK_DEV int32_t operator()(int32_t a, int32_t b) const { return a > b ? a : b; }
};

SK_DEV ArgMax no_argmax() { return ArgMax{-INFINITY, INT32_MAX}; }
SK_DEV Winner no_winner() { return Winner{-INFINITY, INT32_MAX, -INFINITY}; }

// ------------------------------------------------------------------------------ block primitives
// Deterministic: fixed butterfly and fixed warp order, so every thread gets the same bits.

constexpr int kScratchWords = 64;  // 16 bytes per warp, up to 32 warps

template <class T, class Op>
SK_DEV T warp_allreduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, sk::shfl_xor(v, offset));
  return v;
}

template <int NT, class T, class Op>
SK_DEV T block_allreduce(T v, Op op, unsigned long long* scratch_words) {
  static_assert(NT % 32 == 0 && NT / 32 * sizeof(T) <= kScratchWords * 8, "scratch too small");
  T* scratch = reinterpret_cast<T*>(scratch_words);
  const int lane = sk::tid() & 31, warp = sk::tid() >> 5;
  v = warp_allreduce(v, op);
  if (lane == 0) scratch[warp] = v;
  sk::block_sync();
  T r = scratch[0];
#pragma unroll
  for (int w = 1; w < NT / 32; ++w) r = op(r, scratch[w]);
  sk::block_sync();
  return r;
}

// Exclusive prefix sum in thread order; *total gets the block's sum.
template <int NT, class T>
SK_DEV T block_exclusive_scan(T v, unsigned long long* scratch_words, T* total) {
  static_assert(NT / 32 * sizeof(T) <= kScratchWords * 8, "scratch too small");
  T* scratch = reinterpret_cast<T*>(scratch_words);
  const int lane = sk::tid() & 31, warp = sk::tid() >> 5;
  T inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const T y = sk::shfl_up(inclusive, offset);
    if (lane >= offset) inclusive += y;
  }
  if (lane == 31) scratch[warp] = inclusive;
  sk::block_sync();
  T before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) {
    const T x = scratch[w];
    if (w < warp) before += x;
    all += x;
  }
  sk::block_sync();
  *total = all;
  return before + inclusive - v;
}

// Histogram of the bins NBINS-1 .. 0 (descending), weights W: finds the first bin, from the top,
// at which carried + (weight of the bins above and including it) reaches target. Returns true and
// sets *bin and *above (carried + the weight strictly above *bin) if it exists; *total gets the
// histogram's total weight either way.
template <int NT, int NBINS, class W>
SK_DEV bool find_crossing(const W* hist, W carried, W target, unsigned long long* scratch, uint32_t* sel_bin,
                          W* sel_above, uint32_t* bin, W* above_out, W* total) {
  static_assert(NBINS % NT == 0, "bins per thread");
  constexpr int kPerThread = NBINS / NT;
  const int t = sk::tid();
  W h[kPerThread];
  W local = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    h[j] = hist[NBINS - 1 - (t * kPerThread + j)];
    local += h[j];
  }
  W above = carried + block_exclusive_scan<NT>(local, scratch, total);
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    if (above < target && target - above <= h[j]) {
      *sel_bin = static_cast<uint32_t>(NBINS - 1 - (t * kPerThread + j));
      *sel_above = above;
    }
    above += h[j];
  }
  sk::block_sync();
  const bool found = carried + *total >= target;
  if (found) {
    *bin = *sel_bin;
    *above_out = *sel_above;
  }
  sk::block_sync();  // sel_* may be rewritten by the next call
  return found;
}

// Adds (1, q) to bin d of (count, mass) for every lane with d != kNoBin, one shared-memory atomic
// per distinct bin and warp: lanes that share a bin are summed by pointer jumping first, so that
// many equal values do not serialise on one address. Must be called by all 32 lanes.
SK_DEV void histogram_add(uint32_t d, unsigned long long q, uint32_t* count, unsigned long long* mass) {
  const int lane = sk::tid() & 31;
  const uint32_t peers = sk::match_any(d);
  const bool leader = lane == sk::ffs(peers) - 1;
  if (mass != nullptr) {
    unsigned long long total = q;
    if (sk::any(sk::popc(peers) > 1)) {
      const uint32_t later = peers & ~static_cast<uint32_t>((2ull << lane) - 1);  // group lanes after me
      int next = later ? sk::ffs(later) - 1 : lane;
      bool has_next = later != 0;
#pragma unroll
      for (int step = 0; step < 5; ++step) {
        const unsigned long long next_total = sk::shfl_idx(total, next);
        const int next_next = sk::shfl_idx(next, next);
        const int next_has = sk::shfl_idx(static_cast<int>(has_next), next);
        if (has_next) {
          total += next_total;
          next = next_next;
          has_next = next_has != 0;
        }
      }
    }
    if (leader && d != kNoBin) {
      sk::atomic_add(&count[d], static_cast<uint32_t>(sk::popc(peers)));
      sk::atomic_add(&mass[d], total);
    }
  } else if (leader && d != kNoBin) {
    sk::atomic_add(&count[d], static_cast<uint32_t>(sk::popc(peers)));
  }
}

// ------------------------------------------------------------------------------ element types

struct F32 {
  using Storage = float;
  static constexpr int kVec = 4;
  SK_DEV static float load(const Storage* p) { return sk::ldg(p); }
  SK_DEV static void unpack(const uint4& r, float (&z)[kVec]) {
    z[0] = sk::u2f(r.x);
    z[1] = sk::u2f(r.y);
    z[2] = sk::u2f(r.z);
    z[3] = sk::u2f(r.w);
  }
};

template <bool kBFloat>
struct Half16 {
  using Storage = uint16_t;
  static constexpr int kVec = 8;
  SK_DEV static float convert(uint32_t bits) {
    return kBFloat ? sk::u2f(bits << 16) : sk::half_to_float(static_cast<uint16_t>(bits));
  }
  SK_DEV static float load(const Storage* p) { return convert(sk::ldg(p)); }
  SK_DEV static void unpack(const uint4& r, float (&z)[kVec]) {
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      z[2 * i] = convert(words[i] & 0xffffu);
      z[2 * i + 1] = convert(words[i] >> 16);
    }
  }
};
using F16 = Half16<false>;
using BF16 = Half16<true>;

// ------------------------------------------------------------------------------ the combined score

struct ScoreArgs {
  const void* logits;
  int64_t K, stride_b, stride_k, stride_v;  // element strides
  const float* weights;
  int64_t weight_stride_b;
  int64_t vocab_size;       // tokens v < vocab_size are read; the rest are -inf
  int num_chunks;           // chunks per row of this launch
  const float* zmax;        // [rows, num_chunks] chunk maxima of z_0 (plausibility), or null
  float log_alpha;
  unsigned long long* err;  // [3]
};

struct ChunkShared {
  unsigned long long scratch[kScratchWords];
  uint32_t hist[256];
  uint32_t sel_bin;
  uint32_t sel_above;
  uint32_t sel_count;
};

// Token id of slot j of thread t in chunk c: 16-byte vectors own kVec consecutive tokens; the
// scalar layout interleaves threads so that each load instruction of a warp is coalesced.
template <bool kVectorLayout, int VEC, int NT>
SK_DEV int64_t token_of(int64_t c, int t, int j) {
  return c * kChunk + (kVectorLayout ? t * VEC + j : j * NT + t);
}

template <class E, bool kVectorLayout>
SK_DEV void load_stream(const typename E::Storage* stream, int64_t c, int64_t stride_v, int64_t vocab,
                        float (&z)[E::kVec]) {
  constexpr int VEC = E::kVec, NT = kChunk / VEC;
  const int t = sk::tid();
  if (kVectorLayout) {
    const int64_t first = token_of<true, VEC, NT>(c, t, 0);
    if (first + VEC <= vocab) {
      E::unpack(sk::ldg16(stream + first), z);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) z[j] = first + j < vocab ? E::load(stream + first + j) : 0.0f;
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t v = token_of<false, VEC, NT>(c, t, j);
      z[j] = v < vocab ? E::load(stream + v * stride_v) : 0.0f;
    }
  }
}

// s for this thread's kVec tokens of chunk c of row b (-inf beyond vocab_size or below the
// plausibility floor); records NaN / +inf in err. Uses sh.scratch (block-wide) when plausibility
// is on.
template <class E, bool kVectorLayout>
SK_DEV void compute_scores(const ScoreArgs& a, int64_t b, int64_t c, float (&s)[E::kVec], ChunkShared& sh) {
  constexpr int VEC = E::kVec, NT = kChunk / VEC;
  const int t = sk::tid();
  float threshold = -INFINITY;
  if (a.zmax != nullptr) {
    float m = -INFINITY;
    for (int i = t; i < a.num_chunks; i += NT) m = fmaxf(m, a.zmax[b * a.num_chunks + i]);
    threshold = a.log_alpha + block_allreduce<NT>(m, MaxOp(), sh.scratch);
  }
  bool alive[VEC], masked[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    s[j] = 0.0f;
    masked[j] = false;
    alive[j] = token_of<kVectorLayout, VEC, NT>(c, t, j) < a.vocab_size;
  }
  unsigned long long nan_key = kNoError, posinf_key = kNoError;
  const auto* row = static_cast<const typename E::Storage*>(a.logits) + b * a.stride_b;
  for (int64_t k0 = 0; k0 < a.K; k0 += kStreamBatch) {
    float z[kStreamBatch][VEC];
#pragma unroll
    for (int kk = 0; kk < kStreamBatch; ++kk) {
      if (k0 + kk < a.K) load_stream<E, kVectorLayout>(row + (k0 + kk) * a.stride_k, c, a.stride_v, a.vocab_size, z[kk]);
    }
#pragma unroll
    for (int kk = 0; kk < kStreamBatch; ++kk) {
      const int64_t k = k0 + kk;
      if (k >= a.K) break;
      const float w = sk::ldg(a.weights + b * a.weight_stride_b + k);
      const unsigned long long key = static_cast<unsigned long long>(b * a.K + k);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (!alive[j]) continue;
        const float zz = z[kk][j];
        if (zz != zz) nan_key = nan_key < key ? nan_key : key;
        if (zz == INFINITY) posinf_key = posinf_key < key ? posinf_key : key;
        if (k == 0 && zz < threshold) masked[j] = true;
        if (w != 0.0f) s[j] += w * (zz == -INFINITY ? (w > 0.0f ? -INFINITY : NEG_INF_FLOOR) : zz);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (!alive[j] || masked[j]) s[j] = -INFINITY;
  }
  if (nan_key != kNoError) sk::atomic_min(&a.err[0], nan_key);
  if (posinf_key != kNoError) sk::atomic_min(&a.err[1], posinf_key);
}

// Chunk maxima of the raw expert stream z_0, for the plausibility floor.
template <class E, bool kVectorLayout>
SK_KERNEL(kChunk / E::kVec) zmax_kernel(ScoreArgs a, int64_t rows, float* zmax) {
  constexpr int VEC = E::kVec, NT = kChunk / VEC;
  ChunkShared& sh = sk::shared<ChunkShared>();
  const int64_t c = sk::block_x();
  for (int64_t b = sk::block_y(); b < rows; b += sk::grid_y()) {
    float z[VEC];
    load_stream<E, kVectorLayout>(static_cast<const typename E::Storage*>(a.logits) + b * a.stride_b, c, a.stride_v,
                                  a.vocab_size, z);
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (token_of<kVectorLayout, VEC, NT>(c, sk::tid(), j) < a.vocab_size) m = fmaxf(m, z[j]);
    }
    m = block_allreduce<NT>(m, MaxOp(), sh.scratch);
    if (sk::tid() == 0) zmax[b * a.num_chunks + c] = m;
  }
}

// ------------------------------------------------------------------------------ sampling, stage 1

struct SampleArgs {
  ScoreArgs score;
  int64_t rows;
  float temperature;  // > 0 samples; 0 is greedy
  const int64_t* seeds;
  int64_t seed_stride;
  const int64_t* row_keys;
  int64_t row_key_stride;
  const int64_t* steps;
  int64_t step_stride;
  // stage-1 outputs (workspace); each array is [rows, num_chunks] unless said otherwise
  float* f_rows;  // [rows, f_row_stride >= vocab_size] f of every token (-inf where removed), or null
  int64_t f_row_stride;
  float* part_max;
  int32_t* part_arg;
  float* part_sum;  // or null
  float* part_gval;  // chunk Gumbel winners, or null
  int32_t* part_gidx;
  float* part_gf;
  int cand_m, cand_cap;  // candidates per chunk: the m best (+ ties up to cap); 0: none
  float* cand_val;       // [rows, num_chunks, cand_cap], -inf padded
  int32_t* cand_idx;
  float* cut_val;        // the m-th best value of a chunk that could not send all its tokens, else -inf
  int32_t* cut_open;     // 1 if that chunk also left out tokens equal to cut_val
  // filters and outputs
  int64_t top_k;
  bool topk_on, topp_on;
  unsigned long long topp_mass;  // top_p in 2^-40 units
  int64_t* tokens;
  float* logprobs;
};

struct RowNoise {
  uint64_t seed, key;
  uint32_t step;
};

SK_DEV RowNoise row_noise(const SampleArgs& a, int64_t b) {
  RowNoise n;
  n.seed = static_cast<uint64_t>(sk::ldg(a.seeds + b * a.seed_stride));
  n.key = static_cast<uint64_t>(sk::ldg(a.row_keys + b * a.row_key_stride));
  n.step = static_cast<uint32_t>(static_cast<uint64_t>(sk::ldg(a.steps + b * a.step_stride)));
  return n;
}

// The chunk's m best finite values (keys in registers), plus up to cap - m more tied with the
// m-th, written in a fixed order to val / idx [cap] (-inf / -1 padded).
template <int NT, int VEC, bool kVectorLayout>
SK_DEV void select_candidates(const float (&f)[VEC], int64_t c, int nfin, int m, int cap, float* val, int32_t* idx,
                              float* cut_val, int32_t* cut_open, ChunkShared& sh) {
  const int t = sk::tid();
  uint32_t key[VEC];
  bool fin[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    fin[j] = is_finite(f[j]);
    key[j] = order_key(f[j]);
  }
  const bool truncated = nfin > cap;
  uint32_t threshold = 0;  // keys > threshold are all sent; == threshold up to take_equal of them
  uint32_t n_greater = 0, n_equal = 0, take_equal = 0;
  if (truncated) {
    SK_TRACE("chunk.truncated");
    uint32_t prefix = 0, want = static_cast<uint32_t>(m);
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      for (int i = t; i < 256; i += NT) sh.hist[i] = 0;
      sk::block_sync();
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const bool in = fin[j] && (pass == 0 || (key[j] >> (shift + 8)) == prefix);
        histogram_add(in ? (key[j] >> shift) & 0xffu : kNoBin, 0, sh.hist, nullptr);
      }
      sk::block_sync();
      uint32_t digit = 0, above = 0, total = 0;
      find_crossing<NT, 256, uint32_t>(sh.hist, 0u, want, sh.scratch, &sh.sel_bin, &sh.sel_above, &digit, &above,
                                       &total);
      if (pass == 3) n_equal = sh.hist[digit];
      prefix = (prefix << 8) | digit;
      want -= above;
      sk::block_sync();  // hist is cleared by the next pass
    }
    threshold = prefix;
    n_greater = static_cast<uint32_t>(m) - want;
    const uint32_t room = static_cast<uint32_t>(cap) - n_greater;
    take_equal = n_equal < room ? n_equal : room;
    if (take_equal < n_equal) SK_TRACE("chunk.ties_left_out");
  }
  uint32_t mine_greater = 0, mine_equal = 0;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (!fin[j]) continue;
    if (!truncated || key[j] > threshold) {
      ++mine_greater;
    } else if (key[j] == threshold) {
      ++mine_equal;
    }
  }
  uint32_t total = 0;
  const uint32_t before = block_exclusive_scan<NT>(mine_greater | (mine_equal << 16), sh.scratch, &total);
  uint32_t greater_pos = before & 0xffffu, equal_rank = before >> 16;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (!fin[j]) continue;
    const int32_t token = static_cast<int32_t>(token_of<kVectorLayout, VEC, NT>(c, t, j));
    if (!truncated || key[j] > threshold) {
      val[greater_pos] = f[j];
      idx[greater_pos] = token;
      ++greater_pos;
    } else if (key[j] == threshold) {
      if (equal_rank < take_equal) {
        val[n_greater + equal_rank] = f[j];
        idx[n_greater + equal_rank] = token;
      }
      ++equal_rank;
    }
  }
  const int sent = truncated ? static_cast<int>(n_greater + take_equal) : nfin;
  for (int i = sent + t; i < cap; i += NT) {
    val[i] = -INFINITY;
    idx[i] = -1;
  }
  if (t == 0) {
    *cut_val = truncated ? key_value(threshold) : -INFINITY;
    *cut_open = truncated && take_equal < n_equal ? 1 : 0;
  }
}

template <class E, bool kVectorLayout>
SK_KERNEL(kChunk / E::kVec) sample_chunk_kernel(SampleArgs a) {
  constexpr int VEC = E::kVec, NT = kChunk / VEC;
  ChunkShared& sh = sk::shared<ChunkShared>();
  const int t = sk::tid();
  const int64_t c = sk::block_x();
  const int64_t C = a.score.num_chunks;
  const bool sampling = a.temperature > 0.0f;
  for (int64_t b = sk::block_y(); b < a.rows; b += sk::grid_y()) {
    const int64_t part = b * C + c;
    float f[VEC];
    compute_scores<E, kVectorLayout>(a.score, b, c, f, sh);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float x = is_finite(f[j]) ? (sampling ? sk::fdiv(f[j], a.temperature) : f[j]) : -INFINITY;
      f[j] = is_finite(x) ? plus_zero(x) : -INFINITY;
    }
    if (a.f_rows != nullptr) {  // the row is vocab_size rounded up to 8 floats long
      float* row = a.f_rows + b * a.f_row_stride;
      if (kVectorLayout) {
        const int64_t first = token_of<true, VEC, NT>(c, t, 0);
        if (first < a.score.vocab_size) {
#pragma unroll
          for (int q = 0; q < VEC / 4; ++q)
            sk::st16(row + first + 4 * q, f[4 * q], f[4 * q + 1], f[4 * q + 2], f[4 * q + 3]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int64_t v = token_of<false, VEC, NT>(c, t, j);
          if (v < a.score.vocab_size) row[v] = f[j];
        }
      }
    }
    ArgMax best = no_argmax();
    int nfin = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (!is_finite(f[j])) continue;
      ++nfin;
      best = BetterArgMax()(best, ArgMax{f[j], static_cast<int32_t>(token_of<kVectorLayout, VEC, NT>(c, t, j))});
    }
    best = block_allreduce<NT>(best, BetterArgMax(), sh.scratch);
    nfin = block_allreduce<NT>(nfin, AddOp<int>(), sh.scratch);
    if (t == 0) {
      a.part_max[part] = best.value;
      a.part_arg[part] = best.index;
    }
    if (a.part_sum != nullptr) {
      float sum = 0.0f;
      if (best.value > -INFINITY) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (is_finite(f[j])) sum += expf(f[j] - best.value);
      }
      sum = block_allreduce<NT>(sum, AddOp<float>(), sh.scratch);
      if (t == 0) a.part_sum[part] = sum;
    }
    if (a.part_gval != nullptr) {
      Winner w = no_winner();
      if (best.value > -INFINITY) {
        const RowNoise noise = row_noise(a, b);
        const float reach = best.value - kGumbelReach - fabsf(best.value) * 3.814697265625e-6f;  // 2^-18 slack
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (!(is_finite(f[j]) && f[j] >= reach)) continue;
          const int32_t token = static_cast<int32_t>(token_of<kVectorLayout, VEC, NT>(c, t, j));
          const float value = f[j] + gumbel(noise.seed, noise.key, noise.step, static_cast<uint32_t>(token));
          w = BetterWinner()(w, Winner{value, token, f[j]});
        }
      }
      w = block_allreduce<NT>(w, BetterWinner(), sh.scratch);
      if (t == 0) {
        a.part_gval[part] = w.value;
        a.part_gidx[part] = w.index;
        a.part_gf[part] = w.f;
      }
    }
    if (a.cand_m > 0) {
      select_candidates<NT, VEC, kVectorLayout>(f, c, nfin, a.cand_m, a.cand_cap, a.cand_val + part * a.cand_cap,
                                                a.cand_idx + part * a.cand_cap, a.cut_val + part, a.cut_open + part,
                                                sh);
    }
    sk::block_sync();  // shared memory is reused by the next row
  }
}

// ------------------------------------------------------------------------------ sampling, stage 2

struct MergeShared {
  uint32_t count[kBins];
  unsigned long long mass[kBins];
  unsigned long long scratch[kScratchWords];
  uint32_t sel_bin;
  unsigned long long sel_above;
};

// The value x among { v in vals[0, n) : finite, v >= lo } such that, scanning distinct values from
// the top, the weight of the values above x is < target <= the weight up to and including x.
//   by_mass = false: weight = count, target = k: x is the k-th largest (with multiplicity);
//                    -inf if fewer than k values qualify.
//   by_mass = true:  weight = exp(v - lse) in 2^-40 units, target = top_p: x = f*, the smallest
//                    kept value of the nucleus; the smallest value if the total is < target.
// Three passes over vals (11 + 11 + 10 bits of the order-preserving key); integer histograms.
template <int NT>
SK_DEV float radix_select(const float* vals, int64_t n, float lo, bool by_mass, unsigned long long target, float lse,
                          MergeShared& sh) {
  const int t = sk::tid();
  uint32_t prefix = 0;
  unsigned long long carried = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    const int prefix_shift = pass == 1 ? 21 : 10;  // bits above this pass's digit (pass > 0)
    const uint32_t digit_mask = pass == 2 ? 0x3ffu : 0x7ffu;
    for (int i = t; i < kBins; i += NT) {
      sh.count[i] = 0;
      sh.mass[i] = 0;
    }
    sk::block_sync();
    for (int64_t base = 0; base < n; base += NT) {
      const int64_t i = base + t;
      const float v = i < n ? vals[i] : -INFINITY;
      const uint32_t key = order_key(v);
      bool in = is_finite(v) && v >= lo;
      if (pass > 0) in = in && (key >> prefix_shift) == prefix;
      const uint32_t d = in ? (key >> shift) & digit_mask : kNoBin;
      histogram_add(d, in && by_mass ? mass_fixed(v, lse) : 0ull, sh.count, by_mass ? sh.mass : nullptr);
    }
    sk::block_sync();
    if (!by_mass) {
      for (int i = t; i < kBins; i += NT) sh.mass[i] = sh.count[i];
      sk::block_sync();
    }
    uint32_t digit = 0;
    unsigned long long above = 0, total = 0;
    if (find_crossing<NT, kBins, unsigned long long>(sh.mass, carried, target, sh.scratch, &sh.sel_bin,
                                                     &sh.sel_above, &digit, &above, &total)) {
      carried = above;
    } else {
      if (!by_mass) {
        SK_TRACE("radix.fewer_than_k");
        return -INFINITY;  // fewer than k (only possible in the first pass)
      }
      SK_TRACE("radix.mass_below_top_p");
      // The whole set weighs less than top_p: follow the lowest nonempty bin down to the minimum.
      uint32_t lowest = kNoBin;
      for (int i = t; i < kBins; i += NT)
        if (sh.count[i] > 0 && static_cast<uint32_t>(i) < lowest) lowest = static_cast<uint32_t>(i);
      lowest = block_allreduce<NT>(lowest, MinU32(), sh.scratch);
      if (lowest == kNoBin) return -INFINITY;  // empty set
      digit = lowest;
      carried = carried + total - sh.mass[lowest];
      sk::block_sync();
    }
    prefix = (prefix << (pass == 2 ? 10 : 11)) | digit;
  }
  return key_value(prefix);
}

// Sum over { v in vals : finite, v >= lo } of exp(v - M), in a fixed order.
template <int NT>
SK_DEV float sum_exp(const float* vals, int64_t n, float lo, float M, MergeShared& sh) {
  float sum = 0.0f;
  for (int64_t i = sk::tid(); i < n; i += NT) {
    const float v = vals[i];
    if (is_finite(v) && v >= lo) sum += expf(v - M);
  }
  return block_allreduce<NT>(sum, AddOp<float>(), sh.scratch);
}

template <int NT>
SK_DEV float partial_sum(const SampleArgs& a, int64_t part0, float M, MergeShared& sh) {
  float sum = 0.0f;
  for (int64_t c = sk::tid(); c < a.score.num_chunks; c += NT) {
    const float m = a.part_max[part0 + c];
    if (m > -INFINITY) sum += a.part_sum[part0 + c] * expf(m - M);
  }
  return block_allreduce<NT>(sum, AddOp<float>(), sh.scratch);
}

// Draw among { finite v >= cut } of vals (ids from idx, or the position when idx is null) and
// return (token, its log-probability). With chunk winners (part_gf), a chunk whose stage-1 winner
// is itself kept needs no more noise: that winner beats every other kept token of its chunk.
template <int NT>
SK_DEV void finalize(const SampleArgs& a, int64_t b, const float* vals, const int32_t* idx, int64_t n, float cut,
                     ArgMax best, bool chunk_winners, MergeShared& sh, int64_t* token, float* logprob) {
  const int t = sk::tid();
  const bool sampling = a.temperature > 0.0f;
  const int64_t part0 = b * a.score.num_chunks;
  const float M = best.value;
  const RowNoise noise = row_noise(a, b);
  float sum = 0.0f;
  Winner w = no_winner();
  for (int64_t i = t; i < n; i += NT) {
    const float v = vals[i];
    if (!(is_finite(v) && v >= cut)) continue;
    sum += expf(v - M);
    if (!sampling) continue;
    if (chunk_winners && a.part_gf[part0 + i / kChunk] >= cut) continue;
    const int32_t id = idx != nullptr ? idx[i] : static_cast<int32_t>(i);
    w = BetterWinner()(w, Winner{v + gumbel(noise.seed, noise.key, noise.step, static_cast<uint32_t>(id)), id, v});
  }
  if (sampling && chunk_winners) {
    for (int64_t c = t; c < a.score.num_chunks; c += NT) {
      const float gf = a.part_gf[part0 + c];
      if (gf >= cut) w = BetterWinner()(w, Winner{a.part_gval[part0 + c], a.part_gidx[part0 + c], gf});
    }
  }
  sum = block_allreduce<NT>(sum, AddOp<float>(), sh.scratch);
  if (sampling) w = block_allreduce<NT>(w, BetterWinner(), sh.scratch);
  const float lse = M + logf(sum);
  *token = sampling ? w.index : best.index;
  *logprob = (sampling ? w.f : M) - lse;
}

SK_KERNEL(kMergeThreads) sample_merge_kernel(SampleArgs a) {
  constexpr int NT = kMergeThreads;
  MergeShared& sh = sk::shared<MergeShared>();
  const int t = sk::tid();
  const int64_t b = sk::block_x();
  const int64_t C = a.score.num_chunks;
  const int64_t part0 = b * C;
  unsigned long long* err = a.score.err;
  if (err[0] != kNoError || err[1] != kNoError) {  // NaN / +inf somewhere: the call fails anyway
    SK_TRACE("merge.skipped_after_error");
    if (t == 0) {
      a.tokens[b] = 0;
      if (a.logprobs != nullptr) a.logprobs[b] = NAN;
    }
    return;
  }
  ArgMax best = no_argmax();
  for (int64_t c = t; c < C; c += NT) best = BetterArgMax()(best, ArgMax{a.part_max[part0 + c], a.part_arg[part0 + c]});
  best = block_allreduce<NT>(best, BetterArgMax(), sh.scratch);
  const float M = best.value;
  if (!(M > -INFINITY)) {
    SK_TRACE("merge.empty_row");
    if (t == 0) {
      sk::atomic_min(&err[2], static_cast<unsigned long long>(b));
      a.tokens[b] = 0;
      if (a.logprobs != nullptr) a.logprobs[b] = -INFINITY;
    }
    return;
  }
  const bool sampling = a.temperature > 0.0f;
  int64_t token = best.index;
  float logprob = 0.0f;

  if (!a.topk_on && !a.topp_on) {
    SK_TRACE("merge.unfiltered");
    const float lse = M + logf(partial_sum<NT>(a, part0, M, sh));
    float f = M;
    if (sampling) {
      Winner w = no_winner();
      for (int64_t c = t; c < C; c += NT)
        w = BetterWinner()(w, Winner{a.part_gval[part0 + c], a.part_gidx[part0 + c], a.part_gf[part0 + c]});
      w = block_allreduce<NT>(w, BetterWinner(), sh.scratch);
      token = w.index;
      f = w.f;
    }
    logprob = f - lse;
  } else {
    bool done = false;
    float lse_all = 0.0f;  // logsumexp of the whole row, when stage 1 computed the sums
    if (a.part_sum != nullptr) lse_all = M + logf(partial_sum<NT>(a, part0, M, sh));
    if (a.cand_m > 0) {
      const int64_t n = C * a.cand_cap;
      const float* vals = a.cand_val + part0 * a.cand_cap;
      const int32_t* idx = a.cand_idx + part0 * a.cand_cap;
      float cut_max = -INFINITY;
      for (int64_t c = t; c < C; c += NT) cut_max = fmaxf(cut_max, a.cut_val[part0 + c]);
      cut_max = block_allreduce<NT>(cut_max, MaxOp(), sh.scratch);
      if (a.topk_on) {
        // Every chunk sent its k best, so the k-th largest candidate is the row's k-th largest;
        // candidates below the largest cut cannot be it.
        const float kth = radix_select<NT>(vals, n, cut_max, false, static_cast<unsigned long long>(a.top_k), 0.0f, sh);
        int32_t open = 0;
        for (int64_t c = t; c < C; c += NT) open |= a.cut_open[part0 + c] != 0 && a.cut_val[part0 + c] == kth;
        open = block_allreduce<NT>(open, MaxI32(), sh.scratch);
        if (open) SK_TRACE("merge.topk.tie_left_out");
        if (!open) {
          SK_TRACE("merge.topk.candidates");
          float cut = kth;
          if (a.topp_on) {
            const float lse_k = M + logf(sum_exp<NT>(vals, n, kth, M, sh));
            cut = fmaxf(cut, radix_select<NT>(vals, n, kth, true, a.topp_mass, lse_k, sh));
          }
          finalize<NT>(a, b, vals, idx, n, cut, best, false, sh, &token, &logprob);
          done = true;
        }
      } else {
        // Top-p alone: exact when f* is above every truncated chunk's cut, since every token
        // >= f* is then a candidate.
        const float fstar = radix_select<NT>(vals, n, -INFINITY, true, a.topp_mass, lse_all, sh);
        if (fstar > cut_max) {
          SK_TRACE("merge.topp.candidates");
          finalize<NT>(a, b, vals, idx, n, fstar, best, false, sh, &token, &logprob);
          done = true;
        }
      }
    }
    if (!done) {  // exact passes over the stored row of f
      SK_TRACE(a.topk_on ? (a.topp_on ? "merge.exact.topk_topp" : "merge.exact.topk") : "merge.exact.topp");
      const int64_t n = a.score.vocab_size;
      const float* row = a.f_rows + b * a.f_row_stride;
      float kth = -INFINITY;
      if (a.topk_on) kth = radix_select<NT>(row, n, -INFINITY, false, static_cast<unsigned long long>(a.top_k), 0.0f, sh);
      float cut = kth;
      if (a.topp_on) {
        const float lse_k = (kth == -INFINITY && a.part_sum != nullptr) ? lse_all : M + logf(sum_exp<NT>(row, n, kth, M, sh));
        cut = fmaxf(cut, radix_select<NT>(row, n, kth, true, a.topp_mass, lse_k, sh));
      }
      finalize<NT>(a, b, row, nullptr, n, cut, best, sampling && a.part_gval != nullptr && !a.topk_on, sh, &token,
                   &logprob);
    }
  }
  if (t == 0) {
    a.tokens[b] = token;
    if (a.logprobs != nullptr) a.logprobs[b] = logprob;
  }
}

// ------------------------------------------------------------------------------ combine

struct CombineArgs {
  ScoreArgs score;
  int64_t rows;
  int64_t V;  // padded width of out
  bool normalize;
  float* out;
  int64_t out_stride;
  bool out_vector;  // 16-byte stores are aligned
  float* part_max;  // [rows, num_chunks]
  float* part_sum;
};

template <class E, bool kVectorLayout>
SK_KERNEL(kChunk / E::kVec) combine_chunk_kernel(CombineArgs a) {
  constexpr int VEC = E::kVec, NT = kChunk / VEC;
  ChunkShared& sh = sk::shared<ChunkShared>();
  const int t = sk::tid();
  const int64_t c = sk::block_x();
  for (int64_t b = sk::block_y(); b < a.rows; b += sk::grid_y()) {
    float s[VEC];
    compute_scores<E, kVectorLayout>(a.score, b, c, s, sh);
    float* row = a.out + b * a.out_stride;
    if (kVectorLayout) {
      const int64_t first = token_of<true, VEC, NT>(c, t, 0);
      if (a.out_vector && first + VEC <= a.V) {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) sk::st16(row + first + 4 * q, s[4 * q], s[4 * q + 1], s[4 * q + 2], s[4 * q + 3]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (first + j < a.V) row[first + j] = s[j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int64_t v = token_of<false, VEC, NT>(c, t, j);
        if (v < a.V) row[v] = s[j];
      }
    }
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < VEC; ++j) m = fmaxf(m, s[j]);
    m = block_allreduce<NT>(m, MaxOp(), sh.scratch);
    float sum = 0.0f;
    if (a.normalize) {
      if (m > -INFINITY) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (s[j] > -INFINITY) sum += expf(s[j] - m);
      }
      sum = block_allreduce<NT>(sum, AddOp<float>(), sh.scratch);
    }
    if (t == 0) {
      a.part_max[b * a.score.num_chunks + c] = m;
      a.part_sum[b * a.score.num_chunks + c] = sum;
    }
  }
}

// Merges a row's chunk partials; reports an empty row (block x == 0); normalises chunk x.
SK_KERNEL(kFinishThreads) combine_finish_kernel(CombineArgs a) {
  constexpr int NT = kFinishThreads;
  ChunkShared& sh = sk::shared<ChunkShared>();
  const int t = sk::tid();
  const int64_t c = sk::block_x();
  const int64_t C = a.score.num_chunks;
  for (int64_t b = sk::block_y(); b < a.rows; b += sk::grid_y()) {
    float m = -INFINITY;
    for (int64_t i = t; i < C; i += NT) m = fmaxf(m, a.part_max[b * C + i]);
    const float M = block_allreduce<NT>(m, MaxOp(), sh.scratch);
    if (!(M > -INFINITY)) {
      if (c == 0 && t == 0) sk::atomic_min(&a.score.err[2], static_cast<unsigned long long>(b));
      continue;
    }
    if (!a.normalize) continue;
    float sum = 0.0f;
    for (int64_t i = t; i < C; i += NT) {
      const float mi = a.part_max[b * C + i];
      if (mi > -INFINITY) sum += a.part_sum[b * C + i] * expf(mi - M);
    }
    const float log_sum = logf(block_allreduce<NT>(sum, AddOp<float>(), sh.scratch));
    float* row = a.out + b * a.out_stride;
    const int64_t end = (c + 1) * kChunk < a.score.vocab_size ? (c + 1) * kChunk : a.score.vocab_size;
    for (int64_t v = c * kChunk + t; v < end; v += NT) row[v] = (row[v] - M) - log_sum;
  }
}

// ------------------------------------------------------------------------------ host orchestration
// Shared by the CUDA build (a launcher that uses <<<>>>) and the emulator (one that runs fibers).

struct Grid {
  unsigned x, y;
};

// Rows beyond gridDim.y are handled by a loop in each chunk kernel (the emulator tests build
// with a tiny limit to exercise it).
#ifndef STEER_KERN_MAX_GRID_Y
#define STEER_KERN_MAX_GRID_Y 65535
#endif
constexpr int64_t kMaxGridY = STEER_KERN_MAX_GRID_Y;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Carves aligned arrays out of a workspace; with a null base it only measures.
struct Carver {
  char* base;
  size_t offset = 0;
  template <class T>
  T* take(int64_t count) {
    offset = (offset + 255) & ~static_cast<size_t>(255);
    T* p = base != nullptr ? reinterpret_cast<T*>(base + offset) : nullptr;
    offset += static_cast<size_t>(count) * sizeof(T);
    return p;
  }
};

enum Dtype : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline int element_bytes(int32_t dtype) { return dtype == kFloat32 ? 4 : 2; }

// 16-byte loads need every (row, stream) start 16-byte aligned and unit stride along V.
inline bool vector_loads_ok(const void* logits, int32_t dtype, int64_t B, int64_t K, int64_t stride_b,
                            int64_t stride_k, int64_t stride_v) {
  const int64_t vec = 16 / element_bytes(dtype);
  return stride_v == 1 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 && (B == 1 || stride_b % vec == 0) &&
         (K == 1 || stride_k % vec == 0);
}

struct SamplePlan {
  int64_t chunks;
  bool sampling, topk_on, topp_on, plausibility;
  bool rows, sums, winners;
  int cand_m, cand_cap;
};

inline SamplePlan plan_sample(int64_t vocab_size, float temperature, int64_t top_k, float top_p,
                              float plausibility_alpha) {
  SamplePlan p;
  p.chunks = ceil_div(vocab_size, kChunk);
  p.sampling = temperature > 0.0f;
  p.topk_on = top_k > 0 && top_k < vocab_size;
  p.topp_on = top_p < 1.0f;
  p.plausibility = plausibility_alpha > 0.0f;
  p.rows = p.topk_on || p.topp_on;
  p.sums = !p.topk_on;
  p.winners = p.sampling && !p.topk_on;
  if (p.topk_on) {
    p.cand_m = top_k <= kMaxTopKCandidates ? static_cast<int>(top_k) : 0;
    p.cand_cap = p.cand_m > 0 ? p.cand_m + kTieExtra : 0;
  } else if (p.topp_on) {
    p.cand_m = p.cand_cap = kTopPCandidates;
  } else {
    p.cand_m = p.cand_cap = 0;
  }
  return p;
}

struct SampleBuffers {
  float* zmax;
  SampleArgs args;  // only the workspace pointers are filled
};

inline size_t carve_sample(const SamplePlan& p, int64_t B, int64_t vocab_size, char* base, SampleBuffers* out) {
  Carver w{base};
  const int64_t parts = B * p.chunks;
  SampleBuffers s{};
  s.zmax = p.plausibility ? w.take<float>(parts) : nullptr;
  SampleArgs& a = s.args;
  a.part_max = w.take<float>(parts);
  a.part_arg = w.take<int32_t>(parts);
  a.part_sum = p.sums ? w.take<float>(parts) : nullptr;
  a.part_gval = p.winners ? w.take<float>(parts) : nullptr;
  a.part_gidx = p.winners ? w.take<int32_t>(parts) : nullptr;
  a.part_gf = p.winners ? w.take<float>(parts) : nullptr;
  a.cand_val = p.cand_m > 0 ? w.take<float>(parts * p.cand_cap) : nullptr;
  a.cand_idx = p.cand_m > 0 ? w.take<int32_t>(parts * p.cand_cap) : nullptr;
  a.cut_val = p.cand_m > 0 ? w.take<float>(parts) : nullptr;
  a.cut_open = p.cand_m > 0 ? w.take<int32_t>(parts) : nullptr;
  a.f_row_stride = (vocab_size + 7) / 8 * 8;  // 16-byte aligned rows
  a.f_rows = p.rows ? w.take<float>(B * a.f_row_stride) : nullptr;
  if (out != nullptr) *out = s;
  return w.offset + 256;
}

struct SampleRequest {
  const void* logits;
  int32_t dtype;
  int64_t B, K, V, stride_b, stride_k, stride_v;
  const float* weights;
  int64_t weight_stride_b;
  int64_t vocab_size;
  float temperature;
  int64_t top_k;
  float top_p;
  float plausibility_alpha;
  const int64_t* seeds;
  int64_t seed_stride;
  const int64_t* row_keys;
  int64_t row_key_stride;
  const int64_t* steps;
  int64_t step_stride;
  int64_t* tokens;
  float* logprobs;
  void* workspace;
  size_t workspace_bytes;
  unsigned long long* err;
};

inline bool sample_shape_ok(int64_t B, int64_t K, int64_t V, int64_t vocab_size) {
  return B >= 0 && B <= INT32_MAX && K >= 1 && V >= 1 && vocab_size >= 1 && vocab_size <= V &&
         vocab_size <= static_cast<int64_t>(INT32_MAX) - kChunk;
}

inline bool sampler_ok(float temperature, int64_t top_k, float top_p, float alpha) {
  return temperature_ok(temperature) && top_k >= 0 && top_p > 0.0f && top_p <= 1.0f &&
         alpha >= 0.0f && alpha < 1.0f;
}

inline size_t sample_workspace_bytes(int64_t B, int64_t vocab_size, float temperature, int64_t top_k, float top_p,
                                     float plausibility_alpha) {
  if (B <= 0 || vocab_size < 1) return 0;
  return carve_sample(plan_sample(vocab_size, temperature, top_k, top_p, plausibility_alpha), B, vocab_size, nullptr,
                      nullptr);
}

template <class E, bool kVectorLayout, class Launch>
void launch_sample(Launch& launch, const SamplePlan& p, const SampleArgs& args, float* zmax) {
  const Grid grid{static_cast<unsigned>(p.chunks), static_cast<unsigned>(args.rows < kMaxGridY ? args.rows : kMaxGridY)};
  constexpr int threads = kChunk / E::kVec;
  if (zmax != nullptr) {
    ScoreArgs plain = args.score;
    plain.zmax = nullptr;
    launch(zmax_kernel<E, kVectorLayout>, grid, threads, plain, args.rows, zmax);
  }
  launch(sample_chunk_kernel<E, kVectorLayout>, grid, threads, args);
  launch(sample_merge_kernel, Grid{static_cast<unsigned>(args.rows), 1u}, kMergeThreads, args);
}

template <class Launch>
Status run_sample(const SampleRequest& r, Launch& launch) {
  if (!sample_shape_ok(r.B, r.K, r.V, r.vocab_size) || r.stride_b < 0 || r.stride_k < 0 || r.stride_v < 0 ||
      r.weight_stride_b < 0 || r.seed_stride < 0 || r.row_key_stride < 0 || r.step_stride < 0 ||
      (r.dtype != kFloat32 && r.dtype != kFloat16 && r.dtype != kBFloat16) ||
      !sampler_ok(r.temperature, r.top_k, r.top_p, r.plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (r.B == 0) return STEER_OK;
  if (r.logits == nullptr || r.weights == nullptr || r.seeds == nullptr || r.row_keys == nullptr ||
      r.steps == nullptr || r.tokens == nullptr || r.err == nullptr ||
      r.workspace == nullptr ||
      r.workspace_bytes <
          sample_workspace_bytes(r.B, r.vocab_size, r.temperature, r.top_k, r.top_p, r.plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  const SamplePlan p = plan_sample(r.vocab_size, r.temperature, r.top_k, r.top_p, r.plausibility_alpha);
  // Start at the first 256-byte boundary of the workspace.
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(r.workspace) + 255) & ~static_cast<uintptr_t>(255));
  SampleBuffers buffers{};
  carve_sample(p, r.B, r.vocab_size, base, &buffers);
  SampleArgs a = buffers.args;
  a.score = ScoreArgs{r.logits, r.K, r.stride_b, r.stride_k, r.stride_v, r.weights, r.weight_stride_b,
                      r.vocab_size, static_cast<int>(p.chunks), buffers.zmax,
                      p.plausibility ? logf(r.plausibility_alpha) : 0.0f, r.err};
  a.rows = r.B;
  a.temperature = r.temperature;
  a.seeds = r.seeds;
  a.seed_stride = r.seed_stride;
  a.row_keys = r.row_keys;
  a.row_key_stride = r.row_key_stride;
  a.steps = r.steps;
  a.step_stride = r.step_stride;
  a.cand_m = p.cand_m;
  a.cand_cap = p.cand_cap;
  a.top_k = r.top_k;
  a.topk_on = p.topk_on;
  a.topp_on = p.topp_on;
  a.topp_mass = static_cast<unsigned long long>(static_cast<double>(r.top_p) * 1099511627776.0);
  a.tokens = r.tokens;
  a.logprobs = r.logprobs;
  const bool vec = vector_loads_ok(r.logits, r.dtype, r.B, r.K, r.stride_b, r.stride_k, r.stride_v);
  switch (r.dtype) {
    case kFloat32:
      vec ? launch_sample<F32, true>(launch, p, a, buffers.zmax) : launch_sample<F32, false>(launch, p, a, buffers.zmax);
      break;
    case kFloat16:
      vec ? launch_sample<F16, true>(launch, p, a, buffers.zmax) : launch_sample<F16, false>(launch, p, a, buffers.zmax);
      break;
    default:
      vec ? launch_sample<BF16, true>(launch, p, a, buffers.zmax)
          : launch_sample<BF16, false>(launch, p, a, buffers.zmax);
      break;
  }
  return launch.status();
}

struct CombineRequest {
  const void* logits;
  int32_t dtype;
  int64_t B, K, V, stride_b, stride_k, stride_v;
  const float* weights;
  int64_t weight_stride_b;
  int64_t vocab_size;
  bool normalize;
  float plausibility_alpha;
  float* out;
  int64_t out_stride_b;
  void* workspace;
  size_t workspace_bytes;
  unsigned long long* err;
};

inline size_t carve_combine(int64_t B, int64_t V, bool plausibility, char* base, float** zmax, float** part_max,
                            float** part_sum) {
  Carver w{base};
  const int64_t parts = B * ceil_div(V, kChunk);
  float* z = plausibility ? w.take<float>(parts) : nullptr;
  float* m = w.take<float>(parts);
  float* s = w.take<float>(parts);
  if (zmax != nullptr) {
    *zmax = z;
    *part_max = m;
    *part_sum = s;
  }
  return w.offset + 256;
}

inline size_t combine_workspace_bytes(int64_t B, int64_t V, bool plausibility) {
  if (B <= 0 || V < 1) return 0;
  return carve_combine(B, V, plausibility, nullptr, nullptr, nullptr, nullptr);
}

template <class E, bool kVectorLayout, class Launch>
void launch_combine(Launch& launch, const CombineArgs& a, int64_t chunks, float* zmax) {
  const unsigned rows = static_cast<unsigned>(a.rows < kMaxGridY ? a.rows : kMaxGridY);
  const Grid grid{static_cast<unsigned>(chunks), rows};
  constexpr int threads = kChunk / E::kVec;
  if (zmax != nullptr) {
    ScoreArgs plain = a.score;
    plain.zmax = nullptr;
    launch(zmax_kernel<E, kVectorLayout>, grid, threads, plain, a.rows, zmax);
  }
  launch(combine_chunk_kernel<E, kVectorLayout>, grid, threads, a);
  launch(combine_finish_kernel, Grid{a.normalize ? static_cast<unsigned>(chunks) : 1u, rows}, kFinishThreads, a);
}

template <class Launch>
Status run_combine(const CombineRequest& r, Launch& launch) {
  if (r.B < 0 || r.B > INT32_MAX || r.K < 1 || r.V < 1 || r.vocab_size < 1 || r.vocab_size > r.V ||
      r.V > static_cast<int64_t>(INT32_MAX) - kChunk || r.stride_b < 0 || r.stride_k < 0 || r.stride_v < 0 ||
      r.weight_stride_b < 0 || r.out_stride_b < r.V || !(r.plausibility_alpha >= 0.0f) ||
      !(r.plausibility_alpha < 1.0f) || (r.dtype != kFloat32 && r.dtype != kFloat16 && r.dtype != kBFloat16)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (r.B == 0) return STEER_OK;
  const bool plausibility = r.plausibility_alpha > 0.0f;
  if (r.logits == nullptr || r.weights == nullptr || r.out == nullptr || r.err == nullptr || r.workspace == nullptr ||
      r.workspace_bytes < combine_workspace_bytes(r.B, r.V, plausibility)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  const int64_t chunks = ceil_div(r.V, kChunk);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(r.workspace) + 255) & ~static_cast<uintptr_t>(255));
  float *zmax = nullptr, *part_max = nullptr, *part_sum = nullptr;
  carve_combine(r.B, r.V, plausibility, base, &zmax, &part_max, &part_sum);
  CombineArgs a;
  a.score = ScoreArgs{r.logits, r.K, r.stride_b, r.stride_k, r.stride_v, r.weights, r.weight_stride_b,
                      r.vocab_size, static_cast<int>(chunks), zmax,
                      plausibility ? logf(r.plausibility_alpha) : 0.0f, r.err};
  a.rows = r.B;
  a.V = r.V;
  a.normalize = r.normalize;
  a.out = r.out;
  a.out_stride = r.out_stride_b;
  a.out_vector = reinterpret_cast<uintptr_t>(r.out) % 16 == 0 && (r.B == 1 || r.out_stride_b % 4 == 0);
  a.part_max = part_max;
  a.part_sum = part_sum;
  const bool vec = vector_loads_ok(r.logits, r.dtype, r.B, r.K, r.stride_b, r.stride_k, r.stride_v);
  switch (r.dtype) {
    case kFloat32:
      vec ? launch_combine<F32, true>(launch, a, chunks, zmax) : launch_combine<F32, false>(launch, a, chunks, zmax);
      break;
    case kFloat16:
      vec ? launch_combine<F16, true>(launch, a, chunks, zmax) : launch_combine<F16, false>(launch, a, chunks, zmax);
      break;
    default:
      vec ? launch_combine<BF16, true>(launch, a, chunks, zmax) : launch_combine<BF16, false>(launch, a, chunks, zmax);
      break;
  }
  return launch.status();
}

}  // namespace kern
}  // namespace steer
