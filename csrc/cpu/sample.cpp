// CPU kernel of the STEER sample op (the exact semantics: csrc/include/steer/sample.h, which is
// steer.reference.sample).
//
// Each row is read once: the K streams are multiply-added over L1-sized tiles exactly as in
// combine.cpp (kernel_common.h), and while a tile of f = s / T is hot, what the filter needs is
// kept from it:
//
//   no filter   the Gumbel race runs in the pass: noise for the tokens that can still win (f
//               within kGumbelMax - kGumbelMin of the running max; usually the whole tile on
//               random data, few on real logits) is drawn by the vectorised Philox of gumbel.cpp,
//               and the row's logsumexp is kept online for the log-probability.
//   top-k       candidates: a token enters a small buffer only if f >= the k-th largest f seen
//               so far in its chunk (a running threshold, checked per 64-token block so that a
//               block with nothing to add costs one vectorised max). When the buffer fills it is
//               cut back to the k best plus every tie with the k-th (std::nth_element), raising
//               the threshold; ties are never dropped, so a buffer that cannot be cut (a flat
//               row) simply grows, which is the exact fallback. After the pass: the k-th largest
//               of the merged candidates, top-p on those few, and noise for the survivors only.
//   top-p only  the row of f goes to a per-thread buffer (a [V] float write, not a K * V read)
//               and the nucleus is found without sorting the vocabulary: a histogram of the
//               probability mass over 1024 value buckets below the max (one pass over V) locates
//               the bucket where the mass crosses top_p; tokens above it are kept, tokens below
//               it are not, and only the crossing bucket's members are looked at again (sorted
//               if few, else histogrammed again over their own value range, which always shrinks
//               them). Then one more pass over V sums the kept mass and races the kept tokens,
//               skipping tiles that hold none.
//   T == 0      greedy: the argmax of s is tracked in the pass (lowest id on ties); the filters
//               still run, at T = 1, for the log-probability.
//
// Threads: (row, chunk) items as in combine.cpp. With one chunk per row a thread finishes its row
// while the row's data is still in its cache; with several, the chunks' candidates, races and
// logsumexps are merged per row afterwards (lower chunk = lower ids wins ties).
//
// Vectorisation (g++ 12, -fopt-info-vec-optimized): the accumulate loops of kernel_common.h for
// every dtype (SSE2, plus an AVX2 build picked at load time: hot_loops.cpp), the temperature
// division, the max / sum-of-exp reductions, the bucket-index loop of the histogram and the
// Philox + log loop of gumbel.cpp are reported vectorised; perf annotate of the top-k case
// (B=8, K=7, V=128256) shows the time in the packed mulps / addps / cmpnltps loops of
// accumulate_tile, and of the top-p case in the packed exp of the histogram pass.

#include "steer/sample.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "gumbel.h"
#include "kernel_common.h"

namespace steer {
namespace {

using namespace cpu;

constexpr float kLowest = std::numeric_limits<float>::lowest();
constexpr int64_t kBlock = 64;       // candidate scan granularity (top-k)
constexpr size_t kSortLimit = 512;   // a top-p bucket at most this big is sorted, a bigger one split again
constexpr int kBuckets = 1024;       // value buckets of the top-p histograms
constexpr int64_t kIndexBlock = 256; // tokens per vectorised bucket-index block

enum class Filter { kNone, kTopK, kTopP };

struct Sampler {
  Filter filter;
  bool greedy;  // temperature == 0: argmax of s
  bool scale;   // f = s / temperature (temperature > 0 and != 1)
  float temperature;
  int64_t top_k;  // > 0 iff filter == kTopK
  float top_p;    // < 1: top-p runs (after top-k if both)
  const int64_t* seeds;
  const int64_t* row_keys;
  const int64_t* steps;

  NoiseKey key(int64_t b) const {
    return {uint64_t(seeds[b]), uint64_t(row_keys[b]), uint32_t(uint64_t(steps[b]))};
  }
};

struct Cand {
  float f;
  uint32_t id;
};

inline bool higher_f(const Cand& a, const Cand& b) { return a.f > b.f; }

// The sorted order of the reference: descending f, ascending id among ties.
inline bool higher_f_then_lower_id(const Cand& a, const Cand& b) {
  return a.f > b.f || (a.f == b.f && a.id < b.id);
}

// The running winner of a Gumbel race: the largest f + g, the lowest id among ties.
struct Race {
  float value = -kInf;
  int64_t id = -1;
  float f = -kInf;  // f of the winner (for its log-probability)

