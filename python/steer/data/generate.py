"""``steer generate``: real examples in, ``n`` synthetic samples out, resumable.

The job, in order:

1. check every argument and input file, and the tokenizers (``plan_generation``): nothing heavy
   is loaded before the input is known to be good;
2. open the output (``steer.data.output``): the records already there are checked to come from
   this run's settings and models before anything in the file changes; then a torn last line of
   a killed run is cut off;
3. rebuild the negative pool: the real examples, then every synthetic sample already written, in
   order (a resumed run is pushed away from what the killed run wrote, as if it had not stopped);
4. run the engine until the file holds ``n`` records. On the engine, attempts are handed out in
   rounds (``steer.data.rounds``): attempt k has seed ``--seed`` + k and draws its negatives, keyed
   by (seed, k), from the pool as it stood two rounds (``--pool-round`` attempts, default the batch
   size) before; finished attempts are
   accepted in attempt order and written as they are accepted. So the records depend on the
   settings alone, not on the batch size or the schedule, and a killed run resumed with
   ``--resume`` writes exactly what it would have written unkilled. The drop-in path (models the
   engine cannot run) draws each batch's negatives when the batch starts and writes in finishing
   order.

Each record says what produced it: the STEER settings, its seed, and the ids of the negative
examples it was pushed away from ("real:17" is line 17 of the real set, counting from 0;
"synthetic:3" is the record with id 3 of this file).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from steer.config import SteerConfig
from steer.data.io import DataError, texts_digest
from steer.data.novelty import check_threshold, make_gate, resolve_method
from steer.data.models import ModelSources, load_models, load_tokenizer, pick_device, pick_dtype
from steer.data.output import existing_records, journal_path, open_output, output_format
from steer.engine.pool import NegativePool, dedupe_key, example_budget, example_separator

# Settings that must match between a run and the run that resumes it.
RUN_FIELDS = (
    "gamma", "eta", "num_negatives", "negative_mode", "top_k", "top_p", "temperature", "max_new_tokens",
    "run_seed", "expert_digest", "base_digest", "prompt", "real_digest", "pool_round", "eos_exempt", "share_negatives",
    "novelty_threshold", "novelty_method", "per_example_kv",
)
# Fields newer than the first record format: a record without one was written before it existed,
# with the value given here (None: whatever today's run uses, as the schedule did not change it).
LATER_FIELDS = {"pool_round": None, "eos_exempt": False, "share_negatives": 1, "novelty_threshold": None, "novelty_method": None,
                "per_example_kv": False}
MAX_ATTEMPTS_PER_SAMPLE = 20  # a run that keeps producing duplicates or empty texts stops with an error
# A record's seed is the run's seed plus its attempt number: far below this limit in any real run,
# which keeps a resumed run's seeds (run seed < 2^62, plus offsets) below the engine's 2^63.
SEED_OFFSET_LIMIT = 2**61


@dataclass(frozen=True)
class GenerateRequest:
    """What ``steer generate`` was asked for (parsed, not yet checked)."""

    real_texts: list[str]
    real_name: str
    expert: str
    base: str | None
    prompt: str
    n: int
    out: Path
    config: SteerConfig  # its seed is the run's seed
    batch_size: int = 16
    pool_round: int | None = None  # attempts per pool round (steer.data.rounds); None: batch_size
    workers: int | None = None  # decode on this many Ray actors (steer.data.distributed); None: in this process
    ray_address: str | None = None
    threads_per_worker: int | None = None
    gpus_per_worker: float = 0.0
    device: str = "auto"
    dtype: str = "auto"
    resume: bool = False
    keep_duplicates: bool = False
    quiet: bool = False
    allow_pickle: bool = False
    novelty_threshold: float | None = None  # the novelty gate (steer.data.novelty); None: off
    novelty_method: str = "auto"


@dataclass
class GenerationPlan:
    """Everything checked and tokenised; what is left is loading the models and running."""

    request: GenerateRequest
    sources: ModelSources
    tokenizer: object
    prompt_ids: list[int]
    separator_ids: list[int]
    eos_token_id: int | None
    real_token_ids: list[list[int]]
    truncated_examples: int
    run_metadata: dict
    example_budget: int | None = None  # most tokens of one pool example in a negative context


def _check_request(request: GenerateRequest) -> None:
    if isinstance(request.n, bool) or not isinstance(request.n, int) or request.n < 1:
        raise DataError(f"--n must be a whole number >= 1, got {request.n!r}")
    if isinstance(request.batch_size, bool) or not isinstance(request.batch_size, int) or request.batch_size < 1:
        raise DataError(f"--batch-size must be a whole number >= 1, got {request.batch_size!r}")
    if request.workers is not None and (isinstance(request.workers, bool) or not isinstance(request.workers, int) or request.workers < 1):
        raise DataError(f"--workers must be a whole number >= 1, got {request.workers!r}")
    if request.workers is not None:
        from steer.data.distributed import require_ray

        require_ray()  # before any file is touched
    if request.threads_per_worker is not None and request.threads_per_worker < 1:
        raise DataError(f"--threads-per-worker must be >= 1, got {request.threads_per_worker}")
    if not request.gpus_per_worker >= 0:
        raise DataError(f"--gpus-per-worker must be >= 0, got {request.gpus_per_worker}")
    if request.pool_round is not None and (isinstance(request.pool_round, bool) or not isinstance(request.pool_round, int)
                                           or request.pool_round < 1):  # fmt: skip
        raise DataError(f"--pool-round must be a whole number >= 1, got {request.pool_round!r}")
    check_threshold(request.novelty_threshold)
    if not request.real_texts:
        raise DataError(f"the real set {request.real_name} is empty: STEER needs real examples for its negative pool")
    if request.config.seed is None:
        raise DataError("a generation run needs a seed (--seed) so that it can be resumed reproducibly")
    out = request.out
    if out.exists() and out.is_dir():
        raise DataError(f"--out {out} is a directory: give a .jsonl or .parquet file path")
    if out.exists() and not out.is_file():
        raise DataError(f"--out {out} is not a regular file")
    parquet = output_format(out) == "parquet"
    if not request.resume:
        for path in (out, journal_path(out)) if parquet else (out,):
            if path.exists() and path.stat().st_size > 0:
                raise DataError(f"--out {out}: {path} already exists: pass --resume to continue that run, or choose another file (steer never overwrites)")
    pick_dtype(request.dtype, pick_device(request.device))  # both fail before any file is touched


def pool_round(request: GenerateRequest) -> int:
    """Attempts per round of the pool (steer.data.rounds): --pool-round, by default the batch size
    (two rounds in flight keep one engine's batch full; a sample's pool is one to two batches stale)."""
    return request.pool_round if request.pool_round is not None else request.batch_size


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model saw its training text begin: with BOS when the tokenizer has one."""
    ids = list(tokenizer(prompt)["input_ids"]) if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if not ids:
        raise DataError("the prompt is empty and the tokenizer has no BOS token to start from: give --prompt")
    return ids


