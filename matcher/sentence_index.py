"""Each profile's sentence vectors, held in memory for ranking (``matcher.hybrid`` reads the candidates').

The vectors are the ones stored with each profile (``EmbeddingRecord.sentence_vectors``, float16), kept as
float32 (numpy converts float16 at about 2 ns a value: 3 ms for a query's candidates) in one matrix with each
row's span (the base), plus the rows written since the base was built (the overlay): ranking
reads a candidate's sentences with a few array operations instead of a query to the store. The overlay is
folded into the base once it holds a tenth of it, and whenever a snapshot is written; a snapshot's base is
memory-mapped, so the workers of one machine share its pages.
"""
from __future__ import annotations

import threading

import faiss
import numpy as np

_FOLD_MIN = 2000  # the overlay is folded into the base past this many rows (or a tenth of the base)


class SentenceIndex:
    def __init__(self, dim: int):
        self.dim = dim
        self._nums = np.zeros(0, np.int64)  # base rows, sorted
        self._start = np.zeros(0, np.int64)  # ... where each one's sentences start in _data
        self._count = np.zeros(0, np.int64)  # ... and how many it has
        self._data = np.zeros((0, dim), np.float32)
        self._overlay: dict[int, np.ndarray | None] = {}  # num -> its vectors now (None: none, or removed)
        self._overlay_nums = np.zeros(0, np.int64)
        self._lock = threading.Lock()

    def upsert(self, nums: list[int], matrices: list[np.ndarray | None]) -> None:
        """Set rows' sentence vectors (one row per sentence; None or empty: the row has none)."""
        with self._lock:
            for num, matrix in zip(nums, matrices):
                self._overlay[int(num)] = None if matrix is None or not len(matrix) else matrix
            self._changed()

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            for num in nums:
                self._overlay[int(num)] = None
            self._changed()

    def _changed(self) -> None:
        if len(self._overlay) > max(_FOLD_MIN, len(self._nums) // 10):
            self._fold()
        self._overlay_nums = np.fromiter(self._overlay, np.int64, len(self._overlay))

    def _fold(self) -> None:
        """Rebuild the base with the overlay applied (rows in num order)."""
        keep = ~np.isin(self._nums, self._overlay_nums) if self._overlay else np.ones(len(self._nums), bool)
        added = {n: m for n, m in self._overlay.items() if m is not None}
        nums = np.concatenate([self._nums[keep], np.fromiter(added, np.int64, len(added))])
        counts = np.concatenate([self._count[keep], np.fromiter((len(m) for m in added.values()), np.int64, len(added))])
        parts = [self._data[self._rows(self._start[keep], self._count[keep])]]
        parts += [np.asarray(m, np.float32) for m in added.values()]
        data = np.concatenate(parts)
        order = np.argsort(nums, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._nums, self._count = nums[order], counts[order]
        self._data = data[self._rows(starts[order], self._count)]
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]]).astype(np.int64) if len(nums) else np.zeros(0, np.int64)
        self._overlay = {}

    @staticmethod
    def _rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The row numbers of the spans (start, count), one after another."""
        total = int(counts.sum())
        if not total:
            return np.zeros(0, np.int64)
        return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)

    def similarities(self, nums: np.ndarray, queries: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """The inner product of each query with each sentence vector of these rows, and for each sentence the
        position in ``nums`` of its row (each row's sentences together, in the order of ``nums``): ``gather``'s
        order, without copying the vectors out. The base's are read in place by FAISS (a candidate set's 10,000
        sentences: 0.6 ms a query, against 1.9 ms to gather them and multiply)."""
        nums = np.asarray(nums, np.int64)
        with self._lock:
            rows, owner, extra = self._locate(nums)
            data = self._data
        out = []
        for query in queries:
            query = np.ascontiguousarray(query, np.float32)
            sims = np.empty(len(rows), np.float32)
            if len(rows):
                faiss.fvec_inner_products_by_idx(faiss.swig_ptr(sims), faiss.swig_ptr(query), faiss.swig_ptr(data),
                                                 faiss.swig_ptr(rows), self.dim, 1, len(rows))
            out.append(sims)
        if extra:
            owner, order = self._merge(owner, extra)
            out = [np.concatenate([sims] + [np.asarray(m, np.float32) @ q for _, m in extra])[order]
                   for sims, q in zip(out, queries)]
        return out, owner

    def _locate(self, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
        """(rows of ``_data`` of the base's sentences of ``nums``, their owners, the overlay's (position, vectors));
        callers hold the lock."""
        base_nums, overlay = self._nums, self._overlay
        if not len(base_nums):
            rows, owner = np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            position = np.searchsorted(base_nums, nums)
            clipped = np.minimum(position, len(base_nums) - 1)
            in_base = (position < len(base_nums)) & (base_nums[clipped] == nums)
            if overlay:
                in_base &= ~np.isin(nums, self._overlay_nums)
            counts = np.where(in_base, self._count[clipped], 0)
            rows = self._rows(self._start[clipped], counts)
            owner = np.repeat(np.arange(len(nums)), counts)
        extra = [(i, overlay[n]) for i, n in enumerate(nums.tolist()) if overlay.get(n) is not None] if overlay else []
        return rows, owner, extra

    @staticmethod
    def _merge(owner: np.ndarray, extra: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The owners with the overlay's rows appended, in row order, and the order that sorts them so."""
        owner = np.concatenate([owner] + [np.full(len(m), i) for i, m in extra])
        order = np.argsort(owner, kind="stable")
        return owner[order], order

    def gather(self, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sentence vectors of these rows as float32, one per sentence, and for each the position in ``nums``
        of the row it belongs to (in the order of ``nums``: each row's sentences together)."""
        nums = np.asarray(nums, np.int64)
        with self._lock:
            rows, owner, extra = self._locate(nums)
            vectors = self._data[rows]
        if extra:
            owner, order = self._merge(owner, extra)
            vectors = np.concatenate([vectors] + [np.asarray(m, np.float32) for _, m in extra])[order]
        return vectors, owner

    # --- snapshots ------------------------------------------------------------------------------

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nums, counts, vectors) of every row, overlay folded in: what a snapshot holds."""
        with self._lock:
            if self._overlay:
                self._fold()
                self._overlay_nums = np.zeros(0, np.int64)
            return self._nums, self._count, self._data

    @classmethod
    def from_arrays(cls, dim: int, nums: np.ndarray, counts: np.ndarray, vectors: np.ndarray) -> SentenceIndex:
        """An index over a snapshot's arrays (``vectors`` may be memory-mapped: it is only read)."""
        self = cls(dim)
        # (FAISS reads ``vectors`` in place: one C-ordered float32 block, which a mapped snapshot's already is)
        self._nums, self._count = np.asarray(nums, np.int64), np.asarray(counts, np.int64)
        self._data = np.ascontiguousarray(vectors, np.float32).reshape(-1, dim)
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]]).astype(np.int64) if len(nums) else np.zeros(0, np.int64)
        return self