  void offer(float v, int64_t token, float token_f) {
    if (v > value || (v == value && token < id)) {
      value = v;
      id = token;
      f = token_f;
    }
  }
};

// What one (row, chunk) item leaves behind.
struct ItemState {
  int bad = 0;                // saw a NaN or +inf logit
  float s_max = -kInf;        // max of s over the chunk
  int64_t s_argmax = -1;      // its lowest id
  OnlineLogSumExp lse;        // no filter: max of f and sum of exp(f - max)
  Race race;                  // no filter, T > 0: the chunk's Gumbel winner
  std::vector<Cand> cands;    // top-k: every token of the chunk that may be among the row's k best
};

// Per-thread scratch, allocated once per call.
struct Scratch {
  std::vector<float> tile = std::vector<float>(size_t(kTile));
  std::vector<uint32_t> ids = std::vector<uint32_t>(size_t(kTile));
  std::vector<float> noise = std::vector<float>(size_t(kTile));
  std::vector<Cand> cands;  // one-chunk rows: the row's candidates
  std::vector<Cand> list;   // finishing: candidates / bucket members
  std::vector<Cand> next;
};

inline int64_t first_index_of(const float* x, int64_t n, float value) {
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] == value) return i;
  }
  return 0;  // unreachable: value is the max of x
}

// f below this cannot win a race whose running max of f is m: its f + g <= f + kGumbelMax stays
// below m + kGumbelMin <= the max token's f + g. The relative term covers float rounding of those
// sums for large |m|.
inline float race_floor(float m) {
  return m - ((kGumbelMax - kGumbelMin) + 0.5f + std::fabs(m) * 0x1p-20f);
}

// Races the tokens t0 + i (i < n) with f[i] >= floor: gathers their ids, draws their noise in one
// vectorised call, offers each to the race in id order.
void race_tile(const float* STEER_RESTRICT f, int64_t t0, int64_t n, float floor, const NoiseKey& key, Scratch& sc,
               Race& race) {
  uint32_t* STEER_RESTRICT ids = sc.ids.data();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    ids[count] = uint32_t(t0 + i);
    count += f[i] >= floor ? 1 : 0;
  }
  if (count == 0) return;
  gumbel_noise(key, ids, count, sc.noise.data());
  const float* g = sc.noise.data();
  for (int64_t j = 0; j < count; ++j) {
    const float fj = f[ids[j] - t0];
    const float v = fj + g[j];
    if (v > race.value) {  // ids ascend: a tie keeps the earlier, lower id
      race.value = v;
      race.id = ids[j];
      race.f = fj;
    }
  }
}

// Cuts a candidate buffer back to its k best and every tie with the k-th; the k-th value becomes
// the entry threshold. Grows the capacity if ties keep the buffer more than half full.
void cut_candidates(std::vector<Cand>& cands, int64_t k, float& threshold, size_t& capacity) {
  std::nth_element(cands.begin(), cands.begin() + (k - 1), cands.end(), higher_f);
  threshold = cands[size_t(k - 1)].f;
  const float t = threshold;
  cands.erase(std::remove_if(cands.begin(), cands.end(), [t](const Cand& c) { return c.f < t; }), cands.end());
  capacity = std::max(capacity, 2 * cands.size());
}