def _examples_per_stream(config: SteerConfig) -> int:
    """Pool examples in one negative context: all N joined ("concat"), or one each ("separate")."""
    return config.num_negatives if config.negative_mode == "concat" else 1


def _example_budget(max_positions: int | None, config: SteerConfig, prefix: int, separator: int) -> int | None:
    """Most tokens of one negative example so that every negative context plus the generated
    tokens fits the model's context window; None when the model states no limit."""
    if max_positions is None or config.eta == 0:
        return None
    per_stream = _examples_per_stream(config)
    budget = example_budget(max_positions, config.max_new_tokens, prefix, separator, per_stream)
    if budget < 1:
        raise DataError(
            f"the model's context ({max_positions} tokens) cannot hold {per_stream} negative example(s) plus "
            f"--max-new-tokens {config.max_new_tokens}: lower --num-negatives or --max-new-tokens, or use --negative-mode separate"
        )
    return budget


def _check_fits_the_model(sources: ModelSources, tokenizer, prompt_ids: list[int], config: SteerConfig) -> None:
    """The prompt plus the generated tokens within the model's context, the tokenizer's ids within
    its vocabulary: what the engine would refuse after minutes of loading, refused now."""
    max_positions = sources.max_positions()
    if max_positions is not None and len(prompt_ids) + config.max_new_tokens > max_positions:
        raise DataError(
            f"the prompt ({len(prompt_ids)} tokens) plus --max-new-tokens {config.max_new_tokens} is more than the "
            f"model's context of {max_positions} tokens: shorten the prompt or lower --max-new-tokens"
        )
    vocab_size = sources.vocab_size()
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise DataError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}: "
            "the tokenizer does not belong to this model (or tokens were added without resizing the embeddings)"
        )


