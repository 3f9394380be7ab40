"""Similar past work: how much of what an organisation did before resembles the query.

Each organisation's past project titles (``past_projects[].title``) are embedded alone when it is written
(``project_vectors`` in the store). For a query ``q`` the signal is a kernel density over those titles:

    mass(org) = sum over its past projects p of exp((cos(q, title_p) - best) / TAU)

where ``best`` is the closest title to ``q`` in the whole index, so the best single project counts 1 and one
that is 0.1 less similar counts e^-1. It grows with both how close the work is and how much of it there is: a
university with forty projects near the topic outweighs one with a single close title, and an organisation
whose many projects are all far away gains little. The ranker reads ``log(mass)`` (``matcher.hybrid``), and
the best organisations by mass join the candidates, beside the dense and BM25 ones.

Kept in sync with the store like the other indexes. A title shared by several organisations is held once;
when the last organisation naming it goes, so does its vector.
"""
from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp

TAU = 0.1  # kernel width in cosine units
FLOOR = float(np.exp(-8.0))  # mass of an organisation with nothing near the query (e.g. no past projects)


def distinct_titles(doc: dict) -> list[str]:
    """The past project titles of a profile, each once, in the order they first appear (as stored)."""
    titles = (str(p.get("title") or "").strip() for p in doc.get("past_projects") or [])
    return list(dict.fromkeys(t for t in titles if t))


def title_counts(doc: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for project in doc.get("past_projects") or []:
        title = str(project.get("title") or "").strip()
        if title:
            counts[title] = counts.get(title, 0) + 1
    return counts


class PastWork:
    """Past project titles of the stored organisations, as vectors, and the kernel mass of a query over them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows: dict[int, dict[str, int]] = {}  # num -> title -> projects with that title
        self._vectors: dict[str, np.ndarray] = {}  # title -> unit vector
        self._refs: dict[str, int] = {}  # title -> rows naming it
        self._built: tuple[np.ndarray, np.ndarray, sp.csr_matrix] | None = None  # nums, title matrix, incidence

    def __len__(self) -> int:
        return len(self._rows)

    def titles(self) -> int:
        return len(self._vectors)

    def upsert(self, nums: list[int], docs: list[dict], vectors: list[np.ndarray | None] | None = None) -> None:
        """(Re)index rows. ``vectors[i]`` holds row i's distinct titles' vectors (``distinct_titles`` order);
        without it, only titles already indexed count (a title can be found again by its text)."""
        with self._lock:
            for i, (num, doc) in enumerate(zip(nums, docs)):
                num = int(num)
                self._drop(num)
                given = vectors[i] if vectors is not None else None
                if given is not None:
                    for title, vector in zip(distinct_titles(doc), given):
                        self._vectors.setdefault(title, np.asarray(vector, np.float32))
                counts = {t: c for t, c in title_counts(doc).items() if t in self._vectors}
                for title in counts:
                    self._refs[title] = self._refs.get(title, 0) + 1
                self._rows[num] = counts
            self._forget_unused()
            self._built = None

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            for num in nums:
                self._drop(int(num))
            self._forget_unused()
            self._built = None

    def _drop(self, num: int) -> None:
        for title in self._rows.pop(num, {}):
            self._refs[title] -= 1

    def _forget_unused(self) -> None:
        for title in [t for t, n in self._refs.items() if n <= 0]:
            del self._refs[title]
        for title in [t for t in self._vectors if t not in self._refs]:
            del self._vectors[title]

    def _build(self) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
        with self._lock:
            if self._built is None:
                titles = list(self._vectors)
                column = {t: j for j, t in enumerate(titles)}
                nums = np.array(sorted(self._rows), np.int64)
                rows, cols, vals = [], [], []
                for i, num in enumerate(nums.tolist()):
                    for title, count in self._rows[num].items():
                        rows.append(i)
                        cols.append(column[title])
                        vals.append(count)
                matrix = np.vstack([self._vectors[t] for t in titles]) if titles else np.zeros((0, 0), np.float32)
                incidence = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(len(nums), len(titles)))
                self._built = (nums, matrix, incidence)
            return self._built

    def mass(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(nums, kernel mass per row, best title cosine) for a unit query vector; the mass is relative to the
        best title (which counts 1), and rows without titles are left out."""
        nums, matrix, incidence = self._build()
        if not len(nums) or not matrix.shape[0]:
            return np.zeros(0, np.int64), np.zeros(0), 0.0
        sims = matrix @ query.astype(np.float32)
        best = float(sims.max())
        kernel = np.exp((sims - best) / TAU)
        return nums, np.asarray(incidence @ kernel, np.float64), best

    def closest_titles(self, num: int, query: np.ndarray, limit: int = 3) -> list[tuple[str, float]]:
        """A row's past project titles closest to the query, with their cosines (for explanations)."""
        with self._lock:
            titles = list(self._rows.get(int(num), {}))
            vectors = [self._vectors[t] for t in titles]
        if not titles:
            return []
        sims = np.vstack(vectors) @ query.astype(np.float32)
        order = np.argsort(-sims, kind="stable")[:limit]
        return [(titles[i], float(sims[i])) for i in order]