// The pass over tokens [v0, v1) of row b: s, f, and what the filter needs (see the file comment).
// dense: the row's f buffer for top-p only (f of token v at dense[v]), else null.
template <typename T>
void run_item(const Logits<T>& p, const Sampler& sm, int64_t b, int64_t v0, int64_t v1, float plausibility_floor,
              float* dense, std::vector<Cand>& cands, Scratch& sc, ItemState& st) {
  const NoiseKey key = sm.key(b);
  float running_max = -kInf;                // of f, for the race floor
  float threshold = kLowest;                // top-k entry threshold (never admits -inf)
  size_t capacity = size_t(4 * sm.top_k + 32);  // small: a cut is cheap, and the threshold rises early
  for (int64_t t0 = v0; t0 < v1; t0 += kTile) {
    const int64_t n = std::min(kTile, v1 - t0);
    float* STEER_RESTRICT acc = dense != nullptr ? dense + t0 : sc.tile.data();
    st.bad |= accumulate(p, b, plausibility_floor, t0, n, acc);
    const float tile_s_max = max_of(acc, n);
    if (tile_s_max > st.s_max) {
      st.s_max = tile_s_max;
      st.s_argmax = t0 + first_index_of(acc, n, tile_s_max);
    }
    if (tile_s_max == -kInf) continue;  // every token of the tile forbidden (or a NaN-only tile)
    float tile_f_max = tile_s_max;
    if (sm.scale) {
      const float temperature = sm.temperature;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) acc[i] = acc[i] / temperature;
      tile_f_max = tile_s_max / temperature;  // division is monotone: the max of the quotients
    }
    if (sm.filter == Filter::kNone) {
      st.lse.add_tile(acc, n, tile_f_max);
      if (!sm.greedy) {
        running_max = std::max(running_max, tile_f_max);
        race_tile(acc, t0, n, race_floor(running_max), key, sc, st.race);
      }
    } else if (sm.filter == Filter::kTopK && tile_f_max >= threshold) {
      for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
        const int64_t m = std::min(kBlock, n - i0);
        if (max_of(acc + i0, m) < threshold) continue;
        for (int64_t i = i0; i < i0 + m; ++i) {
          if (acc[i] >= threshold) {
            cands.push_back({acc[i], uint32_t(t0 + i)});
            if (cands.size() >= capacity) cut_candidates(cands, sm.top_k, threshold, capacity);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- top-p
//
// Probabilities are float32 as in the reference (torch.softmax): e = exp(f - M) in float, p = e *
// (1 / Z) in float. Tokens whose p rounds to the same float are tied, and ties with the least
// probable kept token are kept, so nearly flat rows keep the reference's whole tie groups.
// The kept set is then {v : p(v) >= p_min}; p_min is found by walking the reference's sorted
// cumulative sum over as few tokens as possible.

inline float probability(float f, float M, float inv_Z) { return exp_nonpositive(f - M) * inv_Z; }

// The reference's walk over tokens sorted by probability, for the members of one bucket: the
// normalised mass of the tokens before them (all kept) is `before`. Returns p_min.
float walk_sorted(std::vector<Cand>& list, float M, float inv_Z, double before, float top_p) {
  std::sort(list.begin(), list.end(), higher_f_then_lower_id);
  // As the reference: the mass before a token = float(cumsum of p up to and including it) - p.
  double cumsum = before;
  size_t kept = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    const float p = probability(list[i].f, M, inv_Z);
    cumsum += p;
    const float mass_before = float(cumsum) - p;
    if (!(mass_before < top_p)) break;
    kept = i + 1;
  }
  if (kept == 0) kept = 1;  // the most probable token is always kept (and `before` < top_p here)
  return probability(list[kept - 1].f, M, inv_Z);
}

// The bucket in which the cumulative mass (starting at *before, in units of exp(f - M), total Z)
// reaches top_p: the buckets before it are kept whole, those after it dropped. Its mass is then
// positive, so it has members. If rounding leaves the mass short of top_p, the last bucket with
// mass. Sets *before to the mass before the returned bucket. (Tokens of mass 0, exp(f - M)
// below float's range, are never the crossing: their probability rounds to 0 in the reference
// too.)
int crossing_bucket(const double* mass, int buckets, double Z, float top_p, double* before) {
  double cumulative = *before;
  int last = -1;
  for (int j = 0; j < buckets; ++j) {
    if (mass[j] == 0.0) continue;
    if ((cumulative + mass[j]) / Z >= double(top_p)) {
      *before = cumulative;
      return j;
    }
    last = j;
    cumulative += mass[j];
  }
  cumulative = *before;
  for (int j = 0; j < last; ++j) cumulative += mass[j];
  *before = cumulative;
  return std::max(last, 0);
}

// p_min of top-p among `list` (finite f, all below every token of the mass `before`, which is
// kept): while the list is big, split it into value buckets, keep the buckets entirely before the
// crossing one, drop those after it, and go on with the crossing bucket's members. Every split
// leaves fewer members (the list's finite max and min land in different buckets), so this ends;
// an all-equal list is all tied with its first token, which is kept.
float nucleus_of_list(std::vector<Cand>& list, std::vector<Cand>& next, float M, double Z, float inv_Z,
                      double before, float top_p) {
  std::vector<double> mass(static_cast<size_t>(kBuckets));
  for (;;) {
    if (list.empty()) return inv_Z;  // unreachable (the crossing bucket is never empty): keep the max
    if (list.size() <= kSortLimit) return walk_sorted(list, M, inv_Z, before / Z, top_p);
    float lo = list[0].f, hi = list[0].f;
    for (const Cand& c : list) {
      lo = std::min(lo, c.f);
      hi = std::max(hi, c.f);
    }
    if (lo == hi) return probability(lo, M, inv_Z);
    const double scale = kBuckets / (double(hi) - double(lo));
    auto bucket = [&](float f) {
      const double t = (double(hi) - double(f)) * scale;  // monotone in f; 0 for hi
      return t < double(kBuckets - 1) ? int(t) : kBuckets - 1;
    };
    std::fill(mass.begin(), mass.end(), 0.0);
    for (const Cand& c : list) mass[size_t(bucket(c.f))] += exp_nonpositive(c.f - M);
    const int crossing = crossing_bucket(mass.data(), kBuckets, Z, top_p, &before);
    next.clear();
    for (const Cand& c : list) {
      if (bucket(c.f) == crossing) next.push_back(c);
    }
    // No progress is impossible for finite f; it can happen only in a row whose weighted sum
    // overflowed float (lo or hi infinite): sort what is left rather than loop forever.
    if (next.size() == list.size()) return walk_sorted(list, M, inv_Z, before / Z, top_p);
    list.swap(next);
  }
}

// The first histogram, over the whole dense row f[0, n): buckets of width R / kBuckets below the
// max M, R = log(n / (1 - top_p)) + 1, so the tokens further below than R (all in the last
// bucket) hold less than 1 - top_p of the mass and the crossing bucket is a real one; -inf tokens
// go to an extra bucket that holds nothing. The index is computed in vectorised blocks; only the
// scatter into the histogram is scalar, into kLanes interleaved copies so that tokens falling in
// the same bucket do not wait on each other's store.
constexpr int kLanes = 4;

template <bool kWithExp>
void bucket_indices(const float* STEER_RESTRICT f, int64_t n, float M, float scale, int32_t* STEER_RESTRICT idx,
                    float* STEER_RESTRICT e) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float t = (M - f[i]) * scale;  // >= 0 and monotone in f (NaN only from an overflowed row)
    t = t < float(kBuckets - 1) ? t : float(kBuckets - 1);
    idx[i] = f[i] == -kInf ? kBuckets : int32_t(t);
    if (kWithExp) e[i] = exp_nonpositive(f[i] - M);
  }
}

struct Nucleus {
  float p_min;  // keep v iff probability(f(v)) >= p_min
  float inv_Z;
};

// Top-p over the dense row f[0, n) of max M.
Nucleus nucleus_of_row(const float* f, int64_t n, float M, float top_p, Scratch& sc) {
  const double range = std::log(double(n)) - std::log1p(-double(top_p)) + 1.0;
  const float scale = float(kBuckets / range);
  constexpr size_t kStride = kBuckets + 1;  // + the bucket of -inf tokens
  std::vector<double> lanes(kLanes * kStride, 0.0);
  alignas(64) int32_t idx[kIndexBlock];
  alignas(64) float e[kIndexBlock];
  for (int64_t i0 = 0; i0 < n; i0 += kIndexBlock) {
    const int64_t m = std::min(kIndexBlock, n - i0);
    bucket_indices<true>(f + i0, m, M, scale, idx, e);
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) lanes[lane * kStride + size_t(idx[i + lane])] += e[i + lane];
    }
    for (; i < m; ++i) lanes[size_t(idx[i])] += e[i];
  }
  std::vector<double> mass(kStride, 0.0);
  for (int lane = 0; lane < kLanes; ++lane) {
    for (size_t j = 0; j < kStride; ++j) mass[j] += lanes[lane * kStride + j];
  }
  double Z = 0.0;
  for (int j = 0; j < kBuckets; ++j) Z += mass[size_t(j)];
  const float inv_Z = float(1.0 / Z);
  double before = 0.0;
  const int crossing = crossing_bucket(mass.data(), kBuckets, Z, top_p, &before);
  sc.list.clear();
  for (int64_t i0 = 0; i0 < n; i0 += kIndexBlock) {
    const int64_t m = std::min(kIndexBlock, n - i0);
    bucket_indices<false>(f + i0, m, M, scale, idx, e);
    int hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t i = 0; i < m; ++i) hits += idx[i] == crossing ? 1 : 0;
    if (hits == 0) continue;
    for (int64_t i = 0; i < m; ++i) {
      if (idx[i] == crossing && f[i0 + i] == f[i0 + i]) sc.list.push_back({f[i0 + i], uint32_t(i0 + i)});
    }
  }
  return {nucleus_of_list(sc.list, sc.next, M, Z, inv_Z, before, top_p), inv_Z};
}