def plan_generation(request: GenerateRequest) -> GenerationPlan:
    """Check the request and tokenise its inputs; raises DataError naming the first problem."""
    _check_request(request)
    config = request.config
    sources = ModelSources.resolve(request.expert, request.base, needs_base=config.gamma != 0, allow_pickle=request.allow_pickle)
    tokenizer = load_tokenizer(sources)
    prompt_ids = _prompt_ids(tokenizer, request.prompt)
    _check_fits_the_model(sources, tokenizer, prompt_ids, config)
    eos = tokenizer.eos_token_id
    if config.eos_exempt and eos is None and config.eta != 0:
        raise DataError("--eos-exempt: the tokenizer has no end-of-text token (eos_token_id) to exempt from the negatives")
    # Between examples of a negative context: end one example and begin the next one as the prompt does.
    separator_ids = example_separator(prompt_ids, eos, tokenizer("\n", add_special_tokens=False)["input_ids"])
    budget = _example_budget(sources.max_positions(), config, len(prompt_ids), len(separator_ids))
    real_token_ids, truncated = [], 0
    for index, text in enumerate(request.real_texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise DataError(f"real example {index} of {request.real_name} tokenises to nothing")
        if budget is not None and len(ids) > budget:
            ids, truncated = ids[:budget], truncated + 1
        real_token_ids.append(ids)
    metadata = {
        "gamma": config.gamma, "eta": config.eta, "num_negatives": config.num_negatives,
        "negative_mode": config.negative_mode, "top_k": config.top_k, "top_p": config.top_p,
        "temperature": config.temperature, "max_new_tokens": config.max_new_tokens, "run_seed": config.seed,
        **sources.fingerprints(), "prompt": request.prompt, "real_digest": texts_digest(request.real_texts),
        "pool_round": pool_round(request), "eos_exempt": config.eos_exempt, "share_negatives": config.share_negatives,
        "novelty_threshold": request.novelty_threshold, "per_example_kv": config.per_example_kv,
        "novelty_method": None if request.novelty_threshold is None else resolve_method(request.novelty_method),
    }
    for wanted, option in ((request.workers is not None, "--workers"), (request.novelty_threshold is not None, "--novelty-threshold"),
                           (config.per_example_kv, "--per-example-kv")):  # fmt: skip
        if wanted:
            _check_engine_runs(sources, option)
    if request.resume:  # a file that cannot be continued is refused now, not after the models load
        check_resumable(request.out, existing_records(request.out), metadata, request.n)
    return GenerationPlan(request, sources, tokenizer, prompt_ids, separator_ids, eos, real_token_ids, truncated, metadata, budget)


MODEL_FIELDS = {"expert_digest": ("expert", "the expert"), "base_digest": ("base", "the base model")}


def _difference(record: dict, metadata: dict, key: str) -> str:
    if key in MODEL_FIELDS:
        path_key, name = MODEL_FIELDS[key]
        if key not in record:
            return f"{name}: the file records no model fingerprint (written by an older steer)"
        return f"{name}: file {record.get(path_key)} (digest {record[key]}) vs now {metadata[path_key]} (digest {metadata[key]})"
    if key not in record and key in LATER_FIELDS:
        return f"{key}: file {LATER_FIELDS[key]!r} (written before steer recorded it) vs now {metadata[key]!r}"
    return f"{key}: file {record.get(key)!r} vs now {metadata[key]!r}"


def _recorded(record: dict, key: str, metadata: dict):
    """The record's value of a run setting; for a field it predates, the value it was written with."""
    if key in record or key not in LATER_FIELDS:
        return record.get(key)
    return metadata[key] if LATER_FIELDS[key] is None else LATER_FIELDS[key]


def check_resumable(path: Path, existing: list[dict], metadata: dict, n: int) -> None:
    """DataError unless every record of ``existing`` comes from a run with ``metadata``'s settings
    and models (compared by digest, not by path), and there are no more than ``n``."""
    for number, record in enumerate(existing, start=1):
        differing = [_difference(record, metadata, key) for key in RUN_FIELDS if _recorded(record, key, metadata) != metadata[key]]
        if differing:
            raise DataError(
                f"{path}, record {number} was written with other settings ({'; '.join(differing)}): resume with the same "
                "arguments and models, or write to another --out"
            )
        # The resumed run continues after the largest seed: each record's must be one this run drew.
        seed, run_seed = record.get("seed"), metadata["run_seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed - run_seed < SEED_OFFSET_LIMIT:
            raise DataError(
                f"{path}, record {number} has {'no seed' if seed is None else f'the seed {seed!r}'}, not one a run with --seed "
                f"{run_seed} draws (an int from {run_seed} on): this file was not written by steer generate (or was edited): fix or move it"
            )
    if len(existing) > n:
        raise DataError(f"{path} already holds {len(existing)} samples, more than --n {n}")


class SyntheticPool(NegativePool):
    """The negative pool of a dataset run: real examples, then the samples written so far.

    A finished sample joins the pool only when it is accepted: not empty and, unless duplicates
    are kept, not a repeat of an earlier sample. ``labels[i]`` names pool entry i in the output.
    Pool entries are cut to the plan's example budget, as the real examples are, so that a
    negative context of long samples still fits the model's context window.
    """

    def __init__(self, plan: GenerationPlan, existing: list[dict], *, seed: int) -> None:
        tokenizer = plan.tokenizer
        self.budget = plan.example_budget
        synthetic = [self._fit(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in existing]
        super().__init__(
            plan.real_token_ids + [s for s in synthetic if s], seed=seed,
            prefix=plan.prompt_ids, separator=plan.separator_ids, suffix=plan.separator_ids,
        )
        self.tokenizer, self.keep_duplicates = tokenizer, plan.request.keep_duplicates
        self.labels = [f"real:{i}" for i in range(len(plan.real_token_ids))]
        self.labels += [f"synthetic:{r['id']}" for r, s in zip(existing, synthetic) if s]
        self.seen = {dedupe_key(r["text"]) for r in existing}
        self.next_id = max((r["id"] for r in existing), default=-1) + 1
        self.accepted_text: str | None = None

    def add(self, tokens: list[int]) -> int:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        key = dedupe_key(text)
        if not key or (not self.keep_duplicates and key in self.seen):
            self.accepted_text = None
            return -1
        self.seen.add(key)
        self.accepted_text = text
        self.labels.append(f"synthetic:{self.next_id}")
        return super().add(self._fit(tokens))

    def _fit(self, tokens) -> list[int]:
        return list(tokens)[: self.budget] if self.budget is not None else list(tokens)


class Progress:
    """A one-line progress report on stderr: samples, samples/s, tokens/s and time left."""

    def __init__(self, total: int, done: int, *, quiet: bool, stream=None) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.tokens, self.quiet, self.stream = 0, quiet, stream or sys.stderr
        self.start = time.perf_counter()
        self.last_print = 0.0
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, samples: int, tokens: int) -> None:
        self.done += samples
        self.tokens += tokens
        now = time.perf_counter()
        if self.quiet or (now - self.last_print < (0.2 if self.interactive else 5.0) and self.done < self.total):
            return
        self.last_print = now
        self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        width = 24
        filled = int(width * self.done / self.total)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} samples | "
            f"{rate:.1f} samples/s | {self.tokens / elapsed:.0f} tokens/s | "
            f"{'--' if math.isinf(left) else f'{left:.0f}s'} left"
        )
        end = "\r" if self.interactive and self.done < self.total else "\n"
        print(line, end=end, file=self.stream, flush=True)


