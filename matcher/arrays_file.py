"""One file of named numpy arrays and a JSON header: written atomically, read memory-mapped.

The layout is a magic line, the header's length and the header (JSON: the caller's fields, and each array's
dtype, shape, offset and CRC-32), then the arrays, each aligned to 64 bytes after a page-aligned start. Reading
maps the arrays instead of copying them, so processes reading one file share its pages (the page cache holds
them once); ``writable`` names arrays mapped copy-on-write, which a process may change for itself. Every
array's checksum is verified on reading: a truncated or garbled file raises ``ArraysFileError``.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from models.files import open_private, private_dir

MAGIC = b"matcher-arrays 1\n"
_ALIGN = 64
_PAGE = 4096


class ArraysFileError(Exception):
    """A file that is missing, truncated or garbled."""


def _aligned(offset: int, to: int) -> int:
    return -(-offset // to) * to


def write(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and ``header`` to ``path`` atomically (a temporary file renamed into place), 0600."""
    layout, offset, contiguous = {}, 0, {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            raise TypeError(f"array {name} holds Python objects")
        offset = _aligned(offset, _ALIGN)
        layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset,
                        "crc": zlib.crc32(array.view(np.uint8).reshape(-1)) if array.nbytes else 0}
        contiguous[name] = array
        offset += array.nbytes
    head = json.dumps({"header": header, "arrays": layout}).encode()
    prefix = MAGIC + len(head).to_bytes(8, "little") + head
    start = _aligned(len(prefix), _PAGE)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(open_private(tmp), "wb") as fh:
        fh.write(prefix + b"\0" * (start - len(prefix)))
        for name, array in contiguous.items():
            fh.seek(start + layout[name]["offset"])
            fh.write(array.view(np.uint8).reshape(-1).data if array.nbytes else b"")
        fh.truncate(start + offset)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read(path: Path, writable: tuple[str, ...] = ()) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a file ``write`` made; the arrays are read-only maps of the file, but those named in
    ``writable`` (copy-on-write)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise ArraysFileError(f"{path} is not an arrays file")
            size = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(size).decode())
        start = _aligned(len(MAGIC) + 8 + size, _PAGE)
        file_size = path.stat().st_size
        arrays = {}
        for name, spec in meta["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if start + spec["offset"] + nbytes > file_size:
                raise ArraysFileError(f"{path} is truncated")
            if not nbytes:
                arrays[name] = np.zeros(shape, dtype)
                continue
            # A plain view of the map (numpy's memmap subclass costs about 1 ms an indexing); it keeps the map open.
            array = np.memmap(path, dtype=dtype, mode="c" if name in writable else "r", offset=start + spec["offset"],
                              shape=shape).view(np.ndarray)
            if zlib.crc32(array.view(np.uint8).reshape(-1)) != spec["crc"]:
                raise ArraysFileError(f"{path}: array {name} fails its checksum")
            arrays[name] = array
        return meta["header"], arrays
    except ArraysFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArraysFileError(f"unreadable arrays file {path}: {exc}") from exc


def strings(values: list[str]) -> np.ndarray:
    """Strings as one array (a JSON list, UTF-8), for ``write``."""
    return np.frombuffer(json.dumps(values).encode(), np.uint8)


def from_strings(array: np.ndarray) -> list[str]:
    """The strings that ``strings`` packed."""
    return json.loads(bytes(array).decode())


def ragged(parts: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of different lengths as (lengths, one flat array), for ``write``."""
    lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
    return lengths, (np.concatenate(parts).astype(dtype, copy=False) if len(parts) else np.zeros(0, dtype))


def unragged(lengths: np.ndarray, flat: np.ndarray) -> list[np.ndarray]:
    """The arrays that ``ragged`` joined (views of ``flat``)."""
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