// ---------------------------------------------------------------- finishing a row

struct RowResult {
  int64_t token;
  float logprob;
};

inline float log_probability(float f_token, float M, double kept_mass) {
  return float((double(f_token) - double(M)) - std::log(kept_mass));
}

// Top-k (then top-p) over the row's candidates, then the race among the survivors.
RowResult finish_top_k(const Sampler& sm, int64_t b, const ItemState& row, std::vector<Cand>& list, Scratch& sc) {
  const size_t k = size_t(sm.top_k);
  if (list.size() > k) {
    std::nth_element(list.begin(), list.begin() + (k - 1), list.end(), higher_f);
    const float kth = list[k - 1].f;
    list.erase(std::remove_if(list.begin(), list.end(), [kth](const Cand& c) { return c.f < kth; }), list.end());
  }
  float M = -kInf;
  for (const Cand& c : list) M = std::max(M, c.f);
  double Z = 0.0;
  for (const Cand& c : list) Z += exp_nonpositive(c.f - M);
  double kept_mass = Z;
  if (sm.top_p < 1.0f) {
    const float inv_Z = float(1.0 / Z);
    sc.list.assign(list.begin(), list.end());  // list is sc.cands: the nucleus search reorders a copy
    const float p_min = nucleus_of_list(sc.list, sc.next, M, Z, inv_Z, 0.0, sm.top_p);
    list.erase(std::remove_if(list.begin(), list.end(),
                              [&](const Cand& c) { return probability(c.f, M, inv_Z) < p_min; }),
               list.end());
    kept_mass = 0.0;
    for (const Cand& c : list) kept_mass += exp_nonpositive(c.f - M);
  }
  if (sm.greedy) return {row.s_argmax, log_probability(M, M, kept_mass)};
  uint32_t* ids = sc.ids.data();
  Race race;
  for (size_t j0 = 0; j0 < list.size(); j0 += size_t(kTile)) {
    const size_t m = std::min(size_t(kTile), list.size() - j0);
    for (size_t j = 0; j < m; ++j) ids[j] = list[j0 + j].id;
    gumbel_noise(sm.key(b), ids, int64_t(m), sc.noise.data());
    for (size_t j = 0; j < m; ++j) race.offer(list[j0 + j].f + sc.noise[j], list[j0 + j].id, list[j0 + j].f);
  }
  return {race.id, log_probability(race.f, M, kept_mass)};
}

