"""steer eval's report (steer.data.report, steer.data.evaluation): the files, a self-contained and
escaped HTML page, the plots and the sweep table."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the metrics need scikit-learn (the data extra)")
pytest.importorskip("matplotlib", reason="the report needs matplotlib (the data extra)")

from steer.data import report as R  # noqa: E402
from steer.data.evaluation import evaluate_and_report, evaluate_files, generation_settings, headline  # noqa: E402
from steer.data.metrics import summary_row  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _resource_links(page: str) -> list[str]:
    """Every src/href/srcset/poster/data attribute of every real tag of ``page``."""

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            self.found += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "poster", "data", "action")]

    parser = Links()
    parser.feed(page)
    return parser.found
WORDS = "alpha beta gamma delta river stone cloud paper light quick slow green tree bird".split()


def _corpus(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 14))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    real = _corpus(45, seed=0)
    synthetic = _corpus(26, seed=1) + [
        real[0],  # an exact copy
        "<script>alert('x')</script> & <b>bold</b> https://evil.example/x.js",
        "<script>alert('x')</script> & <b>bold</b> https://evil.example/x.js",  # a repeat
        "gamma delta river, stone cloud paper light quick.",
    ]
    generation = {"gamma": 0.2, "eta": 0.6, "top_k": 10, "expert": "<img src=x>"}
    metrics = evaluate_and_report(real, synthetic, out, embedder="tfidf", seed=0, generation=generation)
    return out, metrics


def test_files_and_returned_metrics(run):
    out, metrics = run
    for name in ("report.html", "metrics.json", "ngram_diversity.png", "embedding_map.png"):
        assert (out / name).is_file(), name
    for name in ("ngram_diversity.png", "embedding_map.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["generation"]["eta"] == 0.6
    assert stored["counts"] == {"real_input": 45, "synthetic_input": 30, "real": 30, "synthetic": 30, "cut": "real"}
    assert stored["memorisation"]["exact_copies"] == 1
    assert stored["synthetic"]["diversity"] == pytest.approx(metrics["synthetic"]["diversity"])
    assert "report" in stored["timings_s"] and "total" in stored["timings_s"]
    assert metrics["files"]["report"].endswith("report.html")


def test_html_is_self_contained(run):
    out, _ = run
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    links = _resource_links(page)
    assert len(links) == 2 and all(link.startswith("data:image/png;base64,") for link in links), [x[:40] for x in links]
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', page)) == 2
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page.replace("https://evil.example", "")  # only the escaped data text
    assert "https://" not in page.replace("https://evil.example", "")


def test_html_escapes_the_data(run):
    out, _ = run
    page = (out / "report.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page  # generation settings too
    assert "Exact copies of real texts (1)" in page
    for heading in ("Metrics", "Lexical diversity", "Embedding map", "nearest real text", "Exact copies"):
        assert heading in page


def test_write_report_recomputes_embeddings_when_not_given(run, tmp_path):
    _, metrics = run
    real, synthetic = _corpus(20, seed=3), _corpus(20, seed=4)
    path = R.write_report(tmp_path, metrics, real_texts=real, synthetic_texts=synthetic, title="A <title>")
    page = path.read_text()
    assert path.name == "report.html" and "A &lt;title&gt;" in page
    with pytest.raises(ValueError, match="embeddings"):
        R.write_report(tmp_path, metrics, real_texts=real, synthetic_texts=synthetic, real_embeddings=np.zeros((3, 4)), synthetic_embeddings=np.zeros((20, 4)))


def test_plot_embedding_map_pca_and_tsne(tmp_path):
    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(40, 10)), rng.normal(size=(30, 10)) + 1
    for method in ("pca", "tsne"):
        path = R.plot_embedding_map(real, syn, tmp_path / f"{method}.png", seed=0, method=method)
        assert path.read_bytes()[:8] == PNG_MAGIC
    coords, xlabel, _ = R.project_2d(np.concatenate([real, syn]))
    assert coords.shape == (70, 2) and "variance" in xlabel
    with pytest.raises(ValueError, match="pca"):
        R.project_2d(real, method="umap")


SWEEP = [
    {"gamma": g, "eta": e, "diversity": 0.3 + 0.2 * e + 0.1 * g, "coherency": 0.5 - 0.1 * e, "authenticity_auc": 0.6, "mauve": None}
    for g in (0.0, 0.2, 0.6)
    for e in (0.0, 0.6)
]


def test_plot_tradeoff(tmp_path):
    path = R.plot_tradeoff(SWEEP, tmp_path / "tradeoff.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    by_gamma = R.plot_tradeoff(SWEEP, tmp_path / "by_gamma.png", group="gamma")
    assert by_gamma.is_file()
    rows = [{"gamma": 0.2, "eta": 0.2, "normalised_3grams": 0.8, "coherency": 0.4}]  # no diversity
    assert R.plot_tradeoff(rows, tmp_path / "n3.png").is_file()
    with pytest.raises(ValueError, match="no row"):
        R.plot_tradeoff([{"gamma": 0, "eta": 0}], tmp_path / "empty.png")


def test_tradeoff_table_markdown():
    table = R.tradeoff_table_markdown(list(reversed(SWEEP)))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| γ (gamma) | η (eta) | diversity")
    assert "MAUVE" in lines[0] and "copies" not in lines[0]
    assert len(lines) == 2 + len(SWEEP)
    assert lines[2].startswith("| 0 | 0 | 0.300 |")  # sorted by gamma, then eta
    assert lines[2].endswith("| - |")  # mauve None


def test_evaluate_files_reads_the_run_settings(tmp_path):
    real_path, syn_path = tmp_path / "real.jsonl", tmp_path / "synthetic.jsonl"
    real_path.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in _corpus(30, seed=5)))
    records = [
        {"id": i, "text": t, "seed": i, "gamma": 0.2, "eta": 0.6 if i else 0.4, "top_k": 10, "prompt": ""}
        for i, t in enumerate(_corpus(20, seed=6))
    ]
    syn_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert generation_settings(syn_path) == {"gamma": 0.2, "eta": "varies", "top_k": 10, "prompt": ""}
    assert generation_settings(real_path) is None

    metrics = evaluate_files(real_path, syn_path, tmp_path / "out", text_field="sentence", embedder="tfidf", knn=False)
    assert metrics["generation"]["eta"] == "varies" and metrics["knn"] is None
    page = (tmp_path / "out" / "report.html").read_text()
    assert "synthetic.jsonl vs real.jsonl" in page and "<b>gamma</b> = 0.2" in page and "<b>prompt</b>" not in page
    for name in ("Vendi score", "Self-BLEU-4", "Compression ratio (gzip)", "Self-repetition (4-grams)"):
        assert name in page, name
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"vendi_score", "self_bleu", "compression_ratio", "self_repetition"} <= set(on_disk["summary"])

    names = [name for name, _ in headline(metrics)]
    assert names[:3] == ["texts compared", "normalised 3-grams", "diversity"]
    assert dict(headline(metrics))["k-NN precision"] == "-"
    row = summary_row(metrics)
    assert set(row) == {"normalised_3grams", "diversity", "coherency", "centroid_cosine", "authenticity_auc", "mauve", "copies_of_real",
                        "vendi_score", "self_bleu", "compression_ratio", "self_repetition"}  # fmt: skip
    assert "copies ↓" in R.tradeoff_table_markdown([{"gamma": 0.2, "eta": 0.6, **row}])


def test_baselines_table_shows_each_baseline_and_the_difference(tmp_path):
    real, synthetic, other = _corpus(30, seed=0), _corpus(20, seed=1), _corpus(20, seed=2)
    from steer.data.metrics import evaluate

    baseline = evaluate(real, other, embedder="tfidf", seed=0, knn=False)
    metrics = evaluate_and_report(real, synthetic, tmp_path, embedder="tfidf", seed=0, knn=False,
                                  baselines={"plain <expert>": baseline})
    page = (tmp_path / "report.html").read_text()
    assert "Compared with" in page and "plain &lt;expert&gt;" in page and "plain <expert>" not in page
    ours, theirs = metrics["summary"]["normalised_3grams"], baseline["summary"]["normalised_3grams"]
    assert f"{theirs:.3f} <span class=\"muted\">({ours - theirs:+.3f})</span>" in page
    no_baselines = tmp_path / "plain"
    evaluate_and_report(real, synthetic, no_baselines, embedder="tfidf", seed=0, knn=False)
    assert "Compared with" not in (no_baselines / "report.html").read_text()
