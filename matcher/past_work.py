"""Similar past work: how much of what an organisation did before resembles the query.

Each organisation's past project titles (``past_projects[].title``) are embedded alone when it is written
(``project_vectors`` in the store). For a query ``q`` the signal is a kernel density over those titles:

    mass(org) = sum over its past projects p of exp((cos(q, title_p) - best) / TAU)

where ``best`` is the closest title to ``q`` in the whole index, so the best single project counts 1 and one
that is 0.1 less similar counts e^-1. It grows with both how close the work is and how much of it there is: a
university with forty projects near the topic outweighs one with a single close title, and an organisation
whose many projects are all far away gains little. The ranker reads ``log(mass)`` (``matcher.hybrid``), and
the best organisations by mass join the candidates, beside the dense and BM25 ones. ``q`` is the query's
title embedded alone when it has one (``matcher.text.query_title``): a call is compared title to title.

Kept in sync with the store like the other indexes. A title shared by several organisations is held once;
when the last organisation naming it goes, so does its vector.
"""
from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp

from matcher.arrays_file import from_strings, strings

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
        # Each title held has a slot: a row of the title matrix, stable while some organisation names it.
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._matrix = np.zeros((0, 0), np.float32)
        self._live = np.zeros(0, bool)
        self._refs: dict[str, int] = {}  # title -> rows naming it
        self._rows: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}  # num -> titles, their slots, counts
        self._orphans: set[str] = set()
        self._built: tuple[np.ndarray, sp.csr_matrix] | None = None  # nums, incidence (rows x slots)
        self._titles: list[str] | None = None  # slot -> title, while loaded from a snapshot and not yet written to

    def __len__(self) -> int:
        return len(self._built[0]) if self._titles is not None else len(self._rows)

    def titles(self) -> int:
        return len(self._slot)

    def upsert(self, nums: list[int], docs: list[dict], vectors: list[np.ndarray | None] | None = None) -> None:
        """(Re)index rows. ``vectors[i]`` holds row i's distinct titles' vectors (``distinct_titles`` order);
        without it, only titles already indexed count (a title can be found again by its text)."""
        with self._lock:
            self._materialise()
            for i, (num, doc) in enumerate(zip(nums, docs)):
                num = int(num)
                self._drop(num)
                given = vectors[i] if vectors is not None else None
                if given is not None:
                    for title, vector in zip(distinct_titles(doc), given):
                        if title not in self._slot:
                            self._hold(title, vector)
                counts = {t: c for t, c in title_counts(doc).items() if t in self._slot}
                for title in counts:
                    self._refs[title] = self._refs.get(title, 0) + 1
                titles = list(counts)
                self._rows[num] = (titles, np.array([self._slot[t] for t in titles], np.int64),
                                   np.array([counts[t] for t in titles], np.float32))
            self._forget_orphans()

    def remove(self, nums: list[int]) -> None:
        with self._lock:
            self._materialise()
            for num in nums:
                self._drop(int(num))
            self._forget_orphans()

    def _hold(self, title: str, vector: np.ndarray) -> None:
        vector = np.asarray(vector, np.float32)
        if not self._free:
            old = len(self._live)
            grown = np.zeros((max(2 * old, 1024), len(vector)), np.float32)
            if old:
                grown[:old] = self._matrix
            self._matrix, self._live = grown, np.concatenate([self._live, np.zeros(len(grown) - old, bool)])
            self._free = list(range(len(grown) - 1, old - 1, -1))
        slot = self._free.pop()
        self._matrix[slot], self._live[slot] = vector, True
        self._slot[title] = slot
        self._orphans.add(title)  # until a row names it

    def _drop(self, num: int) -> None:
        for title in self._rows.pop(num, ([], None, None))[0]:
            self._refs[title] -= 1
            if self._refs[title] <= 0:
                self._orphans.add(title)

    def _forget_orphans(self) -> None:
        """Titles no stored organisation names any more leave, vectors included (zeroed)."""
        for title in self._orphans:
            if self._refs.get(title, 0) <= 0:
                self._refs.pop(title, None)
                slot = self._slot.pop(title)
                self._matrix[slot], self._live[slot] = 0.0, False
                self._free.append(slot)
        self._orphans.clear()
        self._built = None

    def _build(self) -> tuple[np.ndarray, sp.csr_matrix]:
        with self._lock:
            if self._built is None:
                nums = np.array(sorted(self._rows), np.int64)
                parts = [self._rows[int(n)] for n in nums]
                lengths = np.fromiter((len(p[0]) for p in parts), np.int64, len(parts))
                rows = np.repeat(np.arange(len(nums)), lengths)
                cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
                vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
                self._built = (nums, sp.csr_matrix((vals, (rows, cols)), shape=(len(nums), len(self._live))))
            return self._built

    def mass(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(nums, kernel mass per row, best title cosine) for a unit query vector; the mass is relative to the
        best title (which counts 1), and rows without titles are left out."""
        nums, incidence = self._build()
        if not len(nums) or not self._slot:
            return np.zeros(0, np.int64), np.zeros(0), 0.0
        sims = self._matrix[: incidence.shape[1]] @ query.astype(np.float32)
        best = float(sims[self._live[: incidence.shape[1]]].max())
        kernel = np.exp(np.minimum(sims - best, 0.0) / TAU)  # free slots are named by no row: they add nothing
        return nums, np.asarray(incidence @ kernel, np.float64), best

    def closest_titles(self, num: int, query: np.ndarray, limit: int = 3) -> list[tuple[str, float]]:
        """A row's past project titles closest to the query, with their cosines (for explanations)."""
        with self._lock:
            if self._titles is not None:  # as loaded: the row's slots are its incidence row
                nums, incidence = self._built
                row = int(np.searchsorted(nums, num))
                found = row < len(nums) and nums[row] == num
                slots = incidence.indices[incidence.indptr[row] : incidence.indptr[row + 1]] if found else np.zeros(0, np.int64)
                titles = [self._titles[s] for s in slots.tolist()]
            else:
                titles, slots, _ = self._rows.get(int(num), ([], np.zeros(0, np.int64), None))
            vectors = self._matrix[slots]
        if not titles:
            return []
        sims = vectors @ query.astype(np.float32)
        order = np.argsort(-sims, kind="stable")[:limit]
        return [(titles[i], float(sims[i])) for i in order]

    # --- snapshots ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``from_arrays`` needs: the titles held and their vectors (slots renumbered without gaps), and each
        row's slots and counts."""
        nums, incidence = self._build()
        with self._lock:
            slots = np.flatnonzero(self._live[: incidence.shape[1]])
            if self._titles is not None:
                titles = [self._titles[s] for s in slots.tolist()]
            else:
                title_of = {slot: title for title, slot in self._slot.items()}
                titles = [title_of[s] for s in slots.tolist()]
            renumber = np.full(incidence.shape[1], -1, np.int64)
            renumber[slots] = np.arange(len(slots))
            return {"titles": strings(titles), "vectors": self._matrix[slots], "nums": nums,
                    "indptr": incidence.indptr, "slots": renumber[incidence.indices], "counts": incidence.data}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PastWork:
        """Past work as ``to_arrays`` gave it: ready to rank at once (``vectors`` may be mapped copy-on-write); the
        per-row dicts that writes change are made from the arrays on the first write (``_materialise``)."""
        self = cls()
        self._titles = from_strings(arrays["titles"])
        self._slot = {title: slot for slot, title in enumerate(self._titles)}
        self._matrix, self._live = arrays["vectors"], np.ones(len(self._titles), bool)
        nums = np.asarray(arrays["nums"], np.int64)
        self._built = (nums, sp.csr_matrix((arrays["counts"], arrays["slots"], arrays["indptr"]),
                                           shape=(len(nums), len(self._titles))))
        return self

    def _materialise(self) -> None:
        """Make the per-row dicts from the loaded arrays (with the lock held), before a write changes them."""
        if self._titles is None:
            return
        nums, incidence = self._built
        for row, num in enumerate(nums.tolist()):
            span = slice(incidence.indptr[row], incidence.indptr[row + 1])
            slots = np.asarray(incidence.indices[span], np.int64)
            titles = [self._titles[s] for s in slots.tolist()]
            self._rows[num] = (titles, slots, np.asarray(incidence.data[span], np.float32))
            for title in titles:
                self._refs[title] = self._refs.get(title, 0) + 1
        self._titles = None