@dataclass
class GenerationSummary:
    out: Path
    written: int
    resumed_from: int
    attempts: int
    dropped_duplicates: int
    dropped_empty: int
    tokens: int
    seconds: float
    truncated_examples: int
    workers: list | None = None  # per Ray worker: decoded, lost, seconds (--workers)
    negative_cache_hit: float | None = None  # share of negative-context tokens found in the prefix cache (engine, one process)
    chunk_cache_hit: float | None = None  # --per-example-kv: share of the examples' chunk tokens found cached (engine, one process)
    novelty_rejected: int = 0  # attempts the novelty gate turned away, over the whole run (resumed runs included)

    def as_dict(self) -> dict:
        return {**asdict(self), "out": str(self.out)}


def _hit_rate(stats, role: str, asked_before: int, cached_before: int) -> float | None:
    """The share of a stream role's context tokens found cached since the counts were taken."""
    asked = stats.context_tokens.get(role, 0) - asked_before
    return (stats.cached_tokens.get(role, 0) - cached_before) / asked if asked else None


def _longest_context(plan: GenerationPlan) -> int:
    """An upper bound on the tokens of any stream of the run (a negative context of the longest
    pool examples, or the prompt, plus the generated tokens)."""
    config = plan.request.config
    longest = len(plan.prompt_ids)
    if config.eta != 0:
        example = max(max(len(e) for e in plan.real_token_ids), config.max_new_tokens)
        example = min(example, plan.example_budget) if plan.example_budget is not None else example
        per_stream = _examples_per_stream(config)
        longest = max(longest, len(plan.prompt_ids) + per_stream * (example + len(plan.separator_ids)))
    return longest + config.max_new_tokens


