"""What organisations have done: project counts, recency and who they worked with.

Read from each profile's ``past_projects`` (and ``n_past_projects`` when the list is partial), keyed by the
store's ``num`` and kept in sync like the other indexes. ``partner_ids`` may name organisations that are
not stored; they count for the partner total and join the graph once (if ever) they are stored.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from matcher.arrays_file import from_strings, ragged, strings, unragged

TRACK_FEATURES = ("projects", "coordinated", "partners", "years_since")  # ``TrackRecords.features``, in order


@dataclass(frozen=True)
class Record:
    projects: int  # how many projects in all
    coordinated: int
    last_year: int | None
    partners: tuple[str, ...]  # distinct partner ids, most frequent first
    partner_counts: tuple[int, ...]  # how many shared projects with each

    @property
    def known(self) -> bool:
        return self.projects > 0


def record_of(doc: dict) -> Record:
    projects = doc.get("past_projects") or []
    counts: dict[str, int] = {}
    for project in projects:
        for pid in dict.fromkeys(project.get("partner_ids") or []):
            if pid != doc.get("id"):
                counts[pid] = counts.get(pid, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    years = [p["year"] for p in projects if p.get("year")]
    return Record(
        projects=max(len(projects), doc.get("n_past_projects") or 0),
        coordinated=sum(1 for p in projects if (p.get("role") or "").lower() == "coordinator"),
        last_year=max(years) if years else None,
        partners=tuple(pid for pid, _ in ranked),
        partner_counts=tuple(c for _, c in ranked),
    )


class TrackRecords:
    """Per-row track records and the co-partnership graph between stored organisations.

    Each row's partners are resolved to row numbers when it is stored; a row naming an organisation that is
    stored later is resolved again then. The graph is assembled lazily from those arrays (vectorised, so a
    change costs milliseconds, not a pass over every partner list in Python)."""

    def __init__(self):
        self._records: dict[int, Record] = {}
        self._num_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._resolved: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # num -> (partner nums, shared projects)
        self._referenced_by: dict[str, set[int]] = {}  # partner id -> rows that name it
        self._lock = threading.Lock()
        self._graph: sp.csr_matrix | None = None  # rows and columns: _nums
        self._linked: sp.csr_matrix | None = None  # 1 where two organisations share a project
        self._nums = np.zeros(0, np.int64)
        self._features = np.zeros((0, len(TRACK_FEATURES)))  # one row per num of _nums (``features``)
        self.newest_year: int | None = None
        self._any_known = False
        self._snapshot: dict[str, np.ndarray] | None = None  # loaded, and the dicts above not made from it yet

    def __len__(self) -> int:
        return len(self._nums) if self._snapshot is not None else len(self._records)

    def _row(self, nums: np.ndarray) -> np.ndarray:
        """The graph row of each num (-1: none)."""
        nums = np.asarray(nums, np.int64)
        if not len(self._nums):
            return np.full(len(nums), -1)
        position = np.minimum(np.searchsorted(self._nums, nums), len(self._nums) - 1)
        return np.where(self._nums[position] == nums, position, -1)

    def _resolve(self, num: int) -> None:
        record = self._records[num]
        pairs = [(self._num_of[p], c) for p, c in zip(record.partners, record.partner_counts) if p in self._num_of]
        self._resolved[num] = (np.array([p for p, _ in pairs], np.int64), np.array([c for _, c in pairs], np.float32))

    def upsert(self, nums: list[int], docs: list[dict]) -> None:
        with self._lock:
            self._materialise()
            again: set[int] = set()
            for num, doc in zip(nums, docs):
                num = int(num)
                old = self._records.get(num)
                if old is not None:
                    for pid in old.partners:
                        self._referenced_by.get(pid, set()).discard(num)
                record = record_of(doc)
                self._records[num] = record
                self._num_of[doc["id"]] = num
                self._id_of[num] = doc["id"]
                for pid in record.partners:
                    self._referenced_by.setdefault(pid, set()).add(num)
                again.add(num)
                again.update(self._referenced_by.get(doc["id"], ()))  # rows that named it before it was stored
            for num in again:
                if num in self._records:
                    self._resolve(num)
            self._graph = None

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            self._materialise()
            for num in nums:
                num = int(num)
                record = self._records.pop(num, None)
                self._resolved.pop(num, None)
                if record is not None:
                    for pid in record.partners:
                        self._referenced_by.get(pid, set()).discard(num)
                entity_id = self._id_of.pop(num, None)
                if entity_id is not None and self._num_of.get(entity_id) == num:
                    del self._num_of[entity_id]
            self._graph = None

    def any_known(self) -> bool:
        """Whether any stored organisation has a track record (else ranking uses text signals only)."""
        self._build()
        return self._any_known

    def _build(self) -> sp.csr_matrix:
        """Symmetric counts of shared projects between stored organisations (either side may list them)."""
        with self._lock:
            if self._graph is not None:
                return self._graph
            nums = np.array(sorted(self._records), np.int64)
            n = len(nums)
            parts = [self._resolved[int(num)] for num in nums]
            lengths = np.fromiter((len(p) for p, _ in parts), np.int64, n)
            rows = np.repeat(np.arange(n), lengths)
            cols = np.concatenate([p for p, _ in parts]) if n else np.zeros(0, np.int64)
            vals = np.concatenate([c for _, c in parts]) if n else np.zeros(0, np.float32)
            position = np.searchsorted(nums, cols)
            alive = (position < n) & (nums[np.minimum(position, max(n - 1, 0))] == cols) if n else np.zeros(0, bool)
            keep = alive & (position != rows)
            graph = sp.csr_matrix((vals[keep], (rows[keep], position[keep])), shape=(n, n))
            graph = graph.maximum(graph.T).tocsr()  # a project listed by one side only still links both
            self._any_known = any(r.known for r in self._records.values())
            years = [r.last_year for r in self._records.values() if r.last_year]
            self.newest_year = max(years) if years else None
            self._linked = (graph > 0).astype(np.float32).tocsr()
            self._graph, self._nums = graph, nums
            self._features = np.array([list(self._features_of(self._records[int(num)]).values()) for num in nums]
                                      ).reshape(n, len(TRACK_FEATURES))
            return graph

    def linked_to(self, seeds: list[int], weights: np.ndarray | None = None) -> dict[int, float]:
        """For every organisation that worked with any seed: how many seeds it worked with (weighted)."""
        nums, linked = self.linked_arrays(seeds, weights)
        return dict(zip(nums.tolist(), linked.tolist()))

    def linked_arrays(self, seeds: list[int], weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``linked_to`` as arrays: (nums, how many seeds each worked with), nums ascending."""
        graph = self._build()
        index = [int(r) for r in self._row(np.asarray(seeds, np.int64)) if r >= 0]
        if not index:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        w = np.ones(len(index), np.float32) if weights is None else np.asarray(weights, np.float32)[: len(index)]
        vector = np.zeros(graph.shape[0], np.float32)
        vector[index] = w
        linked = self._linked @ vector  # symmetric
        hit = np.nonzero(linked)[0]
        return self._nums[hit], linked[hit]

    def feature_rows(self, nums: np.ndarray) -> np.ndarray:
        """``features`` of many rows as one matrix (columns in ``TRACK_FEATURES`` order; zeros for unknown rows)."""
        self._build()
        row = self._row(nums)
        out = np.zeros((len(row), len(TRACK_FEATURES)))
        out[row >= 0] = self._features[row[row >= 0]]
        return out

    def neighbours(self, num: int) -> set[int]:
        """The stored organisations this one has shared a project with."""
        graph = self._build()
        row = int(self._row(np.array([num]))[0])
        if row < 0:
            return set()
        return {int(self._nums[j]) for j in graph.indices[graph.indptr[row] : graph.indptr[row + 1]]}

    def shared_with(self, num: int, seeds: list[int]) -> list[int]:
        """Those of ``seeds`` this organisation has shared a project with, in their order (``neighbours`` without
        making a set of a large organisation's thousands of partners)."""
        graph = self._build()
        row = int(self._row(np.array([num]))[0])
        if row < 0 or not seeds:
            return []
        partners = graph.indices[graph.indptr[row] : graph.indptr[row + 1]]  # rows, as the seeds' below
        return [seed for seed, at in zip(seeds, self._row(np.asarray(seeds, np.int64)).tolist())
                if at >= 0 and bool((partners == at).any())]

    def features(self, num: int) -> dict[str, float]:
        """The row's track-record signals by name (``matcher.features``): log(1 + projects), log(1 + coordinated),
        log(1 + partners), and years since its last project (to the newest in the store, capped at 5)."""
        self._build()
        return self._features_of(self._records.get(int(num)))

    def _features_of(self, record: Record | None) -> dict[str, float]:
        if record is None or not record.known:
            return dict.fromkeys(TRACK_FEATURES, 0.0)
        gap = 0.0
        if record.last_year and self.newest_year:
            gap = float(min(self.newest_year - record.last_year, 5))
        return {"projects": math.log1p(record.projects), "coordinated": math.log1p(record.coordinated),
                "partners": math.log1p(len(record.partners)), "years_since": gap}

    # --- snapshots ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``from_arrays`` needs: each row's record, and the graph and signals as built."""
        graph = self._build()
        with self._lock:
            if self._snapshot is not None:  # nothing changed since it was loaded
                return dict(self._snapshot)
            records = [self._records[int(n)] for n in self._nums]
            partner_ids = list(dict.fromkeys(p for r in records for p in r.partners))
            code = {p: i for i, p in enumerate(partner_ids)}
            lengths, codes = ragged([np.array([code[p] for p in r.partners], np.int64) for r in records], np.int64)
            return {
                "nums": self._nums, "ids": strings([self._id_of[int(n)] for n in self._nums]),
                "projects": np.array([r.projects for r in records], np.int64),
                "coordinated": np.array([r.coordinated for r in records], np.int64),
                "last_year": np.array([r.last_year or 0 for r in records], np.int64),
                "partner_lengths": lengths, "partner_codes": codes, "partner_ids": strings(partner_ids),
                "partner_counts": np.concatenate([np.array(r.partner_counts, np.int64) for r in records] or [np.zeros(0, np.int64)]),
                "graph_indptr": graph.indptr, "graph_indices": graph.indices, "graph_data": graph.data,
                "features": self._features, "newest_year": np.array([self.newest_year or 0]),
                "any_known": np.array([self._any_known]),
            }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TrackRecords:
        """Track records as ``to_arrays`` gave them: ready to rank at once; the per-row records that writes change
        are made from the arrays on the first write (``_materialise``)."""
        self = cls()
        self._nums = np.asarray(arrays["nums"], np.int64)
        n = len(self._nums)
        self._graph = sp.csr_matrix((arrays["graph_data"], arrays["graph_indices"], arrays["graph_indptr"]), shape=(n, n))
        self._linked = (self._graph > 0).astype(np.float32).tocsr()
        self._features = np.asarray(arrays["features"]).reshape(n, len(TRACK_FEATURES))
        self.newest_year = int(arrays["newest_year"][0]) or None
        self._any_known = bool(arrays["any_known"][0])
        self._snapshot = arrays
        return self

    def _materialise(self) -> None:
        """Make the per-row records from the snapshot's arrays (with the lock held), before a write changes them."""
        arrays, self._snapshot = self._snapshot, None
        if arrays is None:
            return
        ids, partner_ids = from_strings(arrays["ids"]), from_strings(arrays["partner_ids"])
        lengths = arrays["partner_lengths"]
        codes, counts = unragged(lengths, arrays["partner_codes"]), unragged(lengths, arrays["partner_counts"])
        for i, num in enumerate(self._nums.tolist()):
            partners = tuple(partner_ids[c] for c in codes[i].tolist())
            self._records[num] = Record(int(arrays["projects"][i]), int(arrays["coordinated"][i]),
                                        int(arrays["last_year"][i]) or None, partners, tuple(counts[i].tolist()))
            self._num_of[ids[i]], self._id_of[num] = num, ids[i]
            for pid in partners:
                self._referenced_by.setdefault(pid, set()).add(num)
        for num in self._records:
            self._resolve(num)
