"""Reading entity records from files (JSONL, JSON array, CSV; optionally gzipped) with their line numbers,
and importing them all-or-nothing."""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from models.enums import EntityKind
from models.schemas import InvalidInput, validate_entity

# CSV cells holding lists are split on ";"; past_projects is a JSON cell.
LIST_FIELDS = {"offers", "needs", "sectors", "tags", "partnership_forms", "preferred_partner_types", "exclude_ids"}
JSON_FIELDS = {"past_projects"}


class RecordError(Exception):
    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig", newline="")


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt not in ("jsonl", "ndjson", "json", "csv"):
        raise ValueError(f"{path}: unknown file type '{fmt}' (use .jsonl, .json or .csv, optionally .gz)")
    return "jsonl" if fmt == "ndjson" else fmt


def _csv_row(row: dict, line: int) -> dict:
    out = {}
    for key, value in row.items():
        if key is None:
            raise RecordError(line, "more cells than header columns")
        key = key.strip()
        if value is None or value.strip() == "":
            continue
        value = value.strip()
        if key in LIST_FIELDS:
            out[key] = [v.strip() for v in value.split(";") if v.strip()]
        elif key in JSON_FIELDS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise RecordError(line, f"{key}: not valid JSON ({exc.msg})") from None
        else:
            out[key] = value
    return out


def read_records(path: str | Path) -> Iterator[tuple[int, dict | RecordError]]:
    """(line number, record) for each record; a record that cannot be parsed comes as a RecordError."""
    path = Path(path)
    fmt = file_format(path)
    with _open_text(path) as fh:
        if fmt == "json":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                yield exc.lineno, RecordError(exc.lineno, f"not valid JSON ({exc.msg})")
                return
            items = data.get("items") if isinstance(data, dict) else data
            if not isinstance(items, list):
                yield 1, RecordError(1, "expected a JSON array of objects (or {\"items\": [...]})")
                return
            for i, item in enumerate(items, start=1):
                yield i, item if isinstance(item, dict) else RecordError(i, "not a JSON object")
        elif fmt == "jsonl":
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, RecordError(line_no, f"not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                yield line_no, item if isinstance(item, dict) else RecordError(line_no, "not a JSON object")
        else:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                return
            for row in reader:
                line_no = reader.line_num
                try:
                    yield line_no, _csv_row(row, line_no)
                except RecordError as exc:
                    yield line_no, exc


@dataclass
class ImportReport:
    kind: EntityKind
    path: str
    read: int = 0
    written: int = 0
    errors: list[RecordError] = field(default_factory=list)


def import_file(engine, kind: EntityKind, path: str | Path, progress: bool = True) -> ImportReport:
    """Validate every record, and write all of them in one transaction only if every one is valid."""
    from tqdm import tqdm

    report = ImportReport(kind, str(path))
    docs, lines, seen = [], [], {}
    for line_no, record in tqdm(read_records(path), desc=f"reading {Path(path).name}", unit=" rows", disable=not progress):
        report.read += 1
        if isinstance(record, RecordError):
            report.errors.append(record)
            continue
        try:
            doc = validate_entity(kind, record, strict=False)  # a file's rows: CSV cells are text
        except InvalidInput as exc:
            report.errors.extend(RecordError(line_no, f"{d['field']}: {d['problem']}") for d in exc.details)
            continue
        if doc["id"] in seen:
            report.errors.append(RecordError(line_no, f"id: '{doc['id']}' repeats line {seen[doc['id']]}"))
            continue
        seen[doc["id"]] = line_no
        docs.append(doc)
        lines.append(line_no)
    if report.errors or not docs:
        return report
    with tqdm(total=len(docs), desc=f"embedding {kind.value}", unit=" items", disable=not progress) as bar:
        try:
            engine.write(kind, docs, progress=bar.update)
        except InvalidInput as exc:  # e.g. a challenge whose owner is not stored
            for detail in exc.details:
                index = int(detail["field"].split("]")[0].split("[")[1])
                report.errors.append(RecordError(lines[index], f"{detail['field'].split('.', 1)[1]}: {detail['problem']}"))
            return report
    report.written = len(docs)
    return report
