"""The paper's data metrics (steer.data.metrics): exact values on tiny inputs, statistical sanity
on seeded random embeddings, and evaluate()'s size matching, result shape and errors."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the metrics need scikit-learn (the data extra)")

from steer.data import metrics as M  # noqa: E402
from steer.data.embeddings import TfidfEmbedder  # noqa: E402


def _gauss(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# --- lexical -------------------------------------------------------------------------------------


def test_tokenize_words_and_punctuation():
    assert M.tokenize("Hello, World! Don't  stop...") == ["hello", ",", "world", "!", "don't", "stop", ".", ".", "."]


def test_ngram_stats_hand_computed_and_never_across_texts():
    texts = ["a b a b", "A B"]
    # unigrams a b a b a b: 6 in all, 2 different
    assert M.ngram_stats(texts, 1) == {"unique": 2, "total": 6, "distinct": 2 / 6}
    # bigrams (a b) (b a) (a b) | (a b): 4, not 5: "b" + "a" across the two texts is not one
    assert M.ngram_stats(texts, 2) == {"unique": 2, "total": 4, "distinct": 0.5}
    # no text has 5 tokens
    assert M.ngram_stats(texts, 5) == {"unique": 0, "total": 0, "distinct": 0.0}
    with pytest.raises(ValueError):
        M.ngram_stats(texts, 0)


def test_diversity_and_normalised_ngrams_hand_computed():
    texts = ["a b c d e", "a b c x y"]
    # 2-grams: ab bc cd de | ab bc cx xy -> 6/8; 3-grams: abc bcd cde | abc bcx cxy -> 5/6;
    # 4-grams: abcd bcde | abcx bcxy -> 4/4
    assert M.normalised_ngrams(texts) == pytest.approx(5 / 6)
    assert M.normalised_ngrams(texts, 2) == pytest.approx(6 / 8)
    assert M.diversity(texts) == pytest.approx(6 / 8 * 5 / 6 * 1.0)
    assert M.diversity(["same words here again"] * 3) == pytest.approx((3 / 9) * (2 / 6) * (1 / 3))


def test_memorisation_counts_copies_and_duplicates():
    real = ["The cat sat.", "A dog ran", "birds fly"]
    synthetic = ["the  CAT sat.", "a new text", "A dog ran", "a new text", "A NEW text", "other"]
    out = M.memorisation(real, synthetic)
    assert out["exact_copies"] == 2 and out["copy_indices"] == [0, 2]
    assert out["exact_copy_fraction"] == pytest.approx(2 / 6)
    assert out["synthetic_duplicates"] == 2
    assert out["synthetic_duplicate_fraction"] == pytest.approx(2 / 6)
    assert M.duplicate_fraction(["x", "X ", "y"]) == pytest.approx(1 / 3)


# --- embeddings ----------------------------------------------------------------------------------


def test_coherency_identical_sets_and_brute_force():
    real = _gauss(30)
    out = M.coherency(real, real)
    assert out["centroid_cosine"] == pytest.approx(1.0)
    unit = real / np.linalg.norm(real, axis=1, keepdims=True)
    assert out["mean_pairwise_cosine"] == pytest.approx((unit @ unit.T).mean())
    off_diagonal = (unit @ unit.T)[~np.eye(30, dtype=bool)].mean()
    assert out["real_mean_pairwise_cosine"] == pytest.approx(off_diagonal)

    syn = _gauss(20, seed=1) + 0.5
    unit_syn = syn / np.linalg.norm(syn, axis=1, keepdims=True)
    assert M.coherency(real, syn)["mean_pairwise_cosine"] == pytest.approx((unit_syn @ unit.T).mean())
    with pytest.raises(ValueError, match="width"):
        M.coherency(real, _gauss(5, d=8))


def test_authenticity_auc_chance_and_separable():
    same = M.authenticity_auc(_gauss(80, d=8, seed=1), _gauss(80, d=8, seed=2), seed=0)
    assert abs(same - 0.5) <= 0.15
    apart = M.authenticity_auc(_gauss(80, d=8, seed=1), _gauss(80, d=8, seed=2, shift=1.5), seed=0)
    assert apart > 0.9


def test_authenticity_auc_needs_five_per_class():
    with pytest.raises(ValueError, match="at least 5 synthetic"):
        M.authenticity_auc(_gauss(20), _gauss(4, seed=1))


def test_mauve_same_vs_different_distribution():
    if not M.mauve_available()[0]:
        pytest.skip("mauve-text not installed")
    same = M.mauve_score(_gauss(100, d=8, seed=1), _gauss(100, d=8, seed=2), seed=0)
    different = M.mauve_score(_gauss(100, d=8, seed=1), _gauss(100, d=8, seed=2, shift=1.0), seed=0)
    assert same > 0.8
    assert different < 0.3


def test_mauve_missing_gives_none_and_a_reason(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mauve", None)  # import mauve -> ImportError
    ok, reason = M.mauve_available()
    assert not ok and "mauve-text" in reason
    assert M.mauve_score(_gauss(20), _gauss(20, seed=1)) is None


def test_knn_precision_recall():
    real = _gauss(150, d=8, seed=1)
    same = M.knn_precision_recall(real, _gauss(150, d=8, seed=2), k=5)
    assert same["k"] == 5 and same["precision"] > 0.8 and same["recall"] > 0.8
    # Synthetic collapsed onto one real point: realistic (precision 1) but covers nothing (recall low).
    collapsed = real[:1] + 1e-3 * _gauss(50, d=8, seed=3)
    out = M.knn_precision_recall(real, collapsed, k=5)
    assert out["precision"] == 1.0 and out["recall"] < 0.1
    far = M.knn_precision_recall(real, _gauss(150, d=8, seed=2, shift=50.0), k=5)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    with pytest.raises(ValueError, match="more than 5 synthetic"):
        M.knn_precision_recall(real, _gauss(5, d=8), k=5)


def test_embedding_spread():
    assert M.embedding_spread(np.ones((10, 4))) == pytest.approx(0.0)
    points = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert M.embedding_spread(points) == pytest.approx(1.0)


# --- evaluate ------------------------------------------------------------------------------------


def _corpus(n, seed=0, prefix=""):
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river stone cloud paper light quick slow green".split()
    return [prefix + " ".join(rng.choice(words, size=rng.integers(5, 12))) for _ in range(n)]


class _RandomEmbedder:
    name = "random-test"
    kind = "test"

    def encode(self, texts):
        emb = np.random.default_rng(len(texts)).normal(size=(len(texts), 12)).astype(np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_match_sizes_cuts_the_larger_side():
    real, syn = _corpus(30), _corpus(12, seed=1)
    real_used, syn_used, counts = M.match_sizes(real, syn, seed=3)
    assert len(real_used) == 12 and sorted(syn_used) == sorted(syn) and set(real_used) <= set(real)
    assert counts == {"real_input": 30, "synthetic_input": 12, "real": 12, "synthetic": 12, "cut": "real"}
    assert M.match_sizes(real, syn, seed=3)[0] == real_used  # seeded
    real_used, syn_used, counts = M.match_sizes(syn, real, seed=3)
    assert len(syn_used) == 12 and counts["cut"] == "synthetic" and counts["synthetic_input"] == 30


def test_the_metrics_do_not_depend_on_the_order_of_the_texts():
    """MAUVE's clustering and the classifier's folds follow their input order: the sets are put
    in an order of their own first, so a resumed or re-batched run scores the same."""
    real, syn = _corpus(40), _corpus(25, seed=1)
    shuffled_real, shuffled_syn = real[::-1], syn[7:] + syn[:7]
    assert M.match_sizes(real, syn, seed=2) == M.match_sizes(shuffled_real, shuffled_syn, seed=2)
    first = M.evaluate(real, syn, embedder="tfidf", seed=0, knn=False)
    second = M.evaluate(shuffled_real, shuffled_syn, embedder="tfidf", seed=0, knn=False)
    assert first["summary"] == second["summary"]


def test_evaluate_result_is_complete_and_json_serialisable():
    real = _corpus(40)
    syn = _corpus(25, seed=1) + real[:3]  # 3 exact copies
    out = M.evaluate(real, syn, embedder=_RandomEmbedder(), seed=0)
    json.dumps(out, allow_nan=False)
    assert out["counts"]["real"] == out["counts"]["synthetic"] == 28
    assert out["embedder"] == {"name": "random-test", "kind": "test", "dim": 12}
    for side in ("real", "synthetic"):
        assert set(out[side]["ngrams"]) == {"1", "2", "3", "4"}
        for n in (1, 2, 3, 4):
            assert out[side][f"distinct_{n}"] == out[side]["ngrams"][str(n)]["distinct"]
    assert out["synthetic"]["diversity"] == pytest.approx(M.diversity(syn))
    assert out["memorisation"]["exact_copies"] == 3  # against the whole real input
    assert 0 <= out["authenticity"]["auc"] <= 1
    assert out["knn"]["k"] == 5
    assert set(out["summary"]) >= {"diversity", "coherency", "authenticity_auc", "mauve", "normalised_3grams"}
    assert {"embed", "authenticity", "mauve"} <= set(out["timings_s"])
    assert M.evaluate(real, syn, embedder=_RandomEmbedder(), seed=0, knn=False)["knn"] is None


def test_evaluate_with_the_tfidf_embedder_by_name():
    out = M.evaluate(_corpus(40), _corpus(30, seed=1), embedder="tfidf", seed=0)
    assert out["embedder"]["kind"] == "tfidf"
    assert out["coherency"]["centroid_cosine"] > 0.5  # same vocabulary, same topic


@pytest.mark.parametrize(
    "real, syn, message",
    [
        ([], _corpus(20), "real set is empty"),
        (_corpus(20), [], "synthetic set is empty"),
        (_corpus(9), _corpus(20), "real set has 9 texts"),
        (_corpus(20), _corpus(3), "synthetic set has 3 texts"),
    ],
)
def test_evaluate_rejects_small_or_empty_sides(real, syn, message):
    with pytest.raises(ValueError, match=message):
        M.evaluate(real, syn, embedder=TfidfEmbedder())


def test_evaluate_rejects_non_strings():
    with pytest.raises(TypeError, match="synthetic text 2"):
        M.evaluate(_corpus(20), _corpus(2) + [None] + _corpus(10), embedder=TfidfEmbedder())


# -- Self-BLEU, compression ratio, self-repetition, Vendi ------------------------------------------


def test_self_bleu_by_hand():
    from steer.data.metrics import self_bleu

    # "a b c d" against "a b c e": precisions 3/4, 2/3, 1/2 and 0/1 (smoothed to 0.1/1), same
    # length: BLEU = (0.75 * 2/3 * 0.5 * 0.1) ** 0.25, both ways.
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx((0.75 * 2 / 3 * 0.5 * 0.1) ** 0.25)
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "w x y z"]) == 0.0  # no unigram in common
    assert self_bleu(["a b c d"]) == 0.0
    # the brevity penalty: "a b" against "a b c d" is exp(1 - 4/2) times its precisions
    # (2/2, 1/1, 0.1/1, 0.1/1); the other way, "a b c d" against "a b" has no penalty (longer)
    # and precisions 2/4, 1/3, 0.1/2, 0.1/1
    short = math.exp(1 - 4 / 2) * (1 * 1 * 0.1 * 0.1) ** 0.25
    long = (0.5 * (1 / 3) * (0.1 / 2) * (0.1 / 1)) ** 0.25
    assert self_bleu(["a b", "a b c d"]) == pytest.approx((short + long) / 2)
    # NLTK's sentence_bleu (smoothing method1) over these, each against the other three: 0.65040...
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran in the park today", "the cat sat on the mat"]
    assert self_bleu(texts) == pytest.approx(0.6504056975701, abs=1e-12)


def test_compression_ratio_and_self_repetition_by_hand():
    import gzip

    from steer.data.metrics import compression_ratio, self_repetition

    texts = ["a b c d e", "a b c d x", "q r s t u"]
    joined = b"a b c d e a b c d x q r s t u"
    assert compression_ratio(texts) == pytest.approx(len(joined) / len(gzip.compress(joined)))
    assert compression_ratio(["the same joke"] * 50) > 5 * compression_ratio(["x"])
    assert compression_ratio([]) == 0.0
    # 4-grams: text 0 {abcd, bcde}, text 1 {abcd, bcdx}, text 2 {qrst, rstu}: "a b c d" is in one
    # other text for texts 0 and 1, nothing is shared by text 2: (log 2 + log 2 + log 1) / 3
    assert self_repetition(texts) == pytest.approx(2 * math.log(2) / 3)
    assert self_repetition(["A b c d", "a b c d"]) == 0.0  # case kept, as the diversity package does


def test_vendi_score_by_hand():
    from steer.data.metrics import vendi_score

    assert vendi_score(np.eye(6)) == pytest.approx(6.0)  # all orthogonal: 6 distinct texts
    assert vendi_score(np.ones((5, 3))) == pytest.approx(1.0)  # all alike: one
    two_kinds = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # rows are re-normalised
    assert vendi_score(two_kinds) == pytest.approx(2.0)


def test_evaluate_reports_the_new_diversity_metrics():
    from steer.data.metrics import evaluate, summary_row

    real = [f"real text number {i} about {w}" for i, w in enumerate("cats dogs birds fish mice cows pigs owls bats ants".split())]
    same = ["the same sentence again"] * 12
    varied = [f"{a} {b} went {c}" for a, b, c in zip("one two three four five six seven eight nine ten eleven twelve".split(),
                                                     "cat dog bird fish mouse cow pig owl bat ant bee elk".split(),
                                                     "home out up down left right far near in off on away".split())]  # fmt: skip
    rows = {name: summary_row(evaluate(real, texts, embedder="tfidf", knn=False)) for name, texts in (("same", same), ("varied", varied))}
    assert rows["same"]["self_bleu"] > 0.99 > rows["varied"]["self_bleu"]
    assert rows["same"]["compression_ratio"] > rows["varied"]["compression_ratio"]
    assert rows["same"]["self_repetition"] > rows["varied"]["self_repetition"]
    assert rows["same"]["vendi_score"] < 1.5 < rows["varied"]["vendi_score"]
