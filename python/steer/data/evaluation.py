"""``steer eval`` in one call: metrics, plots and the HTML report, with the embeddings computed once.

- :func:`evaluate_and_report`: texts in, ``metrics.json`` + plots + ``report.html`` out.
- :func:`evaluate_files`: the same from a real file and a ``steer generate`` output file, with
  the run's settings (gamma, eta, ...) read from the output's records into the report.
- :func:`headline`: the few numbers a terminal summary prints.
"""

from __future__ import annotations

import time
from pathlib import Path

from .embeddings import make_embedder
from .metrics import _check_side, evaluate_embeddings, match_sizes
from .report import MAP_FILE, METRICS_FILE, NGRAM_FILE, write_metrics_json, write_report


def evaluate_and_report(
    real_texts,
    synthetic_texts,
    out_dir,
    *,
    embedder="auto",
    seed: int = 0,
    generation: dict | None = None,
    title: str = "STEER synthetic data report",
    knn: bool = True,
    n_samples: int = 12,
    map_method: str = "pca",
    baselines: dict | None = None,
) -> dict:
    """Evaluate ``synthetic_texts`` against ``real_texts`` and write the report to ``out_dir``.

    Same metrics and size matching as :func:`steer.data.metrics.evaluate` (``embedder``: a name for
    :func:`~steer.data.embeddings.make_embedder` or an embedder object); the compared texts are
    embedded in one ``encode`` call and those embeddings feed the metrics, the embedding map and
    the nearest-real-text samples alike. Writes ``metrics.json``, ``ngram_diversity.png``,
    ``embedding_map.png`` and ``report.html`` (see :func:`steer.data.report.write_report`;
    ``baselines``: {name: metrics of another synthetic set}, shown beside this one).

    Returns the metrics dict, with ``generation`` (when given), ``timings_s["report"]`` and
    ``files``: absolute paths of ``report``, ``metrics`` and ``plots``. ValueError when a side is
    empty or has fewer than 10 texts.
    """
    started = time.perf_counter()
    real_texts = _check_side(real_texts, "real")
    synthetic_texts = _check_side(synthetic_texts, "synthetic")
    if isinstance(embedder, str):
        embedder = make_embedder(embedder, seed=seed)
    real_used, syn_used, counts = match_sizes(real_texts, synthetic_texts, seed)

    clock = time.perf_counter()
    embeddings = embedder.encode(real_used + syn_used)
    embed_seconds = time.perf_counter() - clock
    real_emb, syn_emb = embeddings[: len(real_used)], embeddings[len(real_used) :]

    metrics = evaluate_embeddings(
        real_used,
        syn_used,
        real_emb,
        syn_emb,
        embedder_name=embedder.name,
        embedder_kind=getattr(embedder, "kind", None),
        seed=seed,
        knn=knn,
        reference_texts=real_texts,
        counts=counts,
    )
    metrics["timings_s"]["embed"] = embed_seconds

    clock = time.perf_counter()
    report = write_report(
        out_dir,
        metrics,
        real_texts=real_used,
        synthetic_texts=syn_used,
        generation=generation,
        title=title,
        real_embeddings=real_emb,
        synthetic_embeddings=syn_emb,
        reference_texts=real_texts,
        n_samples=n_samples,
        map_method=map_method,
        baselines=baselines,
    )
    metrics["timings_s"]["report"] = time.perf_counter() - clock
    metrics["timings_s"]["total"] = time.perf_counter() - started
    # Again, now with the report's own timing in it.
    write_metrics_json(out_dir, metrics, generation=generation)
    if generation is not None:
        metrics["generation"] = generation
    out_dir = Path(out_dir).resolve()
    metrics["files"] = {
        "report": str(report.resolve()),
        "metrics": str(out_dir / METRICS_FILE),
        "plots": [str(out_dir / NGRAM_FILE), str(out_dir / MAP_FILE)],
    }
    return metrics


