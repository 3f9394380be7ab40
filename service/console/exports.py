"""Tables a person downloads from the console (CSV or XLSX), written by matcher.tables_io like every other table
of the project. A text cell that a spreadsheet would run as a formula (=, +, -, @ first) is kept as text."""
from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterable
from pathlib import Path

from flask import Response

from matcher.tables_io import write_table

FORMATS = {"csv": "text/csv; charset=utf-8", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def cell(value):
    """A value as a cell that no spreadsheet runs as a formula."""
    return f"'{value}" if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def download(columns: list[str], rows: Iterable[list], fmt: str, stem: str) -> Response:
    """The rows as a CSV or XLSX attachment named <stem>-<UTC time>.<fmt>."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}' (use {', '.join(FORMATS)})")
    name = f"{stem}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.{fmt}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        write_table(path, columns, ([cell(v) for v in row] for row in rows))
        data = path.read_bytes()
    return Response(data, mimetype=FORMATS[fmt], headers={"Content-Disposition": f'attachment; filename="{name}"'})