def _check_engine_runs(sources: ModelSources, option: str) -> None:
    """``option`` (--workers, --novelty-threshold) needs the engine's rounds: a model the engine
    cannot run is refused up front."""
    from steer.engine.models import supported_model_types

    model_type = sources.model_type()
    if model_type not in supported_model_types():
        raise DataError(f"{option} runs on the steer engine, which has no forward for {model_type} models: "
                        f"run without {option} (the drop-in path)")  # fmt: skip


def build_engine(plan: GenerationPlan, models=None, *, notice=None):
    """The decoder of a plan, loading its models (or reusing ``models`` = (expert, base)): the
    SteerEngine, or the drop-in path through Hugging Face ``generate`` for a model the engine
    cannot run (said in one line to ``notice``, default stderr)."""
    from steer.engine.engine import SteerEngine
    from steer.engine.models import per_example_kv_unsupported, unsupported_reason

    request = plan.request
    device = pick_device(request.device)
    dtype = pick_dtype(request.dtype, device)
    expert, base = models if models is not None else load_models(plan.sources, dtype=dtype)
    config = request.config
    vocab = min(len(plan.tokenizer), expert.get_output_embeddings().weight.shape[0])
    base = base if config.gamma != 0 else None
    reason = unsupported_reason(expert, _longest_context(plan))
    if config.per_example_kv:
        cannot = reason or per_example_kv_unsupported(expert)
        if cannot:
            raise DataError(f"--per-example-kv: {cannot}")
    if reason is not None:
        from steer.data.dropin import DropInGenerator

        print(f"steer: {reason}; generating through Hugging Face generate with the drop-in SteerLogitsProcessor "
              "(the same records, slower)", file=notice or sys.stderr, flush=True)
        return DropInGenerator(expert, base, config=config, device=device, dtype=dtype, batch_size=request.batch_size, vocab_size=vocab)
    streams = 1 + (config.gamma != 0) + (config.num_negative_streams if config.eta != 0 else 0)
    return SteerEngine(expert, base, config=config, device=device, dtype=dtype, max_batch_rows=request.batch_size * streams, vocab_size=vocab)


