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
    def __init__(self, dim: int):
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.meta: dict[int, dict] = {}
        self.num_of: dict[str, int] = {}

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

    def remove(self, nums: list[int]) -> None:
        nums = [n for n in nums if n in self.meta]
        if not nums:
            return
        self.index.remove_ids(np.asarray(nums, dtype=np.int64))
        for num in nums:
            meta = self.meta.pop(num)
            if self.num_of.get(meta["id"]) == num:
                del self.num_of[meta["id"]]

    def vector(self, num: int) -> np.ndarray:
        return self.index.reconstruct(int(num))

    def allowed(self, flt: Filter) -> np.ndarray | None:
        """The nums that pass a filter, or None when every row does."""
        if flt.is_empty():
            return None
        types, countries, excluded = set(flt.types), set(flt.countries), set(flt.exclude_nums)
        keep = []
        for num, meta in self.meta.items():
            if num in excluded:
                continue
            if countries and meta.get("country") not in countries:
                continue
            if flt.status and meta.get("status") != flt.status:
                continue
            if types:
                if "type" in meta:
                    if meta["type"] not in types:
                        continue
                else:  # a challenge open to any type, or preferring one of these
                    preferred = meta.get("preferred_partner_types") or []
                    if preferred and not types.intersection(preferred):
                        continue
            if flt.near and not places.within(meta, flt.near):
                continue
            keep.append(num)
        return np.asarray(keep, dtype=np.int64)

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
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, nums = self.index.search(queries, k, params=params)
        return [[(int(n), float(s)) for n, s in zip(row_n, row_s) if n >= 0] for row_n, row_s in zip(nums, scores)]

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
