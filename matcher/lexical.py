"""BM25 over profile texts: the lexical scorer beside the dense one.

Rows are keyed by the store's ``num``, like the vector index, and kept in sync the same way (upsert and
remove per row). Term counts are kept per row; the weighted matrix is rebuilt lazily, on the first search
after a change (about 50 ms at 15k profiles), so a burst of writes costs one rebuild.
"""
from __future__ import annotations

import re
import threading
from collections import Counter

import numpy as np
import scipy.sparse as sp

from matcher.arrays_file import from_strings, ragged, strings, unragged
from matcher.stop_words import ENGLISH_STOP_WORDS

_TOKEN = re.compile(r"[a-z][a-z0-9\-]+")
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS)


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of two or more characters, English stop words removed."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOP_WORDS]


class LexicalIndex:
    """Okapi BM25 (k1, b) with a saturated query term frequency, log(1 + count)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # num -> (term ids, counts)
        self._lock = threading.Lock()
        self._matrix: sp.csc_matrix | None = None  # rows in the order of self.nums
        self.nums = np.zeros(0, np.int64)
        self._removed = False  # rows were removed since the last build: their terms may be nobody's now
        self._loaded: dict[str, np.ndarray] | None = None  # a snapshot's rows, not yet made into _rows

    def __len__(self) -> int:
        return len(self.nums) if self._loaded is not None else len(self._rows)

    def __contains__(self, num: int) -> bool:
        self._materialise()
        return num in self._rows

    def upsert(self, nums: list[int], texts: list[str]) -> None:
        with self._lock:
            self._materialise()
            for num, text in zip(nums, texts):
                counts = Counter(tokens(text))
                ids = np.fromiter((self.vocab.setdefault(t, len(self.vocab)) for t in counts), np.int32, len(counts))
                self._rows[int(num)] = (ids, np.fromiter(counts.values(), np.float32, len(counts)))
            self._matrix = None

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            self._materialise()
            for num in nums:
                self._removed |= self._rows.pop(int(num), None) is not None
            self._matrix = None

    def _compact(self) -> None:
        """Forget the terms no stored row uses any more (a deleted profile's words leave the vocabulary)."""
        used = (np.unique(np.concatenate([ids for ids, _ in self._rows.values()])) if self._rows
                else np.zeros(0, np.int64))
        terms = list(self.vocab)  # in id order: ids are given in insertion order
        remap = np.full(len(terms), -1, np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        self.vocab = {terms[i]: j for j, i in enumerate(used.tolist())}
        self._rows = {num: (remap[ids], counts) for num, (ids, counts) in self._rows.items()}
        self._removed = False

    def _build(self) -> sp.csc_matrix:
        with self._lock:
            if self._matrix is not None:
                return self._matrix
            if self._removed:
                self._compact()
            nums = np.fromiter(self._rows, np.int64, len(self._rows))
            n, width = len(nums), max(len(self.vocab), 1)
            if n == 0:
                self.nums = nums
                self._matrix = sp.csc_matrix((0, width), dtype=np.float32)
                return self._matrix
            parts = [self._rows[int(num)] for num in nums]
            lengths = np.fromiter((len(ids) for ids, _ in parts), np.int64, n)
            cols = np.concatenate([ids for ids, _ in parts])
            tf = np.concatenate([c for _, c in parts])
            rows = np.repeat(np.arange(n), lengths)
            doc_len = np.bincount(rows, weights=tf, minlength=n)
            avg = doc_len.mean() or 1.0
            df = np.bincount(cols, minlength=width)
            idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
            weight = idf[cols] * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * doc_len[rows] / avg))
            self._matrix = sp.csr_matrix((weight.astype(np.float32), (rows, cols)), shape=(n, width)).tocsc()
            self.nums = nums
            return self._matrix

    def scores(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of every row for a query: (nums, scores), aligned."""
        matrix = self._build()
        counts = Counter(t for t in tokens(text) if t in self.vocab)
        if not counts or matrix.shape[0] == 0:
            return self.nums, np.zeros(len(self.nums), np.float32)
        ids = np.fromiter((self.vocab[t] for t in counts), np.int64, len(counts))
        weights = np.log1p(np.fromiter(counts.values(), np.float32, len(counts)))
        return self.nums, np.asarray(matrix[:, ids] @ weights).ravel()

    # --- snapshots ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``from_arrays`` needs: the vocabulary, each row's term ids and counts, and the weighted matrix."""
        matrix = self._build()
        with self._lock:
            if self._loaded is not None:
                rows = self._loaded
            else:
                parts = [self._rows[int(n)] for n in self.nums]
                lengths, ids = ragged([p[0] for p in parts], np.int32)
                rows = {"lengths": lengths, "ids": ids, "counts": ragged([p[1] for p in parts], np.float32)[1]}
            return {**rows, "nums": self.nums, "vocab": strings(list(self.vocab)), "params": np.array([self.k1, self.b]),
                    "data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr,
                    "shape": np.array(matrix.shape, np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LexicalIndex:
        """The index as ``to_arrays`` gave it, ready to score; the rows are made from the arrays on the first write."""
        self = cls(*arrays["params"].tolist())
        self.vocab = {term: i for i, term in enumerate(from_strings(arrays["vocab"]))}
        self.nums = np.asarray(arrays["nums"], np.int64)
        self._matrix = sp.csc_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"].tolist()))
        self._loaded = {name: arrays[name] for name in ("lengths", "ids", "counts")}
        return self

    def _materialise(self) -> None:
        """Make the per-row term counts from the loaded arrays, before a write changes them."""
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            ids, counts = unragged(loaded["lengths"], loaded["ids"]), unragged(loaded["lengths"], loaded["counts"])
            self._rows = dict(zip(self.nums.tolist(), zip(ids, counts)))