def run_generation(plan: GenerationPlan, engine=None, *, models=None) -> GenerationSummary:
    """Write samples to ``plan.request.out`` until it holds ``n``; resumes what is already there."""
    request = plan.request

    def check(records: list[dict]) -> None:
        check_resumable(request.out, records, plan.run_metadata, request.n)

    with open_output(request.out, check=check) as writer:
        existing = writer.existing
        summary = GenerationSummary(request.out, len(existing), len(existing), 0, 0, 0, 0, 0.0, plan.truncated_examples)
        if len(existing) >= request.n:
            writer.finish()
            return summary
        progress = Progress(request.n, len(existing), quiet=request.quiet)
        start = time.perf_counter()
        max_attempts = MAX_ATTEMPTS_PER_SAMPLE * (request.n - len(existing))
        if request.workers is not None:
            from steer.data.distributed import decode_on_ray

            run = RoundRun(plan, existing, writer, summary, progress, max_attempts)
            summary.workers = decode_on_ray(plan, run, workers=request.workers, address=request.ray_address,
                                            threads_per_worker=request.threads_per_worker,
                                            gpus_per_worker=request.gpus_per_worker)["workers"]  # fmt: skip
        else:
            from steer.engine.engine import SteerEngine

            engine = engine if engine is not None else build_engine(plan, models)
            if isinstance(engine, SteerEngine):
                stats = engine.prefix_cache_stats
                before = {role: (stats.context_tokens.get(role, 0), stats.cached_tokens.get(role, 0)) for role in ("negative", "chunk")}
                _generate_in_rounds(engine, RoundRun(plan, existing, writer, summary, progress, max_attempts), request.batch_size)
                summary.negative_cache_hit, summary.chunk_cache_hit = (_hit_rate(stats, role, *before[role]) for role in ("negative", "chunk"))
            else:
                _generate_with_dropin(plan, engine, existing, writer, summary, progress, max_attempts)
        writer.finish()
        summary.seconds = time.perf_counter() - start
        return summary


def _generate_with_dropin(plan: GenerationPlan, engine, existing: list[dict], writer, summary: GenerationSummary,
                          progress: Progress, max_attempts: int) -> None:  # fmt: skip
    """The drop-in path (models the engine cannot run): batches that draw their negatives from
    the pool as it stands when they start, written in finishing order."""
    request = plan.request
    seed = request.config.seed
    # Resume after the last seed used, so no seed and no pool draw of the killed run repeats.
    next_attempt = max((r["seed"] - seed + 1 for r in existing), default=0)
    pool = SyntheticPool(plan, existing, seed=seed * 1_000_003 + next_attempt)
    while summary.written < request.n:
        if summary.attempts >= max_attempts:
            raise _too_many_attempts(summary)
        needed = request.n - summary.written
        results = engine.run(plan.prompt_ids, needed, pool, eos_token_id=plan.eos_token_id, seed_offset=next_attempt)
        for result in results:
            summary.attempts += 1
            summary.tokens += len(result.token_ids)
            if pool.accepted_text is None:
                empty = not pool.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
                summary.dropped_empty += empty
                summary.dropped_duplicates += not empty
                progress.update(0, len(result.token_ids))
                continue
            writer.write(_record(plan, pool, result))
            summary.written += 1
            progress.update(1, len(result.token_ids))
        next_attempt += needed


def _too_many_attempts(summary: GenerationSummary) -> DataError:
    novel = f", {summary.novelty_rejected} too close to the pool in all" if summary.novelty_rejected else ""
    return DataError(
        f"{summary.attempts} samples gave only {summary.written - summary.resumed_from} new distinct texts "
        f"({summary.dropped_duplicates} duplicates, {summary.dropped_empty} empty{novel}): the model repeats itself; "
        "raise --temperature, --eta or --top-k, " + ("or --novelty-threshold" if novel else "or pass --keep-duplicates")
    )