// Top-p alone over the dense row f[0, n), then one pass that sums the kept mass and races the
// kept tokens. Kept means probability(f) >= p_min exactly; a conservative bound f_low on f
// (exp is monotone to within an ulp, the slack covers that and the rounding of f_low) lets the
// pass skip tiles and 64-token blocks that hold no kept token after one vectorised max.
RowResult finish_top_p(const Sampler& sm, int64_t b, const ItemState& row, const float* f, int64_t n, Scratch& sc) {
  const float M = sm.scale ? row.s_max / sm.temperature : row.s_max;
  const Nucleus nucleus = nucleus_of_row(f, n, M, sm.top_p, sc);
  const float p_min = nucleus.p_min, inv_Z = nucleus.inv_Z;
  const double log_e_min = std::log(double(p_min)) - std::log(double(inv_Z));  // kept: f - M >= about this
  const float f_low = float(double(M) + log_e_min) - (1e-3f + std::fabs(M) * 0x1p-20f);
  const float race_low = sm.greedy ? kInf : race_floor(M);
  const NoiseKey key = sm.key(b);
  double kept_mass = 0.0;
  Race race;
  uint32_t* ids = sc.ids.data();
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int64_t m = std::min(kTile, n - t0);
    const float* ft = f + t0;
    if (max_of(ft, m) < f_low) continue;
    int64_t count = 0;
    for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
      const int64_t end = std::min(m, i0 + kBlock);
      if (max_of(ft + i0, end - i0) < f_low) continue;
      for (int64_t i = i0; i < end; ++i) {
        if (!(ft[i] >= f_low)) continue;
        const float e = exp_nonpositive(ft[i] - M);
        if (e * inv_Z < p_min) continue;
        kept_mass += e;
        if (ft[i] >= race_low) ids[count++] = uint32_t(t0 + i);
      }
    }
    if (count == 0) continue;
    gumbel_noise(key, ids, count, sc.noise.data());
    for (int64_t j = 0; j < count; ++j) {
      const float fj = f[ids[j]];
      const float v = fj + sc.noise[size_t(j)];
      if (v > race.value) {  // ids ascend: a tie keeps the earlier, lower id
        race.value = v;
        race.id = ids[j];
        race.f = fj;
      }
    }
  }
  if (sm.greedy) return {row.s_argmax, log_probability(M, M, kept_mass)};
  return {race.id, log_probability(race.f, M, kept_mass)};
}