GENERATION_FIELDS = (
    "gamma", "eta", "num_negatives", "negative_mode", "top_k", "top_p", "temperature",
    "max_new_tokens", "run_seed", "expert", "base", "prompt",
)
"""Run settings that ``steer generate`` stores in every record and the report shows."""


def _output_records(path) -> list[dict] | None:
    """The records of a ``steer generate`` output (JSONL or Parquet), or None for any other file."""
    from .io import DataError
    from .output import parse_jsonl_records, read_parquet_records

    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            return read_parquet_records(path)
        return parse_jsonl_records(path, path.read_bytes())[0]
    except (OSError, DataError):
        return None


def generation_settings(path) -> dict | None:
    """The run settings (:data:`GENERATION_FIELDS`) stored in the records of a ``steer generate``
    output file, or None for a file without them (plain text, or JSONL from elsewhere). A field
    whose value differs between records (a file stitched from several runs) reads "varies"."""
    settings: dict = {}
    for record in _output_records(path) or []:
        for field in GENERATION_FIELDS:
            if field not in record:
                continue
            if field not in settings:
                settings[field] = record[field]
            elif settings[field] != record[field]:
                settings[field] = "varies"
    return settings or None


def evaluate_files(
    real_path,
    synthetic_path,
    out_dir,
    *,
    text_field: str = "text",
    embedder="auto",
    seed: int = 0,
    knn: bool = True,
) -> dict:
    """:func:`evaluate_and_report` on two files read with :func:`steer.data.io.read_texts`.

    ``text_field`` names the text of the real file's JSONL records; the synthetic file is read
    with it too, falling back to ``"text"`` (what ``steer generate`` writes) when its records lack
    that field. The report's header shows the generation settings found in the synthetic file's
    records (:func:`generation_settings`). Bad files raise ``steer.data.io.DataError``.
    """
    from .io import DataError, read_texts

    real_texts = read_texts(real_path, text_field)
    try:
        synthetic_texts = read_texts(synthetic_path, text_field)
    except DataError:
        if text_field == "text":
            raise
        synthetic_texts = read_texts(synthetic_path, "text")
    title = f"STEER report: {Path(synthetic_path).name} vs {Path(real_path).name}"
    return evaluate_and_report(
        real_texts,
        synthetic_texts,
        out_dir,
        embedder=embedder,
        seed=seed,
        generation=generation_settings(synthetic_path),
        title=title,
        knn=knn,
    )


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def headline(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) pairs for a terminal summary of one evaluation, values as short strings
    ("-" where a metric was not computed): texts compared, normalised 3-grams, diversity,
    coherency, centroid cosine, authenticity AUC, MAUVE, Vendi score, Self-BLEU-4, compression
    ratio, self-repetition, k-NN precision and recall (when
    computed), exact copies of real texts and duplicates (as percentages). The names are the
    same for every result, so two results can be printed side by side."""
    counts = metrics["counts"]
    summary = metrics["summary"]
    knn = metrics.get("knn") or {}
    return [
        ("texts compared", f"{counts['synthetic']}"),
        ("normalised 3-grams", _fmt(summary["normalised_3grams"])),
        ("diversity", _fmt(summary["diversity"])),
        ("coherency", _fmt(summary["coherency"])),
        ("centroid cosine", _fmt(summary["centroid_cosine"])),
        ("authenticity AUC (0.5 best)", _fmt(summary["authenticity_auc"])),
        ("MAUVE", _fmt(summary["mauve"])),
        ("Vendi score", _fmt(summary.get("vendi_score"))),
        ("Self-BLEU-4", _fmt(summary.get("self_bleu"))),
        ("compression ratio", _fmt(summary.get("compression_ratio"))),
        ("self-repetition", _fmt(summary.get("self_repetition"))),
        ("k-NN precision", _fmt(knn.get("precision"))),
        ("k-NN recall", _fmt(knn.get("recall"))),
        ("copies of real texts", f"{100 * summary['exact_copy_fraction']:.1f}%"),
        ("duplicates", f"{100 * metrics['synthetic']['duplicate_fraction']:.1f}%"),
    ]