def _pool_tokens(token_ids: list[int], finish_reason: str) -> list[int]:
    """What of a finished sample joins the pool: its tokens, less the EOS that ended it."""
    return token_ids[:-1] if finish_reason == "eos" else token_ids


class RoundRun:
    """One run's attempts through steer.data.rounds, whoever decodes them: ``next_attempts`` and
    ``request_of`` give the engine requests to start, ``finished`` takes a decoded attempt and
    writes every sample it lets the planner accept (in attempt order); ``lost`` hands attempts of
    a dead decoder out again."""

    def __init__(self, plan: GenerationPlan, existing: list[dict], writer, summary: GenerationSummary,
                 progress: Progress, max_attempts: int) -> None:  # fmt: skip
        from steer.data.rounds import RoundPlanner

        self.plan, self.writer, self.summary, self.progress = plan, writer, summary, progress
        self.max_attempts = max_attempts
        config = plan.request.config
        ordered = sorted(existing, key=lambda r: r["seed"])  # an older steer wrote them in finishing order
        self.seen = {dedupe_key(r["text"]) for r in existing}
        self.labels = [f"real:{i}" for i in range(len(plan.real_token_ids))] + [f"synthetic:{r['id']}" for r in ordered]
        self.next_id = max((r["id"] for r in existing), default=-1) + 1
        self.results: dict[int, tuple[list[int], str]] = {}
        self._decoded: dict[tuple, str] = {}  # pool tokens -> text, decoded by prepare for the gate
        threshold = plan.request.novelty_threshold
        self.gate = None
        if threshold is not None:
            self.gate = make_gate(plan.run_metadata["novelty_method"], threshold, plan.request.real_texts + [r["text"] for r in ordered])
            summary.novelty_rejected = max((r.get("novelty_rejected", 0) for r in existing), default=0)
        self.planner = RoundPlanner(
            plan.real_token_ids + [self._example_of(r["text"]) for r in ordered], run_seed=config.seed,
            num_negatives=config.num_negatives if config.eta != 0 else 0, target=plan.request.n, accept=self._accept,
            accepted_attempts=[r["seed"] - config.seed for r in ordered], round_size=plan.run_metadata["pool_round"],
            share=config.share_negatives,
        )  # fmt: skip

    @property
    def done(self) -> bool:
        return self.planner.done

    def next_attempts(self, limit: int):
        if self.summary.attempts >= self.max_attempts:
            raise _too_many_attempts(self.summary)
        return self.planner.next_attempts(limit)

    def lost(self, attempts) -> None:
        self.planner.lost(attempts)

    def request_of(self, attempt):
        from steer.engine.pool import example_chunks, frame_examples
        from steer.engine.sequence import Request

        plan, config = self.plan, self.plan.request.config
        chosen = [self.planner.examples[i] for i in attempt.negatives]
        frames = (plan.prompt_ids, plan.separator_ids, plan.separator_ids)
        negatives = frame_examples(chosen, config.negative_mode, *frames) if chosen else []
        chunks = [example_chunks(chosen, *frames)] if chosen and config.per_example_kv else []
        return Request(plan.prompt_ids, negatives, config.max_new_tokens, eos_token_id=plan.eos_token_id, seed=attempt.seed,
                       negative_chunks=chunks)  # fmt: skip

    def prepare(self, finished) -> None:
        """Attempts that finished together, (token ids, finish reason) each: their texts embedded
        in one batch for the novelty gate, and kept for its verdict (decoded once)."""
        if self.gate is not None:
            texts = []
            for token_ids, reason in finished:
                text = self._text(token_ids)
                self._decoded[tuple(_pool_tokens(token_ids, reason))] = text
                texts.append(text)
            self.gate.prepare(texts)

    def _text(self, tokens) -> str:
        return self.plan.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def finished(self, attempt, token_ids: list[int], finish_reason: str) -> None:
        self.results[attempt.index] = (list(token_ids), finish_reason)
        pool_tokens = _pool_tokens(token_ids, finish_reason)
        for accepted in self.planner.complete(attempt, pool_tokens):
            full, reason = self.results.pop(accepted.attempt.index)
            self.writer.write({
                "id": self.next_id, "text": accepted.text, "finish_reason": reason, "num_tokens": len(full),
                "seed": accepted.attempt.seed, "negative_ids": [self.labels[i] for i in accepted.attempt.negatives],
                **self.plan.run_metadata,
                **({"novelty_rejected": self.summary.novelty_rejected} if self.gate is not None else {}),
            })  # fmt: skip
            self.labels.append(f"synthetic:{self.next_id}")
            self.next_id += 1
            self.summary.written += 1
            self.summary.tokens += len(full)
            self.progress.update(1, len(full))

    def _example_of(self, text: str) -> list[int]:
        """What joins the pool: the text's tokens (as a resumed run re-reads them), cut to the budget."""
        ids = list(self.plan.tokenizer(text, add_special_tokens=False)["input_ids"])
        budget = self.plan.example_budget
        return ids[:budget] if budget is not None else ids

    def _accept(self, tokens):
        text = self._decoded.pop(tuple(tokens), None)
        text = self._text(tokens) if text is None else text
        key = dedupe_key(text)
        self.summary.attempts += 1
        if not key or (not self.plan.request.keep_duplicates and key in self.seen):
            self.summary.dropped_empty += not key
            self.summary.dropped_duplicates += bool(key)
            return None
        example = self._example_of(text)
        if not example:
            self.summary.dropped_empty += 1
            return None
        if self.gate is not None:
            if not self.gate.admits(text):  # too close to the pool: sampled again with the next seed
                self.summary.novelty_rejected += 1
                return None
            self.gate.add(text)
        self.seen.add(key)
        return text, example