RowResult finish_plain(const Sampler& sm, const ItemState& row) {
  if (sm.greedy) return {row.s_argmax, log_probability(row.lse.max, row.lse.max, row.lse.sum)};
  return {row.race.id, log_probability(row.race.f, row.lse.max, row.lse.sum)};
}

// Merges a row's chunk states into `row` (candidates into `cands`), lower chunks first.
void merge_chunks(const ItemState* chunks, int64_t count, ItemState& row, std::vector<Cand>& cands) {
  for (int64_t c = 0; c < count; ++c) {
    const ItemState& st = chunks[c];
    row.bad |= st.bad;
    if (st.s_max > row.s_max) {
      row.s_max = st.s_max;
      row.s_argmax = st.s_argmax;
    }
    row.lse.merge(st.lse);
    if (st.race.id >= 0) row.race.offer(st.race.value, st.race.id, st.race.f);
    cands.insert(cands.end(), st.cands.begin(), st.cands.end());
  }
}

template <typename T>
Status sample_typed(const Logits<T>& p, int64_t B, const Sampler& sm, float plausibility_alpha, int64_t* tokens,
                    float* logprobs, int64_t* err_row, int64_t* err_stream, int num_threads) {
  const int64_t vocab_size = p.vocab_size;
  const int threads = resolve_threads(num_threads);
  const bool parallel = threads > 1 && B * p.K * vocab_size >= kSerialWork;
  const int64_t chunks = parallel ? choose_chunks_per_row(B, vocab_size, threads) : 1;
  const int64_t chunk_len = chunk_length(vocab_size, chunks);
  const int64_t items = B * chunks;

  const bool plausibility = plausibility_alpha > 0.0f;
  const float log_alpha = plausibility ? std::log(plausibility_alpha) : 0.0f;
  std::vector<float> row_floor(size_t(B), -kInf);  // plausibility floor on stream 0 per row; -inf = off
  std::vector<float> z0_max(plausibility ? size_t(items) : 0, -kInf);
  std::vector<ItemState> states(chunks > 1 ? size_t(items) : 0);
  std::vector<int> row_bad(size_t(B), 0);
  std::vector<float> row_s_max(size_t(B), -kInf);
  // Top-p alone keeps the row of f: one buffer per thread when a thread owns whole rows, one per
  // row when rows are split across threads (then B < 8 * threads, and [B, V] floats are at most
  // 2 / K of the logits' own size).
  std::vector<float> dense;
  if (sm.filter == Filter::kTopP) dense.resize(size_t(chunks > 1 ? B : threads) * size_t(vocab_size));

#pragma omp parallel num_threads(threads) if (parallel)
  {
    Scratch sc;
    if (plausibility) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < items; ++i) {
        const int64_t v0 = (i % chunks) * chunk_len;
        z0_max[size_t(i)] = max_of_stream0(p, i / chunks, v0, std::min(vocab_size, v0 + chunk_len));
      }
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        float m0 = -kInf;
        for (int64_t c = 0; c < chunks; ++c) m0 = std::max(m0, z0_max[size_t(b * chunks + c)]);
        row_floor[size_t(b)] = log_alpha + m0;  // shift-invariant form of lE >= log(alpha) + max lE
      }
    }

    auto finish = [&](int64_t b, const ItemState& row, std::vector<Cand>& cands, float* f) {
      row_bad[size_t(b)] = row.bad;
      row_s_max[size_t(b)] = row.s_max;
      RowResult r{-1, 0.0f};
      if (!row.bad && row.s_max != -kInf) {
        switch (sm.filter) {
          case Filter::kNone:
            r = finish_plain(sm, row);
            break;
          case Filter::kTopK:
            r = finish_top_k(sm, b, row, cands, sc);
            break;
          case Filter::kTopP:
            r = finish_top_p(sm, b, row, f, vocab_size, sc);
            break;
        }
      }
      if (r.token < 0) r.token = row.s_argmax;  // only if f overflowed to -inf (s / tiny T)
      tokens[b] = r.token;
      if (logprobs != nullptr) logprobs[b] = r.logprob;
    };

    if (chunks == 1) {
      float* f = sm.filter == Filter::kTopP ? dense.data() + size_t(thread_index()) * size_t(vocab_size) : nullptr;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        ItemState st;
        sc.cands.clear();
        run_item(p, sm, b, 0, vocab_size, row_floor[size_t(b)], f, sc.cands, sc, st);
        finish(b, st, sc.cands, f);
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < items; ++i) {
        const int64_t b = i / chunks;
        const int64_t v0 = (i % chunks) * chunk_len;
        const int64_t v1 = std::min(vocab_size, v0 + chunk_len);
        float* f = sm.filter == Filter::kTopP ? dense.data() + size_t(b) * size_t(vocab_size) : nullptr;
        ItemState& st = states[size_t(i)];
        if (v0 < v1) run_item(p, sm, b, v0, v1, row_floor[size_t(b)], f, st.cands, sc, st);
      }
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        ItemState row;
        sc.cands.clear();
        merge_chunks(states.data() + b * chunks, chunks, row, sc.cands);
        float* f = sm.filter == Filter::kTopP ? dense.data() + size_t(b) * size_t(vocab_size) : nullptr;
        finish(b, row, sc.cands, f);
      }
    }
  }

  for (int64_t b = 0; b < B; ++b) {
    if (row_bad[size_t(b)]) return locate_bad_logit(p, B, err_row, err_stream);
  }
  for (int64_t b = 0; b < B; ++b) {
    if (row_s_max[size_t(b)] == -kInf) {
      if (err_row) *err_row = b;
      if (err_stream) *err_stream = -1;
      return STEER_ERR_EMPTY_ROW;
    }
  }
  return STEER_OK;
}

}  // namespace

