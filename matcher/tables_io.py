"""Tabular files in and out: CSV, JSONL (optionally .gz, via matcher.records) and XLSX (openpyxl).

Reading gives (line number, record or RecordError) like ``records.read_records``; an XLSX row's line is its
sheet row number. Writing takes a list of column names and rows of plain values.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from matcher.records import RecordError, _csv_row, read_records

TABLE_FORMATS = ("csv", "jsonl", "xlsx")


def table_format(path: str | Path) -> str:
    """csv, jsonl (also .ndjson/.json) or xlsx, from the file name."""
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt == "ndjson":
        fmt = "jsonl"
    if fmt not in TABLE_FORMATS + ("json",):
        raise ValueError(f"{path}: unknown file type '{fmt}' (use .csv, .jsonl, .json or .xlsx)")
    return fmt


def read_table(path: str | Path) -> Iterator[tuple[int, dict | RecordError]]:
    """(line, record) per row of a CSV, JSONL, JSON or XLSX file; unreadable rows come as RecordError."""
    path = Path(path)
    if table_format(path) != "xlsx":
        yield from read_records(path)
        return
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException for a broken file
        raise ValueError(f"{path}: not a readable XLSX file ({exc.__class__.__name__}: {exc})") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None)
        if header is None:
            return
        names = [str(h).strip() if h is not None else "" for h in header]
        for line, values in enumerate(rows, start=2):
            if values is None or all(v is None or str(v).strip() == "" for v in values):
                continue
            if len(values) > len(names) and any(v not in (None, "") for v in values[len(names):]):
                yield line, RecordError(line, "more cells than header columns")
                continue
            cells = {n: _cell(v) for n, v in zip(names, values) if n}
            try:
                yield line, _csv_row(cells, line)
            except RecordError as exc:
                yield line, exc
    finally:
        book.close()


def _cell(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def write_table(path: str | Path, columns: list[str], rows: Iterable[list]) -> None:
    """Write rows to a CSV, JSONL or XLSX file atomically (temporary file, then rename)."""
    path = Path(path)
    fmt = table_format(path)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook(write_only=True)
        sheet = book.create_sheet("results")
        sheet.append(columns)
        for row in rows:
            sheet.append(row)
        book.save(tmp)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if fmt == "csv":
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows(rows)
            else:
                for row in rows:
                    fh.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
