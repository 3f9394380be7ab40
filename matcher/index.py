"""A FAISS inner-product index over one entity kind, with the store's ``num`` as row id.

Filters (types, countries, status, excluded ids) become a FAISS ``IDSelector`` applied inside the search,
so a filtered query returns k results whenever k entities pass the filter.
Snapshots are one file, written to a temporary name and renamed into place, with a checksum. A temporary
file that a killed process left behind is never read, and is deleted by the next save or load.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from matcher import places
from models.files import open_private, private_dir

# faiss-cpu 1.15: batched flat search is 2-8x faster with this threshold, same results.
faiss.cvar.distance_compute_blas_threshold = 20

SNAPSHOT_FORMAT = 1
_TMP_MAX_AGE_S = 60  # a save's temporary file older than this, whose process is gone, was left by a crash


class SnapshotError(Exception):
    """A snapshot that is missing, corrupt, or made with another model."""


@dataclass
class Filter:
    """Which rows may be returned. Empty lists mean no constraint."""

    types: tuple[str, ...] = ()  # organisations: their type; challenges: their preferred partner types
    countries: tuple[str, ...] = ()
    status: str | None = None  # challenges only; None = any
    exclude_nums: tuple[int, ...] = ()
    near: tuple[float, float, float] | None = None  # (lat, lon, km): rows whose place (meta lat, lon) is that close

    def is_empty(self) -> bool:
        return not (self.types or self.countries or self.status or self.exclude_nums or self.near)


class VectorIndex:
    """Rows are numbered by the store's ``num``. Per-query work reads arrays over "num space" (one slot per num up to
    the largest: ``space``), so that the ranker aligns every signal of its candidates with plain indexing."""

    def __init__(self, dim: int):
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.meta: dict[int, dict] = {}
        self.num_of: dict[str, int] = {}
        self._view: _View | None = None  # built on first use after a change

    def __len__(self) -> int:
        return self.index.ntotal

    def upsert(self, nums: list[int], vectors: np.ndarray, metas: list[dict]) -> None:
        """Add rows, replacing any row with the same num."""
        if not nums:
            return
        self.remove([n for n in nums if n in self.meta])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(nums), self.dim)
        self.index.add_with_ids(vectors, np.asarray(nums, dtype=np.int64))
        for num, meta in zip(nums, metas):
            self.meta[num] = meta
            self.num_of[meta["id"]] = num
        self._view = None

    def remove(self, nums: list[int]) -> None:
        nums = [n for n in nums if n in self.meta]
        if not nums:
            return
        self.index.remove_ids(np.asarray(nums, dtype=np.int64))
        for num in nums:
            meta = self.meta.pop(num)
            if self.num_of.get(meta["id"]) == num:
                del self.num_of[meta["id"]]
        self._view = None

    def view(self) -> _View:
        if self._view is None:
            self._view = _View.of(self)
        return self._view

    @property
    def space(self) -> int:
        """The length of num-space arrays: the largest num + 1."""
        return len(self.view().row_of)

    def vector(self, num: int) -> np.ndarray:
        return self.index.reconstruct(int(num))

    def vectors(self, nums: np.ndarray) -> np.ndarray:
        """The rows' vectors (every num must be indexed), float32, one per num."""
        view = self.view()
        return view.vectors[view.row_of[np.asarray(nums, np.int64)]]

    def allowed(self, flt: Filter) -> np.ndarray | None:
        """The nums that pass a filter, or None when every row does."""
        mask = self.allowed_mask(flt)
        return None if mask is None else np.flatnonzero(mask)

    def allowed_mask(self, flt: Filter) -> np.ndarray | None:
        """Whether each num passes a filter (bool over num space), or None when every row does."""
        if flt.is_empty():
            return None
        view = self.view()
        keep = view.row_of >= 0
        excluded = [n for n in flt.exclude_nums if 0 <= n < len(keep)]
        keep[excluded] = False
        if flt.countries:
            keep &= view.column("country", flt.countries)
        if flt.status:
            keep &= view.column("status", [flt.status])
        if flt.types:
            if view.has_type:
                keep &= view.column("type", flt.types)
            else:  # challenges: open to any type, or preferring one of these
                types = set(flt.types)
                for num in np.flatnonzero(keep).tolist():
                    preferred = self.meta[num].get("preferred_partner_types") or []
                    keep[num] = not preferred or bool(types.intersection(preferred))
        if flt.near:
            for num in np.flatnonzero(keep).tolist():
                keep[num] = places.within(self.meta[num], flt.near)
        return keep

    def search(self, queries: np.ndarray, k: int, flt: Filter | None = None, *,
               allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Best k (num, inner product) per query row, best first, only rows passing the filter
        (or, when the caller has it already, only the ``allowed`` nums that ``allowed(filter)`` gave)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if flt is not None:
            allowed = self.allowed(flt)
        if allowed is not None and len(allowed) == 0 or len(self) == 0:
            return [[] for _ in range(len(queries))]
        k = min(k, len(self) if allowed is None else len(allowed))
        if len(queries) == 1:  # one query: a matrix-vector product, several times faster than FAISS's scan
            mask = None
            if allowed is not None:
                mask = np.zeros(self.space, bool)
                mask[allowed] = True
            nums, scores = self.top(queries[0], k, mask)
            return [list(zip(nums.tolist(), scores.tolist()))]
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, nums = self.index.search(queries, k, params=params)
        return [[(int(n), float(s)) for n, s in zip(row_n, row_s) if n >= 0] for row_n, row_s in zip(nums, scores)]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """The inner product of the query with every row, over num space (0 where no row)."""
        view = self.view()
        out = np.zeros(len(view.row_of), np.float32)
        out[view.nums] = view.vectors @ np.asarray(query, np.float32)
        return out

    def top(self, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(nums, inner products) of the best k rows for one query, best first (ties by num), among the nums
        that ``mask`` (bool over num space) allows."""
        view = self.view()
        sims = view.vectors @ np.asarray(query, np.float32)
        nums = view.nums
        if mask is not None:
            passing = mask[nums]
            nums, sims = nums[passing], sims[passing]
        k = min(k, len(nums))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        part = np.argpartition(-sims, k - 1)[:k] if k < len(nums) else np.arange(len(nums))
        order = part[np.lexsort((nums[part], -sims[part]))]
        return nums[order], sims[order]

    # --- snapshots ------------------------------------------------------------------------------

    def save(self, path: Path, *, seq: int, model: str) -> None:
        """Write the index and its metadata to one file, atomically."""
        blob = faiss.serialize_index(self.index).tobytes()
        header = {
            "format": SNAPSHOT_FORMAT,
            "seq": seq,
            "model": model,
            "dim": self.dim,
            "ntotal": len(self),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "meta": {str(k): v for k, v in self.meta.items()},
        }
        buffer = io.BytesIO()
        np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), index=np.frombuffer(blob, dtype=np.uint8))
        private_dir(path.parent)
        remove_leftovers(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with os.fdopen(open_private(tmp), "wb") as fh:  # it holds the profiles' ids and filter fields: 0600
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, *, model: str, dim: int | None) -> tuple[VectorIndex, int]:
        """Read a snapshot; raise SnapshotError when it is missing, corrupt, or for another model (``dim`` None:
        the snapshot's, which the model named by ``model`` has)."""
        remove_leftovers(path)
        if not path.exists():
            raise SnapshotError(f"no snapshot at {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(npz["header"].tobytes().decode())
                blob = npz["index"]
        except Exception as exc:  # truncated or garbled file
            raise SnapshotError(f"unreadable snapshot {path}: {exc}") from exc
        if (header.get("format") != SNAPSHOT_FORMAT or header.get("model") != model
                or (dim is not None and header.get("dim") != dim)):
            raise SnapshotError(f"snapshot {path} was made with another model or format")
        if hashlib.sha256(blob.tobytes()).hexdigest() != header.get("sha256"):
            raise SnapshotError(f"snapshot {path} fails its checksum")
        self = cls(int(header["dim"]))
        self.index = faiss.deserialize_index(np.ascontiguousarray(blob))
        if not isinstance(self.index, faiss.IndexIDMap2):
            raise SnapshotError(f"snapshot {path} holds a {type(self.index).__name__}, not an IndexIDMap2")
        self.meta = {int(k): v for k, v in header["meta"].items()}
        self.num_of = {m["id"]: n for n, m in self.meta.items()}
        if len(self) != header["ntotal"] or len(self.meta) != len(self):
            raise SnapshotError(f"snapshot {path} is inconsistent")
        return self, int(header["seq"])


@dataclass
class _View:
    """A VectorIndex's rows as arrays: its vectors (FAISS's own storage, not a copy), the num of each, the row of
    each num (-1: none) and the filter fields as codes."""

    vectors: np.ndarray
    nums: np.ndarray
    row_of: np.ndarray
    has_type: bool
    _columns: dict

    @classmethod
    def of(cls, index: VectorIndex) -> _View:
        n = len(index)
        flat = faiss.downcast_index(index.index.index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), n * index.dim).reshape(n, index.dim) if n else np.zeros((0, index.dim), np.float32)
        nums = faiss.vector_to_array(index.index.id_map).astype(np.int64) if n else np.zeros(0, np.int64)
        row_of = np.full(int(nums.max()) + 1 if n else 0, -1, np.int64)
        row_of[nums] = np.arange(n)
        has_type = any("type" in m for m in index.meta.values())
        return cls(vectors, nums, row_of, has_type, {"meta": index.meta})

    def column(self, name: str, values) -> np.ndarray:
        """Whether each num's metadata field ``name`` is one of ``values`` (bool over num space)."""
        if name not in self._columns:
            codes: dict = {}
            column = np.full(len(self.row_of), -1, np.int64)
            for num, meta in self._columns["meta"].items():
                column[num] = codes.setdefault(meta.get(name), len(codes))
            self._columns[name] = (codes, column)
        codes, column = self._columns[name]
        wanted = [codes[v] for v in values if v in codes]
        return np.isin(column, wanted) if wanted else np.zeros(len(column), bool)


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of saves of ``path`` that were killed before their rename: those whose process
    is gone and that were not written to for a minute (so a save running in another PID namespace is left alone)."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{prefix}*.tmp"):
        try:
            pid = int(tmp.name[len(prefix) : -len(".tmp")])
            if pid == os.getpid() or time.time() - tmp.stat().st_mtime < _TMP_MAX_AGE_S:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):  # not ours, alive (PermissionError: another user's), or gone already
            continue
