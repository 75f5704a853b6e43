"""steer.sample in Triton: one read of the [B, K, V] logits, a token and its log-probability per row.

    s(v)     = sum_k w_k z_k(v)                 (streams.py: -inf rules, padding, plausibility)
    f(v)     = s(v) / T                         (greedy, T = 0: f = s, filters at T = 1)
    filtered = f restricted to the top_k best, then to the top_p nucleus (ties with the last kept
               score are kept, exactly as steer.reference.filter_scores)
    token    = argmax_v filtered(v) + g(v)      g = Gumbel noise of (seed, row key, step, v),
                                                steer_kernels.philox; greedy: argmax_v s(v)
    logprob  = filtered(token) - logsumexp_v filtered(v)

Stage 1, grid (B, num_chunks), ``_sample_pass_kernel``: program (b, c) reads chunk c of row b once
(K streams, native dtype, any strides), computes f tile by tile and keeps, for its chunk:
  * the running max and sum of exp (the chunk's share of logsumexp f),
  * without filters: the Gumbel-max winner (its perturbed score, id and f); a tile whose best f
    is more than GUMBEL_MAX below the winner so far skips the noise,
  * with top-k / top-p: the NCAND best (f, id) keys of the chunk (select.py) and f itself, written
    to a float32 row [B, V] that only an exact fallback reads again.
Stage 2, grid (B,), ``_sample_finish_kernel``: merges the partials of row b.
  * no filter: the winner of the chunk winners (ties: lowest chunk, i.e. lowest id).
  * top-k: the k-th best of the union of candidates is the exact k-th best f (every chunk's top k
    is in its list); keep candidates >= it. If a full list ends on that very score, tokens tied
    with it may have been left out of the list: exact fallback.
  * top-p after top-k: softmax over the kept candidates, sorted by construction; cumulative mass;
    the reference's nucleus rule.
  * top-p alone: the union of lists is sorted; every token scoring above the best "last
    candidate" of a full list is present, in order, with its probability exp(f - logsumexp f)
    from the global logsumexp. If the nucleus closes inside that exact prefix it is exact;
    otherwise (a flat distribution): exact fallback.
  * then Gumbel-max over the kept candidates (noise keyed by token id, so the same draw as over
    the whole row) and logprob from their logsumexp.
  * exact fallback, rare: multi-pivot bisection on the stored row f for the top-k and top-p
    thresholds (select.py), then one pass drawing over f >= threshold. No sort of V anywhere.
    (top_k > TOPK_CANDIDATES_MAX skips the lists and always takes this path.)

Everything the kernels need per row (seed, row key, step) is read from device memory, so the
launch path never synchronises with the device and a CUDA graph can replay ``launch_sample``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from steer_kernels import philox, select, streams

TOPK_CANDIDATES_MAX = 256  # top_k above this skips the candidate lists and goes to the exact search
TOPP_CANDIDATES = 64  # candidates per chunk for top-p without top-k
UNION_MAX = 4096  # candidates merged by one second-stage program (bounds num_chunks)
TOPP_PREFIX = 512  # sorted candidates the second stage scans for a top-p nucleus
FALLBACK_BLOCK = 1024
FALLBACK_PIVOTS = 16

PATH_FAST = 0  # path codes written to the optional ``paths`` output
PATH_EXACT = 1


@triton.jit
def _sample_pass_kernel(
    logits_ptr, stride_b, stride_k, stride_v,
    w_ptr, w_stride_b, w_stride_k,
    seed_ptr, seed_stride, key_ptr, key_stride, step_ptr, step_stride,
    pmax0_ptr, log_alpha,
    row_ptr, row_stride,
    pmax_ptr, psum_ptr, pwin_ptr, pwf_ptr, pwid_ptr, cand_ptr,
    err_ptr,
    vocab_size, temperature, chunk, num_chunks,
    K: tl.constexpr, BLOCK: tl.constexpr, NCH: tl.constexpr, NCAND: tl.constexpr, INSERT_LIMIT: tl.constexpr,
    PLAUS: tl.constexpr, STORE_ROW: tl.constexpr, STATS: tl.constexpr, WINNER: tl.constexpr,
    NOISE: tl.constexpr, CANDS: tl.constexpr, OFFS64: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    b64 = b.to(tl.int64)
    logits_row = logits_ptr + b64 * stride_b
    w_row = w_ptr + b64 * w_stride_b
    f_row = row_ptr + b64 * row_stride
    seed = tl.load(seed_ptr + b64 * seed_stride)
    row_key = tl.load(key_ptr + b64 * key_stride)
    step = tl.load(step_ptr + b64 * step_stride)
    plaus_threshold = 0.0
    if PLAUS:
        plaus_threshold = streams.plausibility_threshold(pmax0_ptr, b, num_chunks, log_alpha, NCH)
    start = c * chunk
    end = tl.minimum(start + chunk, vocab_size)
    lanes = tl.arange(0, BLOCK)
    code = tl.full([BLOCK], 2 * K, tl.int32)
    m = float("-inf")
    total = 0.0
    best = float("-inf")
    best_id = 0
    best_f = float("-inf")
    cands = tl.full([NCAND], select.SENTINEL, tl.int64)
    cands_min = select.SENTINEL
    for tile in range(start, end, BLOCK):
        offs = tile + lanes
        if OFFS64:
            offs = offs.to(tl.int64)
        in_chunk = offs < end
        s, code = streams.combined_tile(logits_row, stride_k, stride_v, w_row, w_stride_k, offs, in_chunk,
                                        plaus_threshold, code, K, PLAUS)
        f = tl.math.div_rn(s, temperature)
        if STORE_ROW:
            tl.store(f_row + offs, f, mask=in_chunk)
        tile_max = tl.max(f)
        m_new = tl.maximum(m, tile_max)
        if STATS:
            if m_new > float("-inf"):
                total = total * tl.exp(m - m_new) + tl.sum(tl.exp(f - m_new))
        m = m_new
        if WINNER:
            if NOISE:
                if (tile_max > float("-inf")) & (tile_max + philox.GUMBEL_MAX + philox.rounding_margin(tile_max) >= best):
                    noise = philox.gumbel(seed, row_key, step, offs)
                    perturbed = tl.where(f > float("-inf"), f + noise, float("-inf"))
                    tile_best = tl.max(perturbed)
                    if tile_best > best:
                        index = tl.argmax(perturbed, 0)
                        best = tile_best
                        best_id = tile + index
                        best_f = tl.sum(tl.where(lanes == index, f, 0.0))
            else:
                if tile_max > best:
                    index = tl.argmax(f, 0)
                    best = tile_max
                    best_id = tile + index
                    best_f = tile_max
        if CANDS:
            cands, cands_min = select.update_candidates(cands, cands_min, select.pack(f, offs), NCAND, INSERT_LIMIT)
    streams.report_stream_errors(err_ptr, b, code, K)
    part = b * num_chunks + c
    tl.store(pmax_ptr + part, m)
    tl.store(psum_ptr + part, total)
    tl.store(pwin_ptr + part, best)
    tl.store(pwf_ptr + part, best_f)
    tl.store(pwid_ptr + part, best_id)
    if CANDS:
        tl.store(cand_ptr + part.to(tl.int64) * NCAND + tl.arange(0, NCAND), cands)


@triton.jit
def _sample_finish_kernel(
    row_ptr, row_stride,
    pmax_ptr, psum_ptr, pwin_ptr, pwf_ptr, pwid_ptr, cand_ptr,
    seed_ptr, seed_stride, key_ptr, key_stride, step_ptr, step_stride,
    tokens_ptr, logprobs_ptr, paths_ptr, err_ptr,
    vocab_size, num_chunks, top_k, top_p,
    NCH: tl.constexpr, NCAND: tl.constexpr, NTOP: tl.constexpr,
    TOPK: tl.constexpr, TOPP: tl.constexpr, CANDS: tl.constexpr, NOISE: tl.constexpr,
    WRITE_PATHS: tl.constexpr, FB_BLOCK: tl.constexpr, NPIV: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    ch = tl.arange(0, NCH)
    in_range = ch < num_chunks
    part = b * num_chunks + ch
    pm = tl.load(pmax_ptr + part, mask=in_range, other=float("-inf"))
    m = tl.max(pm)
    if m == float("-inf"):
        tl.atomic_min(err_ptr + 2, b64)
        tl.store(tokens_ptr + b64, tl.zeros([], tl.int64))
        tl.store(logprobs_ptr + b64, float("-inf"))
    else:
        seed = tl.load(seed_ptr + b64 * seed_stride)
        row_key = tl.load(key_ptr + b64 * key_stride)
        step = tl.load(step_ptr + b64 * step_stride)
        f_row = row_ptr + b64 * row_stride
        ps = tl.load(psum_ptr + part, mask=in_range, other=0.0)
        total = tl.sum(ps * tl.exp(pm - m))  # sum_v exp(f(v) - m) over the row, if STATS ran
        # Chunk winners: Gumbel-max without filters, the argmax when greedy (ties: lowest id).
        pw = tl.load(pwin_ptr + part, mask=in_range, other=float("-inf"))
        winner = tl.argmax(pw, 0)
        token = tl.sum(tl.where(ch == winner, tl.load(pwid_ptr + part, mask=in_range, other=0), 0))
        f_token = tl.sum(tl.where(ch == winner, tl.load(pwf_ptr + part, mask=in_range, other=0.0), 0.0))
        path = 0
        if (not TOPK) and (not TOPP):
            lse = m + tl.log(total)
        else:
            exact_needed = False
            base_key = tl.full([], select.INT32_MIN, tl.int32)
            if CANDS:
                slots = tl.arange(0, NCAND)
                lists = tl.load(cand_ptr + part.to(tl.int64)[:, None] * NCAND + slots[None, :],
                                mask=in_range[:, None], other=select.SENTINEL)
                last = tl.min(lists, axis=1)  # each list is sorted descending
                union = tl.reshape(lists, [NCH * NCAND])
                if TOPK:
                    ranked = tl.topk(union, NCAND)
                    kth = tl.sum(tl.where(slots == top_k - 1, ranked, 0))
                    base_key = tl.where(kth == select.SENTINEL, select.INT32_MIN, select.packed_key(kth))
                    spilled = (last != select.SENTINEL) & (select.packed_key(last) == base_key)
                    exact_needed = (kth != select.SENTINEL) & (tl.max(spilled.to(tl.int32)) > 0)
                    at_least_kth = (union != select.SENTINEL) & (select.packed_key(union) >= base_key)
                    exact_needed = exact_needed | (tl.sum(at_least_kth.to(tl.int32)) > NCAND)
                    keep = (ranked != select.SENTINEL) & (select.packed_key(ranked) >= base_key)
                    positions = slots
                else:
                    ranked = tl.topk(union, NTOP)
                    keep = ranked != select.SENTINEL
                    positions = tl.arange(0, NTOP)
                scores = select.packed_score(ranked)
                weights = tl.where(keep, tl.exp(scores - m), 0.0)
                if TOPP:
                    if TOPK:
                        base_total = tl.sum(weights)
                        exact = keep
                    else:
                        base_total = total
                        full_last = tl.where(last != select.SENTINEL, select.packed_key(last), select.INT32_MIN)
                        cutoff = tl.max(full_last)
                        exact = keep & (select.packed_key(ranked) > cutoff)
                        all_listed = (cutoff == select.INT32_MIN) & (tl.sum((union != select.SENTINEL).to(tl.int32)) <= NTOP)
                    probs = weights / base_total
                    mass_before = tl.cumsum(probs, 0) - probs
                    if not TOPK:
                        closed = tl.max((exact & (mass_before >= top_p)).to(tl.int32)) > 0
                        exact_needed = exact_needed | ((all_listed | closed) == 0)
                    kept = tl.maximum(tl.sum((exact & (mass_before < top_p)).to(tl.int32)), 1)
                    smallest = tl.sum(tl.where(positions == kept - 1, probs, 0.0))
                    keep = keep & (probs >= smallest)
                    weights = tl.where(keep, weights, 0.0)
            else:
                exact_needed = True
            if exact_needed:
                path = 1
                if TOPK and (not CANDS):
                    # k-th best key by counting: the largest key with at least top_k tokens at or above it.
                    lowest = tl.full([1], select.INT32_MIN, tl.int64)
                    finite = tl.sum(select.mass_at_least(f_row, vocab_size, lowest, select.INT32_MIN, m, False, FB_BLOCK))
                    if finite >= top_k:
                        base_key = select.largest_key_reaching(
                            f_row, vocab_size, tl.full([], select.INT32_MIN, tl.int64),
                            select.float_key(m).to(tl.int64) + 1, top_k * 1.0, select.INT32_MIN, m,
                            False, FB_BLOCK, NPIV).to(tl.int32)
                threshold = base_key
                if TOPP:
                    base = tl.zeros([1], tl.int64) + base_key
                    base_total = tl.sum(select.mass_at_least(f_row, vocab_size, base, base_key, m, True, FB_BLOCK))
                    threshold = select.largest_key_reaching(
                        f_row, vocab_size, base_key.to(tl.int64), select.float_key(m).to(tl.int64) + 1,
                        top_p * base_total, base_key, m, True, FB_BLOCK, NPIV).to(tl.int32)
                drawn, f_drawn, kept_total = select.draw_at_least(f_row, vocab_size, threshold, m, seed, row_key,
                                                                  step, NOISE, FB_BLOCK)
                if NOISE:
                    token = drawn
                    f_token = f_drawn
                lse = m + tl.log(kept_total)
            else:
                lse = m  # (never used without candidates: the exact path always runs then)
                if CANDS:
                    if NOISE:
                        ids = select.packed_id(ranked)
                        perturbed = tl.where(keep, scores + philox.gumbel(seed, row_key, step, ids), float("-inf"))
                        chosen = tl.max(select.pack(perturbed, ids))
                        token = select.packed_id(chosen)
                        f_token = tl.max(tl.where(ids == token, scores, float("-inf")))
                    lse = m + tl.log(tl.sum(weights))
        tl.store(tokens_ptr + b64, token.to(tl.int64))
        tl.store(logprobs_ptr + b64, f_token - lse)
        if WRITE_PATHS:
            tl.store(paths_ptr + b64, path)


def _candidates(top_k: int, top_p: float, topk_candidates_max: int, topp_candidates: int) -> tuple[bool, int]:
    """(whether stage 1 keeps candidate lists, how many per chunk)."""
    if top_k > 0:
        if top_k > topk_candidates_max:
            return False, 1
        return True, max(4, triton.next_power_of_2(top_k))
    if top_p < 1.0:
        return True, topp_candidates
    return False, 1


def launch_sample(
    logits: torch.Tensor,
    weights: torch.Tensor,
    seeds: torch.Tensor,
    row_keys: torch.Tensor,
    steps: torch.Tensor,
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    err: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    vocab_size: int,
    plausibility_alpha: float,
    paths: torch.Tensor | None = None,
    block: int | None = None,
    chunk: int | None = None,
    num_warps: int | None = None,
    programs_per_sm: int | None = None,
    finish_warps: int = 8,
    topk_candidates_max: int = TOPK_CANDIDATES_MAX,
    topp_candidates: int = TOPP_CANDIDATES,
    topp_prefix: int = TOPP_PREFIX,
    fallback_block: int = FALLBACK_BLOCK,
    fallback_pivots: int = FALLBACK_PIVOTS,
    insert_limit: int | None = None,
) -> None:
    """Sample one token per row into caller-provided buffers, with no host synchronisation.

    This is the entry point for CUDA graphs: every per-row input is read from device memory by
    the kernels, nothing is copied back, and the only allocations are workspaces from torch's
    caching allocator (captured into the graph's pool). Replaying the graph with new logits, seeds
    or steps written into the captured tensors samples again.

    Args:
        logits: [B, K, V] float32 / float16 / bfloat16, any strides.
        weights: float32 [B, K], any strides (a row stride of 0 shares one row of weights).
        seeds, row_keys, steps: int64 [B] on the logits' device, any stride (0 included).
        tokens: int64 [B] output (contiguous), the drawn token ids.
        logprobs: float32 [B] output (contiguous), their log-probabilities under the filtered
            distribution (greedy: under the filters at temperature 1).
        err: int64 [3] output, reset here: INT64_MAX, or err[0] = b * K + k of the first row and
            stream with a NaN, err[1] the same for +inf, err[2] the first row with no finite score
            (steer_kernels.streams.raise_for_errors turns it into the shared ValueErrors). Rows
            with an error get unspecified tokens.
        temperature, top_k, top_p, vocab_size, plausibility_alpha: as in ``steer.sample``;
            python numbers, fixed into a captured graph.
        paths: optional int32 [B] output: 0 where candidates decided, 1 where the exact fallback
            over the stored row ran (tests, tuning).
        Tiling knobs (defaults in steer_kernels.streams and at the top of this module; the tests
        shrink them so that small vocabularies exercise several chunks and every path):
        block: values per stream per tile; chunk: values per stage-1 program (a multiple of
        block; default: enough chunks for ``programs_per_sm`` programs per SM); num_warps /
        finish_warps: warps of the stage-1 / stage-2 programs; topk_candidates_max: the largest
        top_k served by candidate lists (larger: exact search); topp_candidates: list length for
        top-p alone; topp_prefix: sorted candidates stage 2 scans for a nucleus; fallback_block,
        fallback_pivots: the exact search's tile and pivots per pass; insert_limit: a tile with
        more keys than this above a list's smallest goes through tl.topk, fewer are inserted one
        by one.
    """
    with streams.on_device(logits.device):
        _launch_sample(logits, weights, seeds, row_keys, steps, tokens, logprobs, err, temperature=temperature,
                       top_k=top_k, top_p=top_p, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha,
                       paths=paths, block=block, chunk=chunk, num_warps=num_warps, programs_per_sm=programs_per_sm,
                       finish_warps=finish_warps, topk_candidates_max=topk_candidates_max,
                       topp_candidates=topp_candidates, topp_prefix=topp_prefix, fallback_block=fallback_block,
                       fallback_pivots=fallback_pivots, insert_limit=insert_limit)


def _launch_sample(logits, weights, seeds, row_keys, steps, tokens, logprobs, err, *, temperature, top_k, top_p,
                   vocab_size, plausibility_alpha, paths, block, chunk, num_warps, programs_per_sm, finish_warps,
                   topk_candidates_max, topp_candidates, topp_prefix, fallback_block, fallback_pivots, insert_limit):
    batch, num_streams, _ = logits.shape
    err.fill_(streams.NO_ERROR)
    if batch == 0:
        return
    greedy = temperature == 0
    if top_k >= vocab_size:
        top_k = 0
    use_topk, use_topp = top_k > 0, top_p < 1.0
    filtered = use_topk or use_topp
    cands, ncand = _candidates(top_k, top_p, topk_candidates_max, topp_candidates)
    block = max(block or streams.default_block(logits.dtype, vocab_size), ncand)
    num_warps = num_warps or streams.default_warps(block)
    max_chunks = max(1, UNION_MAX // ncand) if cands else 1024
    chunk, num_chunks = streams.plan_chunks(batch, vocab_size, block, logits.device, chunk=chunk,
                                            max_chunks=max_chunks, programs_per_sm=programs_per_sm)
    nch = triton.next_power_of_2(num_chunks)
    ntop = min(nch * ncand, triton.next_power_of_2(topp_prefix))
    if insert_limit is None:
        insert_limit = max(1, ncand // 2)
    device = logits.device
    plaus = plausibility_alpha > 0
    pmax0 = streams.launch_stream0_max(logits, vocab_size, block, chunk, num_chunks) if plaus else tokens
    log_alpha = math.log(plausibility_alpha) if plaus else 0.0
    partials = torch.empty((4, batch, num_chunks), dtype=torch.float32, device=device)
    winner_ids = torch.empty((batch, num_chunks), dtype=torch.int32, device=device)
    candidates = torch.empty((batch, num_chunks, ncand) if cands else (1,), dtype=torch.int64, device=device)
    row = torch.empty((batch, vocab_size) if filtered else (1,), dtype=torch.float32, device=device)
    row_stride = vocab_size if filtered else 0
    seed_args = (seeds, seeds.stride(0), row_keys, row_keys.stride(0), steps, steps.stride(0))
    _sample_pass_kernel[(batch, num_chunks)](
        logits, logits.stride(0), logits.stride(1), logits.stride(2),
        weights, weights.stride(0), weights.stride(1),
        *seed_args,
        pmax0, log_alpha,
        row, row_stride,
        partials[0], partials[1], partials[2], partials[3], winner_ids, candidates,
        err,
        vocab_size, 1.0 if greedy else float(temperature), chunk, num_chunks,
        K=num_streams, BLOCK=block, NCH=nch, NCAND=ncand, INSERT_LIMIT=insert_limit,
        PLAUS=plaus, STORE_ROW=filtered, STATS=not use_topk, WINNER=greedy or not filtered,
        NOISE=not greedy, CANDS=cands, OFFS64=streams.needs_int64_offsets(logits),
        num_warps=num_warps, enable_fp_fusion=False,
    )
    _sample_finish_kernel[(batch,)](
        row, row_stride,
        partials[0], partials[1], partials[2], partials[3], winner_ids, candidates,
        *seed_args,
        tokens, logprobs, tokens if paths is None else paths, err,
        vocab_size, num_chunks, top_k, float(top_p),
        NCH=nch, NCAND=ncand, NTOP=ntop, TOPK=use_topk, TOPP=use_topp, CANDS=cands, NOISE=not greedy,
        WRITE_PATHS=paths is not None, FB_BLOCK=fallback_block, NPIV=fallback_pivots,
        num_warps=finish_warps, enable_fp_fusion=False,
    )


def sample(
    logits: torch.Tensor,
    weights: torch.Tensor,
    *,
    seeds: torch.Tensor,
    row_keys: torch.Tensor,
    steps: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    **knobs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens int64 [B], logprobs float32 [B]) drawn as ``steer.reference.sample`` draws them, from
    validated inputs on one device. Raises the shared ValueErrors; reading the error buffer back is
    the one host synchronisation (use ``launch_sample`` to avoid it)."""
    batch = logits.shape[0]
    vocab_size = logits.shape[-1] if vocab_size is None else vocab_size
    tokens = torch.empty(batch, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=logits.device)
    err = streams.new_error_buffer(logits.device)
    launch_sample(logits, weights, seeds, row_keys, steps, tokens, logprobs, err, temperature=temperature,
                  top_k=top_k, top_p=top_p, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha, **knobs)
    streams.raise_for_errors(err, logits.shape[1])
    return tokens, logprobs
