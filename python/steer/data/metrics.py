"""The paper's data metrics (docs/design.md, section 2), as pure functions over texts and embeddings.

Lexical (texts only):

- :func:`ngram_stats` / :func:`normalised_ngrams`: distinct-n, unique n-grams / all n-grams.
- :func:`diversity`: prod_{n=2..4} (1 - rep_n), rep_n = 1 - unique_n / total_n.
- :func:`memorisation`: exact copies of real texts, and duplicates within the synthetic set.
- :func:`self_bleu`: Self-BLEU-4 (Zhu et al., 2018): each text's BLEU against all the others.
- :func:`compression_ratio`: gzip compression ratio of the joined texts, reported with
  :func:`self_repetition` (the pair Shaib et al., 2024 recommend).

Semantic (L2-normalised sentence embeddings, rows = texts, see :mod:`steer.data.embeddings`):

- :func:`coherency`: cosine similarity synthetic vs real, mean pairwise and centroid to centroid.
- :func:`authenticity_auc`: ROC-AUC of a gradient-boosting classifier telling real from synthetic
  (5-fold cross-validation); 0.5 is ideal.
- :func:`mauve_score`: MAUVE (Pillutla et al., 2021) on the embeddings.
- :func:`knn_precision_recall`: k-NN precision and recall (Kynkaanniemi et al., 2019).
- :func:`embedding_spread`: mean distance to the centroid.
- :func:`vendi_score`: the Vendi score (Friedman and Dieng, 2023), the effective number of
  distinct texts under the cosine kernel.

:func:`evaluate` runs them all the way the paper compares data sets: the real set is shuffled
(seeded) and cut to the synthetic set's size (or the synthetic set cut to the real set's size when
it is the larger one), both are embedded in one call, and a JSON-serialisable dict comes back.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import sys
import time
from collections import Counter

import numpy as np

from steer.data.io import DataError

MIN_TEXTS = 10
"""Fewest texts per side that :func:`evaluate` accepts (5-fold authenticity needs 5 per class;
k-NN radii and MAUVE's histograms need a few more)."""

TOKEN_PATTERN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
"""Tokens for the n-gram metrics, applied to the lowercased text: a run of word characters
(Unicode letters, digits, underscore) with inner apostrophes kept ("don't" is one token), or any
single other non-space character (each punctuation mark is a token of its own)."""


# ---------------------------------------------------------------------------------------------
# Lexical metrics


def tokenize(text: str) -> list[str]:
    """``TOKEN_PATTERN.findall(text.lower())``: lowercase words and single punctuation marks."""
    return TOKEN_PATTERN.findall(text.lower())


def _ngrams(tokens: list[str], n: int):
    return zip(*(tokens[i:] for i in range(n)))


def ngram_stats(texts, n: int) -> dict:
    """Distinct-n of a data set: ``{"unique": U, "total": T, "distinct": U / T}``.

    T counts every n-gram of every text; U counts the different ones across the whole data set
    (an n-gram seen in two texts counts once). n-grams are taken **within** each text and never
    span two texts: this is the standard corpus-level distinct-n. The paper joins the data set
    into one sequence, which adds the few n-grams that straddle a boundary between neighbouring
    texts; with texts of more than a handful of tokens the two agree closely, and the per-text
    form does not depend on the order of the texts. Tokens: :func:`tokenize`. A data set without
    a single n-gram (all texts shorter than n tokens) has distinct = 0.0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts: Counter = Counter()
    for text in texts:
        counts.update(_ngrams(tokenize(text), n))
    total = sum(counts.values())
    unique = len(counts)
    return {"unique": unique, "total": total, "distinct": unique / total if total else 0.0}


def normalised_ngrams(texts, n: int = 3) -> float:
    """The paper's "normalised n-grams": unique n-grams / all n-grams (distinct-n of
    :func:`ngram_stats`), n = 3 by default. Higher = less repetitive."""
    return ngram_stats(texts, n)["distinct"]


def diversity(texts) -> float:
    """prod_{n=2..4} (1 - rep_n) with rep_n = 1 - unique_n / total_n, i.e. the product of
    distinct-2, distinct-3 and distinct-4 (Su et al., 2022; the paper's diversity). In [0, 1],
    higher = more diverse."""
    value = 1.0
    for n in (2, 3, 4):
        rep = 1.0 - ngram_stats(texts, n)["distinct"]
        value *= 1.0 - rep
    return value


def self_bleu(texts, n: int = 4) -> float:
    """Self-BLEU-n (Zhu et al., 2018, Texygen): the mean over texts of the BLEU of each text (the
    hypothesis) against every other text of the set (the references). BLEU: the geometric mean
    of the clipped n-gram precisions for 1..n (uniform weights; a count is clipped at its largest
    count in any one reference), with Chen and Cherry's smoothing 1 (a precision with no match
    counts 0.1 / total instead of 0; no unigram in common at all scores 0, as NLTK's
    sentence_bleu does) and the brevity penalty exp(1 - r / c) against the reference
    length r closest to the hypothesis length c (the shorter on a tie). Tokens:
    :func:`tokenize`. Texts shorter than one token score 0. In [0, 1]: higher = the texts repeat
    each other more (less diverse). Fewer than two texts: 0.0."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = [tokenize(t) for t in texts]
    if len(tokens) < 2:
        return 0.0
    counts = [[Counter(_ngrams(t, k)) for k in range(1, n + 1)] for t in tokens]
    best = [_two_largest(c[k - 1] for c in counts) for k in range(1, n + 1)]  # per order: gram -> (top, owner, second)
    lengths = np.array([len(t) for t in tokens])
    scores = []
    for index, own in enumerate(counts):
        length = len(tokens[index])
        if length == 0:
            scores.append(0.0)
            continue
        log_precision, unigram_matches = 0.0, 0
        for k in range(n):
            total = max(length - k, 1)  # a text shorter than k + 1 tokens: 0 of 1, as NLTK counts it
            matched = 0
            for gram, count in own[k].items():
                top, owner, second = best[k][gram]
                matched += min(count, second if owner == index else top)
            unigram_matches = unigram_matches or (k == 0 and matched)
            log_precision += math.log((matched if matched else 0.1) / total)
        if not unigram_matches:  # no word in common with any other text: BLEU 0, whatever the smoothing
            scores.append(0.0)
            continue
        others = np.delete(lengths, index)
        gaps = np.abs(others - length)
        closest = int(others[gaps == gaps.min()].min())
        penalty = 1.0 if length > closest else math.exp(1 - closest / length)
        scores.append(penalty * math.exp(log_precision / n))
    return float(np.mean(scores))