Status sample_cpu(const void* logits, DType dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                  int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                  int64_t vocab_size, float plausibility_alpha, float temperature, int64_t top_k, float top_p,
                  const int64_t* seeds, const int64_t* row_keys, const int64_t* steps, int64_t* tokens,
                  float* logprobs, int64_t* err_row, int64_t* err_stream, int num_threads) {
  if (B < 0 || K < 1 || V < 1 || vocab_size < 1 || vocab_size > V || vocab_size > int64_t(UINT32_MAX) ||
      stride_b < 0 || stride_k < 0 || stride_v < 0 || weight_stride_b < 0 || !(plausibility_alpha >= 0.0f) ||
      !(plausibility_alpha < 1.0f) || !temperature_ok(temperature) || top_k < 0 ||
      !(top_p > 0.0f) || !(top_p <= 1.0f)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (B == 0) return STEER_OK;
  if (logits == nullptr || weights == nullptr || seeds == nullptr || row_keys == nullptr || steps == nullptr ||
      tokens == nullptr) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      if (!std::isfinite(weights[b * weight_stride_b + k])) return STEER_ERR_INVALID_ARGUMENT;
    }
  }
  Sampler sm{};
  sm.greedy = temperature == 0.0f;
  sm.scale = !sm.greedy && temperature != 1.0f;
  sm.temperature = temperature;
  sm.top_k = top_k < vocab_size ? top_k : 0;  // k >= the vocabulary keeps every finite token
  sm.top_p = top_p;
  sm.filter = sm.top_k > 0 ? Filter::kTopK : (top_p < 1.0f ? Filter::kTopP : Filter::kNone);
  sm.seeds = seeds;
  sm.row_keys = row_keys;
  sm.steps = steps;
  return dispatch_dtype(dtype, logits, [&](const auto* data) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(data)>>;
    const Logits<T> p{data, K, V, stride_b, stride_k, stride_v, weights, weight_stride_b, vocab_size};
    return sample_typed(p, B, sm, plausibility_alpha, tokens, logprobs, err_row, err_stream, num_threads);
  });
}

}  // namespace steer
