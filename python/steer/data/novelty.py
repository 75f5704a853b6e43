"""The novelty gate of ``steer generate --novelty-threshold T``: a finished sample joins the output
and the negative pool only if it is not too close to anything already there.

Two measures, one interface (``prepare`` a batch of texts, ``admits`` one, ``add`` an accepted one):

- ``EmbeddingGate`` ("minilm"): the largest cosine between the sample's all-MiniLM-L6-v2
  embedding and the pool's (the real examples and every accepted sample) must be below T.
  ``prepare`` embeds the texts that finished together in one batch; the pool is one matrix.
- ``MinHashGate`` ("minhash"): a near-duplicate filter without embeddings: datasketch's MinHash
  LSH over word 3-gram shingles; a sample is rejected when the LSH finds a pool text whose
  estimated Jaccard similarity is T or more.

The gate is consulted in attempt order (steer.data.rounds accepts in that order), against the
pool as it stands at that point, so its decisions are a function of the run's settings like
everything else, and a resumed run rebuilds the same pool from the real examples and the records.
"""

from __future__ import annotations

import numpy as np

from steer.data.io import DataError

NOVELTY_METHODS = ("auto", "minilm", "minhash")
MINHASH_PERMUTATIONS = 128
MINHASH_SEED = 1  # fixed: the same run always hashes alike


def check_threshold(threshold) -> None:
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise DataError(f"--novelty-threshold must be a number in (0, 1] (the largest similarity to the pool a sample may have), got {threshold!r}")


def resolve_method(method: str) -> str:
    """"minilm" or "minhash" for a --novelty-method (auto: MiniLM when its package is installed)."""
    from steer.data.embeddings import minilm_model_dir

    if method not in NOVELTY_METHODS:
        raise DataError(f"--novelty-method must be one of {', '.join(NOVELTY_METHODS)}, got {method!r}")
    if method == "auto":
        return "minilm" if minilm_model_dir() is not None else "minhash"
    return method


def make_gate(method: str, threshold: float, pool_texts: list[str]):
    """The gate of a resolved method, its pool holding ``pool_texts``."""
    gate = EmbeddingGate(threshold) if method == "minilm" else MinHashGate(threshold)
    gate.prepare(pool_texts)
    for text in pool_texts:
        gate.add(text)
    return gate


class EmbeddingGate:
    """Largest cosine to the pool below ``threshold`` (MiniLM sentence embeddings, unit rows)."""

    def __init__(self, threshold: float) -> None:
        from steer.data.embeddings import make_embedder

        try:
            self.embedder = make_embedder("minilm")
        except ImportError as error:
            raise DataError(f"--novelty-method minilm: {error} (or use --novelty-method minhash)") from None
        self.threshold = float(threshold)
        self._matrix = np.zeros((1024, 384), dtype=np.float32)  # grown by doubling; the first _size rows are the pool
        self._size = 0

    def prepare(self, texts: list[str]) -> None:
        """Embed ``texts`` in one batch (the embedder keeps the vectors for ``admits``)."""
        if texts:
            self.embedder.encode(list(texts))

    def similarity(self, text: str) -> float:
        """The largest cosine between ``text`` and a pool text (0 for an empty pool)."""
        if self._size == 0:
            return 0.0
        vector = self.embedder.encode([text])[0]
        return float(np.max(self._matrix[: self._size] @ vector))

    def admits(self, text: str) -> bool:
        return self.similarity(text) < self.threshold

    def add(self, text: str) -> None:
        if self._size == self._matrix.shape[0]:
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[self._size] = self.embedder.encode([text])[0]
        self._size += 1


class MinHashGate:
    """No pool text with an (LSH-estimated) Jaccard similarity of ``threshold`` or more, on word
    3-gram shingles (texts of fewer than 3 words: their words)."""

    def __init__(self, threshold: float) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise DataError("--novelty-method minhash needs datasketch: pip install datasketch (or pip install -e \".[data]\")") from None
        self._minhash = MinHash
        self.threshold = float(threshold)
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=MINHASH_PERMUTATIONS)
        self._signatures: list = []  # pool text i's MinHash, its LSH key being i

    def prepare(self, texts: list[str]) -> None:  # hashing is cheap: nothing to batch
        return None

    def _signature(self, text: str):
        words = text.lower().split()
        shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))} if words else {""}
        signature = self._minhash(num_perm=MINHASH_PERMUTATIONS, seed=MINHASH_SEED)
        signature.update_batch([s.encode("utf-8") for s in shingles])
        return signature

    def admits(self, text: str) -> bool:
        """LSH candidates are confirmed by their estimated Jaccard similarity."""
        signature = self._signature(text)
        return not any(self._signatures[key].jaccard(signature) >= self.threshold for key in self._lsh.query(signature))

    def add(self, text: str) -> None:
        signature = self._signature(text)
        self._lsh.insert(len(self._signatures), signature)
        self._signatures.append(signature)