def _two_largest(counters) -> dict:
    """For each n-gram of the counters: (largest count, index of the counter holding it, second
    largest count), so that the largest count in any counter but one is a lookup."""
    best: dict = {}
    for index, counter in enumerate(counters):
        for gram, count in counter.items():
            top, owner, second = best.get(gram, (0, -1, 0))
            if count > top:
                best[gram] = (count, index, top)
            elif count > second:
                best[gram] = (top, owner, count)
    return best


def compression_ratio(texts) -> float:
    """Size of the texts joined by single spaces (UTF-8 bytes) over its gzip-compressed size (as
    the ``diversity`` package of Shaib et al., 2024 computes it, compressed once). Higher = more
    redundant (less diverse); report it with :func:`self_repetition`. An empty set: 0.0."""
    joined = " ".join(texts).encode("utf-8")
    if not joined:
        return 0.0
    return len(joined) / len(gzip.compress(joined))


def self_repetition(texts, n: int = 4) -> float:
    """The self-repetition score (Salkar et al., 2022; as in Shaib et al., 2024): for each text,
    log(1 + the number of (n-gram, other text) pairs in which one of its distinct n-grams occurs
    in another text), averaged over the texts. n-grams of whitespace-separated words, case kept,
    as the ``diversity`` package takes them. Higher = the texts share more long n-grams."""
    grams = [set(_ngrams(t.split(), n)) for t in texts]
    if not grams:
        return 0.0
    texts_with: Counter = Counter(g for own in grams for g in own)
    return float(np.mean([math.log(1 + sum(texts_with[g] - 1 for g in own)) for own in grams]))