def finished_outputs(engine) -> list:
    """The outputs of one engine step that finished. A sample whose logits the sampler refused
    stops the run in one line (what was written before it stands, and --resume goes on)."""
    done = [output for output in engine.step() if output.finished]
    failed = next((output for output in done if output.error is not None), None)
    if failed is not None:
        raise DataError(
            f"sample attempt {failed.request_id}: {failed.error}: the model's numbers went wrong (NaN or inf in its "
            "weights, or an overflow in float16: try --dtype float32); the samples written so far are intact"
        )
    return done


def _generate_in_rounds(engine, run: RoundRun, batch_size: int) -> None:
    """Decode a RoundRun's attempts on one engine's step API, up to ``batch_size`` at once: the
    records are the same whatever the schedule, and a resumed run writes what the killed one would
    have."""
    running = {}
    try:
        while not run.done:
            for attempt in run.next_attempts(max(1, batch_size) - len(running)):
                engine.add_request(run.request_of(attempt), request_id=attempt.index)
                running[attempt.index] = attempt
            if not running:
                raise RuntimeError("the round planner handed out nothing while the run is not done")  # a bug of ours
            done = finished_outputs(engine)
            run.prepare([(output.token_ids, output.finish_reason) for output in done])
            for output in done:
                run.finished(running.pop(output.request_id), output.token_ids, output.finish_reason)
    finally:
        for request_id in list(running):
            engine.abort_request(request_id)


def _record(plan: GenerationPlan, pool: SyntheticPool, result) -> dict:
    record_id = pool.next_id
    if pool.labels[-1] != f"synthetic:{record_id}":
        raise RuntimeError("the pool and the output disagree on the sample's id")  # add() and _record() out of step
    pool.next_id += 1
    return {
        "id": record_id,
        "text": pool.accepted_text,
        "finish_reason": result.finish_reason,
        "num_tokens": len(result.token_ids),
        "seed": result.seed,
        "negative_ids": [pool.labels[i] for i in result.negative_example_ids],
        **plan.run_metadata,
    }
