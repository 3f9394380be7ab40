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
    """Per-row track records and the co-partnership graph between stored organisations."""

    def __init__(self):
        self._records: dict[int, Record] = {}
        self._num_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self._graph: sp.csr_matrix | None = None
        self._linked: sp.csr_matrix | None = None  # 1 where two organisations share a project
        self._order: dict[int, int] = {}
        self._nums = np.zeros(0, np.int64)
        self.newest_year: int | None = None

    def __len__(self) -> int:
        return len(self._records)

    def upsert(self, nums: list[int], docs: list[dict]) -> None:
        with self._lock:
            for num, doc in zip(nums, docs):
                self._records[int(num)] = record_of(doc)
                self._num_of[doc["id"]] = int(num)
            self._graph = None

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            for num in nums:
                self._records.pop(int(num), None)
            self._num_of = {i: n for i, n in self._num_of.items() if n in self._records}
            self._graph = None

    def get(self, num: int) -> Record | None:
        return self._records.get(int(num))

    def any_known(self) -> bool:
        return any(r.known for r in self._records.values())

    def _build(self) -> tuple[sp.csr_matrix, dict[int, int]]:
        """Symmetric counts of shared projects between stored organisations (either side may list them)."""
        with self._lock:
            if self._graph is not None:
                return self._graph, self._order
            nums = np.fromiter(self._records, np.int64, len(self._records))
            order = {int(n): i for i, n in enumerate(nums)}
            rows, cols, vals = [], [], []
            for num, record in self._records.items():
                for pid, count in zip(record.partners, record.partner_counts):
                    other = self._num_of.get(pid)
                    if other is not None and other != num:
                        rows.append(order[num])
                        cols.append(order[other])
                        vals.append(count)
            n = len(nums)
            graph = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n, n))
            graph = graph.maximum(graph.T).tocsr()  # a project listed by one side only still links both
            years = [r.last_year for r in self._records.values() if r.last_year]
            self.newest_year = max(years) if years else None
            self._linked = (graph > 0).astype(np.float32).tocsr()
            self._graph, self._order, self._nums = graph, order, nums
            return graph, order

    def linked_to(self, seeds: list[int], weights: np.ndarray | None = None) -> dict[int, float]:
        """For every organisation that worked with any seed: how many seeds it worked with (weighted)."""
        graph, order = self._build()
        index = [order[s] for s in seeds if s in order]
        if not index:
            return {}
        w = np.ones(len(index), np.float32) if weights is None else np.asarray(weights, np.float32)[: len(index)]
        vector = np.zeros(graph.shape[0], np.float32)
        vector[index] = w
        linked = self._linked @ vector  # symmetric
        hit = np.nonzero(linked)[0]
        return {int(self._nums[i]): float(linked[i]) for i in hit}

    def neighbours(self, num: int) -> set[int]:
        """The stored organisations this one has shared a project with."""
        graph, order = self._build()
        row = order.get(int(num))
        if row is None:
            return set()
        return {int(self._nums[j]) for j in graph.indices[graph.indptr[row] : graph.indptr[row + 1]]}

    def features(self, num: int) -> tuple[float, float, float, float]:
        """log(1 + projects), log(1 + coordinated), log(1 + partners), years since the last project."""
        self._build()
        record = self._records.get(int(num))
        if record is None or not record.known:
            return 0.0, 0.0, 0.0, 0.0
        gap = 0.0
        if record.last_year and self.newest_year:
            gap = float(min(self.newest_year - record.last_year, 5))
        return math.log1p(record.projects), math.log1p(record.coordinated), math.log1p(len(record.partners)), gap