def normalise_text(text: str) -> str:
    """Case-folded, whitespace collapsed to single spaces, stripped: the key for exact copies."""
    return " ".join(text.casefold().split())


def duplicate_fraction(texts) -> float:
    """Share of texts that repeat an earlier text of the same list (after :func:`normalise_text`):
    (n - distinct) / n. 0 = no duplicates."""
    texts = list(texts)
    if not texts:
        return 0.0
    return (len(texts) - len({normalise_text(t) for t in texts})) / len(texts)


def memorisation(real_texts, synthetic_texts) -> dict:
    """Copies of the real data in the synthetic data, and repeats within the synthetic data.

    After :func:`normalise_text` (case and whitespace ignored):

    - ``exact_copies``: synthetic texts equal to some real text; ``exact_copy_fraction`` = that /
      number of synthetic texts; ``copy_indices``: their positions in ``synthetic_texts``.
    - ``synthetic_duplicates``: synthetic texts equal to an earlier synthetic text;
      ``synthetic_duplicate_fraction`` = that / number of synthetic texts.

    Lower is better for both: STEER's negative prompts exist to push these down.
    """
    real_keys = {normalise_text(t) for t in real_texts}
    synthetic_texts = list(synthetic_texts)
    copies = [i for i, text in enumerate(synthetic_texts) if normalise_text(text) in real_keys]
    seen: set[str] = set()
    duplicates = 0
    for text in synthetic_texts:
        key = normalise_text(text)
        duplicates += key in seen
        seen.add(key)
    n = len(synthetic_texts)
    return {
        "exact_copies": len(copies),
        "exact_copy_fraction": len(copies) / n if n else 0.0,
        "copy_indices": copies,
        "synthetic_duplicates": duplicates,
        "synthetic_duplicate_fraction": duplicates / n if n else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Embedding metrics


def _as_matrix(emb, name: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"{name} embeddings must be a non-empty [n, d] matrix, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{name} embeddings contain NaN or inf")
    return emb


def _pair(real_emb, syn_emb) -> tuple[np.ndarray, np.ndarray]:
    real = _as_matrix(real_emb, "real")
    syn = _as_matrix(syn_emb, "synthetic")
    if real.shape[1] != syn.shape[1]:
        raise ValueError(f"real and synthetic embeddings differ in width: {real.shape[1]} vs {syn.shape[1]}")
    return real, syn


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def coherency(real_emb, syn_emb) -> dict:
    """Cosine similarity of the synthetic embeddings to the real ones (rows re-normalised first).

    - ``mean_pairwise_cosine`` = 1/(|S||R|) sum_{s in S, r in R} cos(s, r), which for unit rows is
      mean(S) . mean(R). The paper's coherency; higher = closer to the real data.
    - ``centroid_cosine`` = cos(mean(S), mean(R)): 1 when both sets have the same centre
      (identical sets give exactly 1).
    - ``real_mean_pairwise_cosine``: the same mean over pairs of *different* real texts,
      (|sum R|^2 - sum_r |r|^2) / (|R| (|R| - 1)): the value real data gets against itself, the
      yardstick for ``mean_pairwise_cosine`` (which rarely exceeds it). None for one real row.
    """
    real, syn = _pair(real_emb, syn_emb)
    real, syn = _unit_rows(real), _unit_rows(syn)
    mean_real, mean_syn = real.mean(axis=0), syn.mean(axis=0)
    n = real.shape[0]
    if n > 1:
        total = real.sum(axis=0)
        self_pairs = float((total @ total - np.einsum("ij,ij->", real, real)) / (n * (n - 1)))
    else:
        self_pairs = None
    return {
        "mean_pairwise_cosine": float(mean_syn @ mean_real),
        "centroid_cosine": _cosine(mean_syn, mean_real),
        "real_mean_pairwise_cosine": self_pairs,
    }


AUTHENTICITY_CLASSIFIER = "GradientBoostingClassifier(n_estimators=100, max_depth=3, max_features='sqrt')"


def authenticity_auc(real_emb, syn_emb, seed: int = 0, *, folds: int = 5) -> float:
    """How well a classifier tells synthetic from real: ROC-AUC of out-of-fold probabilities.

    Labels real = 0, synthetic = 1; ``folds``-fold stratified cross-validation (shuffled with
    ``seed``); each text is scored by the model that did not see it, and the AUC is taken over all
    those out-of-fold scores. The classifier is scikit-learn's ``GradientBoostingClassifier``
    (100 trees of depth 3, learning rate 0.1) with ``max_features="sqrt"``: each split looks at
    sqrt(d) random embedding dimensions, which makes it about 10x faster than all d on 384-wide
    MiniLM vectors (about 0.8 s instead of 10 s for 2 x 200 texts on 2 CPU cores) and is faster
    than ``HistGradientBoostingClassifier`` at these sizes too. 0.5 = indistinguishable (ideal),
    1.0 = trivially separable. Slightly below 0.5 is chance; well below 0.5 means synthetic texts
    copy or nearly copy real ones: a copy's twin sits in the training folds with the other label,
    so the classifier scores the copy the wrong way round. Needs at least ``folds`` texts per side.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    real, syn = _pair(real_emb, syn_emb)
    for name, emb in (("real", real), ("synthetic", syn)):
        if emb.shape[0] < folds:
            raise ValueError(
                f"authenticity needs at least {folds} {name} texts for {folds}-fold cross-validation, got {emb.shape[0]}"
            )
    features = np.concatenate([real, syn]).astype(np.float32)
    labels = np.concatenate([np.zeros(len(real), dtype=np.int64), np.ones(len(syn), dtype=np.int64)])
    classifier = GradientBoostingClassifier(
        n_estimators=100, max_depth=3, learning_rate=0.1, max_features="sqrt", random_state=seed
    )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, features, labels, cv=splitter, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def mauve_available() -> tuple[bool, str | None]:
    """(True, None) when the ``mauve`` package (PyPI ``mauve-text``, with faiss) imports, else
    (False, reason)."""
    try:
        import mauve  # noqa: F401
    except Exception as error:  # ImportError, or faiss failing to load its library
        return False, f"MAUVE skipped: the mauve package is not importable ({type(error).__name__}: {error}); pip install mauve-text"
    return True, None


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence writes to file descriptor 2 (faiss prints "WARNING clustering N points to K
    centroids" from C++ whenever there are fewer than 39 points per histogram bucket, which is
    always the case with MAUVE's n/10 buckets)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def single_threaded():
    """Context: BLAS and OpenMP pools of numpy / scikit-learn limited to one thread, restored on
    exit (threadpoolctl). The metrics work on matrices of a few hundred rows, where one thread
    takes milliseconds; with two threads on a busy 2-core machine OpenBLAS's spinning workers
    made a 566 x 3747 truncated SVD take 6 s instead of 0.12 s. No-op without threadpoolctl."""
    try:
        # threadpoolctl limits the libraries loaded so far: load scipy's OpenBLAS (and
        # scikit-learn's OpenMP) first, or a first SVD inside the context still runs wide.
        import scipy.linalg  # noqa: F401
        import sklearn.utils  # noqa: F401
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


@contextlib.contextmanager
def _faiss_single_thread():
    """Run faiss (MAUVE's k-means) on one OpenMP thread, restoring the setting afterwards. At
    MAUVE's sizes (hundreds to thousands of points) one thread takes milliseconds, while OpenMP's
    spinning barriers on a busy 2-core machine took over a second per call."""
    try:
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
    except Exception:
        yield
        return
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def mauve_score(real_emb, syn_emb, seed: int = 0) -> float | None:
    """MAUVE between the real (p) and synthetic (q) embeddings, or None when ``mauve`` is not
    installed (:func:`mauve_available` says why).

    ``mauve.compute_mauve(p_features=real, q_features=syn, num_buckets="auto", seed=seed,
    device_id=-1, verbose=False)``: the features are given, so MAUVE never loads a featurising
    model (no network, no GPU); it quantises both sets jointly with k-means into
    max(2, round(min(n_p, n_q) / 10)) buckets (after a PCA keeping 90% of the variance) and
    integrates the divergence frontier of the two histograms. In (0, 1]; higher = closer
    distributions (1 = identical).
    """
    real, syn = _pair(real_emb, syn_emb)
    ok, _ = mauve_available()
    if not ok:
        return None
    import mauve

    with _quiet_native_stderr(), _faiss_single_thread():
        out = mauve.compute_mauve(
            p_features=real.astype(np.float32),
            q_features=syn.astype(np.float32),
            num_buckets="auto",
            seed=seed,
            device_id=-1,
            verbose=False,
        )
    return float(out.mauve)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def knn_precision_recall(real_emb, syn_emb, k: int = 5) -> dict:
    """Improved precision and recall (Kynkaanniemi et al., 2019) on the embeddings.

    Each point gets a ball whose radius is the Euclidean distance to its k-th nearest neighbour
    within its own set (itself not counted); a set's manifold is the union of its balls.

    - precision = share of synthetic points inside the real manifold (realism; higher = better),
    - recall = share of real points inside the synthetic manifold (coverage; higher = better).

    Needs more than k points per set. Returns ``{"k", "precision", "recall"}``.
    """
    real, syn = _pair(real_emb, syn_emb)
    for name, emb in (("real", real), ("synthetic", syn)):
        if emb.shape[0] <= k:
            raise ValueError(f"k-NN precision/recall with k={k} needs more than {k} {name} points, got {emb.shape[0]}")

    def radii(points: np.ndarray) -> np.ndarray:
        # Column 0 of the sorted self-distances is the point itself.
        return np.sort(_distances(points, points), axis=1)[:, k]

    real_radii, syn_radii = radii(real), radii(syn)
    precision = (_distances(syn, real) <= real_radii[None, :]).any(axis=1).mean()
    recall = (_distances(real, syn) <= syn_radii[None, :]).any(axis=1).mean()
    return {"k": int(k), "precision": float(precision), "recall": float(recall)}


def vendi_score(emb) -> float:
    """The Vendi score (Friedman and Dieng, 2023) under the cosine kernel: exp of the Shannon
    entropy of the eigenvalues of K / N, K_ij = cos(x_i, x_j) (rows re-normalised, so K_ii = 1).
    Between 1 (every text embeds alike) and N (all orthogonal): the effective number of distinct
    texts. Computed from the d x d matrix X^T X / N, which has the same non-zero eigenvalues."""
    emb = _unit_rows(_as_matrix(emb, "embedding").astype(np.float64))
    if emb.shape[0] == 0:
        return 0.0
    eigenvalues = np.linalg.eigvalsh(emb.T @ emb / emb.shape[0])
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def embedding_spread(emb) -> float:
    """Mean Euclidean distance of the rows to their centroid, mean_i |x_i - mean(x)|. With unit
    rows, in [0, 1]: 0 = every text embeds the same (mode collapse); compare the synthetic value
    with the real one."""
    emb = _as_matrix(emb, "embedding")
    return float(np.linalg.norm(emb - emb.mean(axis=0), axis=1).mean())


# ---------------------------------------------------------------------------------------------
# Everything at once


def _check_side(texts, name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} texts must be a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name} text {i} is a {type(text).__name__}, not a string")
    if not texts:
        raise DataError(f"the {name} set is empty: nothing to evaluate")
    if len(texts) < MIN_TEXTS:
        raise DataError(f"the {name} set has {len(texts)} text{'' if len(texts) == 1 else 's'}; evaluation needs at least {MIN_TEXTS}")
    return texts


def match_sizes(real_texts, synthetic_texts, seed: int = 0) -> tuple[list[str], list[str], dict]:
    """The two sets at one size, as the paper compares them, in an order that depends only on
    what the sets hold and the seed.

    Both sets are sorted, then shuffled with ``seed``, so a file written in another order (a
    resumed run, another batch size) scores the same: MAUVE's clustering and the authenticity
    classifier's folds follow the order of their inputs (the same 200 samples in two orders gave
    MAUVE 0.53 and 0.69). The larger set is cut to the smaller one's size (the paper cuts the real
    set to the synthetic set's). Returns ``(real_used, synthetic_used, counts)`` with counts
    ``{"real_input", "synthetic_input", "real", "synthetic", "cut"}`` (cut: "real", "synthetic"
    or "none").
    """
    real_texts = sorted(real_texts)
    synthetic_texts = sorted(synthetic_texts)
    rng = np.random.default_rng(seed)
    n = min(len(real_texts), len(synthetic_texts))
    real_used = [real_texts[i] for i in rng.permutation(len(real_texts))[:n]]
    synthetic_used = [synthetic_texts[i] for i in rng.permutation(len(synthetic_texts))[:n]]
    cut = "real" if len(real_texts) > n else "synthetic" if len(synthetic_texts) > n else "none"
    counts = {
        "real_input": len(real_texts),
        "synthetic_input": len(synthetic_texts),
        "real": len(real_used),
        "synthetic": len(synthetic_used),
        "cut": cut,
    }
    return real_used, synthetic_used, counts


def _lexical(texts: list[str]) -> dict:
    ngrams = {str(n): ngram_stats(texts, n) for n in (1, 2, 3, 4)}
    out = {f"distinct_{n}": ngrams[n]["distinct"] for n in ngrams}
    product = 1.0
    for n in ("2", "3", "4"):
        product *= ngrams[n]["distinct"]
    out["normalised_3grams"] = ngrams["3"]["distinct"]
    out["diversity"] = product
    out["ngrams"] = ngrams
    out["duplicate_fraction"] = duplicate_fraction(texts)
    out["self_bleu"] = self_bleu(texts)
    out["compression_ratio"] = compression_ratio(texts)
    out["self_repetition"] = self_repetition(texts)
    out["mean_tokens"] = float(np.mean([len(tokenize(t)) for t in texts])) if texts else 0.0
    return out


def evaluate_embeddings(real_texts, synthetic_texts, real_emb, syn_emb, **options) -> dict:
    """Every metric over two already size-matched sets and their embeddings (row i of ``real_emb``
    embeds ``real_texts[i]``, likewise synthetic). :func:`evaluate` without the sampling and the
    embedding, for callers that keep the embeddings (the report). Keyword options:
    ``embedder_name`` (required), ``embedder_kind``, ``seed`` (0), ``knn`` (True),
    ``reference_texts`` (where exact copies are looked up; default ``real_texts``: pass the whole
    real set, since a copy of any real example counts, not only of the sampled ones) and
    ``counts`` (from :func:`match_sizes`). See :func:`evaluate` for the result. Runs under
    :func:`single_threaded`."""
    with single_threaded():
        return _evaluate_embeddings(real_texts, synthetic_texts, real_emb, syn_emb, **options)


def _evaluate_embeddings(
    real_texts,
    synthetic_texts,
    real_emb,
    syn_emb,
    *,
    embedder_name: str,
    embedder_kind: str | None = None,
    seed: int = 0,
    knn: bool = True,
    reference_texts=None,
    counts: dict | None = None,
) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    real_texts, synthetic_texts = list(real_texts), list(synthetic_texts)
    real, syn = _pair(real_emb, syn_emb)
    if real.shape[0] != len(real_texts) or syn.shape[0] != len(synthetic_texts):
        raise ValueError(
            f"embeddings do not match the texts: {real.shape[0]} real rows for {len(real_texts)} texts, "
            f"{syn.shape[0]} synthetic rows for {len(synthetic_texts)} texts"
        )

    clock = time.perf_counter()
    real_lexical, syn_lexical = _lexical(real_texts), _lexical(synthetic_texts)
    copies = memorisation(real_texts if reference_texts is None else reference_texts, synthetic_texts)
    timings["lexical"] = time.perf_counter() - clock

    clock = time.perf_counter()
    coherence = coherency(real, syn)
    real_lexical["spread"] = embedding_spread(real)
    syn_lexical["spread"] = embedding_spread(syn)
    real_lexical["vendi_score"] = vendi_score(real)
    syn_lexical["vendi_score"] = vendi_score(syn)
    timings["coherency"] = time.perf_counter() - clock

    clock = time.perf_counter()
    auc = authenticity_auc(real, syn, seed)
    timings["authenticity"] = time.perf_counter() - clock

    clock = time.perf_counter()
    ok, note = mauve_available()
    mauve_value = None
    if ok:
        try:
            mauve_value = mauve_score(real, syn, seed)
        except Exception as error:  # degenerate inputs (e.g. every embedding equal) break its k-means
            note = f"MAUVE failed on these embeddings ({type(error).__name__}: {error})"
    timings["mauve"] = time.perf_counter() - clock

    knn_result = None
    if knn and min(len(real), len(syn)) >= 2:
        clock = time.perf_counter()
        k = min(5, min(len(real), len(syn)) - 1)
        knn_result = knn_precision_recall(real, syn, k=k)
        timings["knn"] = time.perf_counter() - clock
    timings["metrics_total"] = time.perf_counter() - started

    if counts is None:
        counts = {
            "real_input": len(real_texts),
            "synthetic_input": len(synthetic_texts),
            "real": len(real_texts),
            "synthetic": len(synthetic_texts),
            "cut": "none",
        }
    return {
        "counts": dict(counts),
        "embedder": {"name": embedder_name, "kind": embedder_kind, "dim": int(real.shape[1])},
        "seed": int(seed),
        "summary": {
            "diversity": syn_lexical["diversity"],
            "normalised_3grams": syn_lexical["normalised_3grams"],
            "coherency": coherence["mean_pairwise_cosine"],
            "centroid_cosine": coherence["centroid_cosine"],
            "authenticity_auc": auc,
            "mauve": mauve_value,
            "exact_copy_fraction": copies["exact_copy_fraction"],
            "vendi_score": syn_lexical["vendi_score"],
            "self_bleu": syn_lexical["self_bleu"],
            "compression_ratio": syn_lexical["compression_ratio"],
            "self_repetition": syn_lexical["self_repetition"],
        },
        "real": real_lexical,
        "synthetic": syn_lexical,
        "coherency": coherence,
        "authenticity": {"auc": auc, "classifier": AUTHENTICITY_CLASSIFIER, "folds": 5},
        "mauve": {"score": mauve_value, "note": note},
        "knn": knn_result,
        "memorisation": copies,
        "timings_s": timings,
    }


def summary_row(metrics: dict) -> dict:
    """The headline numbers of one :func:`evaluate` result, flat, for a sweep's table and plot
    (:func:`steer.data.report.tradeoff_table_markdown`, :func:`~steer.data.report.plot_tradeoff`):
    normalised_3grams, diversity, coherency (mean pairwise cosine), centroid_cosine,
    authenticity_auc, mauve (None when not computed), copies_of_real (the *fraction* of
    synthetic texts that are exact copies of a real text), vendi_score, self_bleu,
    compression_ratio and self_repetition (None in results of an older steer)."""
    summary = metrics["summary"]
    return {
        "normalised_3grams": summary["normalised_3grams"],
        "diversity": summary["diversity"],
        "coherency": summary["coherency"],
        "centroid_cosine": summary["centroid_cosine"],
        "authenticity_auc": summary["authenticity_auc"],
        "mauve": summary["mauve"],
        "copies_of_real": summary["exact_copy_fraction"],
        **{key: summary.get(key) for key in ("vendi_score", "self_bleu", "compression_ratio", "self_repetition")},
    }


def evaluate(real_texts, synthetic_texts, *, embedder="auto", seed: int = 0, knn: bool = True) -> dict:
    """All of the paper's metrics for a synthetic data set against the real one.

    Steps: check both sides (a ValueError names the side that is empty or has fewer than
    ``MIN_TEXTS`` = 10 texts), :func:`match_sizes` (seeded), embed both sets in **one**
    ``embedder.encode`` call (``embedder``: an object from :mod:`steer.data.embeddings` or a name
    for :func:`~steer.data.embeddings.make_embedder`), then :func:`evaluate_embeddings`.

    The result is JSON-serialisable:

    - ``counts``: input and compared sizes and which side was cut; ``embedder``: name, kind, dim;
    - ``summary``: the headline numbers of the synthetic set (diversity, normalised_3grams,
      coherency, centroid_cosine, authenticity_auc, mauve, exact_copy_fraction, vendi_score,
      self_bleu, compression_ratio, self_repetition), e.g. for a sweep;
    - ``real`` / ``synthetic``: distinct_1..4, normalised_3grams, diversity, ngrams (unique/total
      per n), duplicate_fraction, self_bleu, compression_ratio, self_repetition, mean_tokens,
      spread, vendi_score;
    - ``coherency``, ``authenticity``, ``mauve`` (score or None, and a note why), ``knn``
      (None when ``knn=False``), ``memorisation`` (exact copies checked against the whole real
      input, not only the sampled part), ``timings_s``.
    """
    from .embeddings import make_embedder

    real_texts = _check_side(real_texts, "real")
    synthetic_texts = _check_side(synthetic_texts, "synthetic")
    if isinstance(embedder, str):
        embedder = make_embedder(embedder, seed=seed)
    real_used, syn_used, counts = match_sizes(real_texts, synthetic_texts, seed)
    clock = time.perf_counter()
    emb = embedder.encode(real_used + syn_used)
    embed_seconds = time.perf_counter() - clock
    result = evaluate_embeddings(
        real_used,
        syn_used,
        emb[: len(real_used)],
        emb[len(real_used) :],
        embedder_name=embedder.name,
        embedder_kind=getattr(embedder, "kind", None),
        seed=seed,
        knn=knn,
        reference_texts=real_texts,
        counts=counts,
    )
    result["timings_s"]["embed"] = embed_seconds
    return result


VERDICT_METRICS = (
    # (summary key, name, which way is better: "higher", "lower", or "closer to 0.5")
    ("normalised_3grams", "normalised 3-grams", "higher"),
    ("diversity", "diversity", "higher"),
    ("coherency", "coherency", "higher"),
    ("authenticity_auc", "authenticity AUC", "closer to 0.5"),
    ("mauve", "MAUVE", "higher"),
    ("exact_copy_fraction", "copies of real texts", "lower"),
)
TIE = 0.005  # differences below this are reported as a tie: the metrics are noisier than that


def _goodness(value: float, better: str) -> float:
    return {"higher": value, "lower": -value, "closer to 0.5": -abs(value - 0.5)}[better]


def verdict(name: str, summary: dict, other_name: str, other: dict) -> str:
    """Which of two synthetic sets wins on which headline metric, in one sentence, e.g.
    "STEER is better on diversity (0.597 vs 0.573); plain expert is better on MAUVE (0.530 vs
    0.442); a tie on copies of real texts." Metrics missing on either side are left out."""
    wins: dict[str, list[str]] = {name: [], other_name: [], "tie": []}
    for key, label, better in VERDICT_METRICS:
        ours, theirs = summary.get(key), other.get(key)
        if ours is None or theirs is None:
            continue
        difference = _goodness(ours, better) - _goodness(theirs, better)
        if abs(difference) < TIE:
            wins["tie"].append(label)
        elif difference > 0:
            wins[name].append(f"{label} ({ours:.3f} vs {theirs:.3f})")
        else:
            wins[other_name].append(f"{label} ({theirs:.3f} vs {ours:.3f})")
    parts = [f"{who} is better on {', '.join(items)}" for who, items in wins.items() if who != "tie" and items]
    if wins["tie"]:
        parts.append(f"a tie on {', '.join(wins['tie'])}")
    return ("; ".join(parts) or "nothing to compare") + "."
