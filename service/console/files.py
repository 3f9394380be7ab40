"""Files in and out of the console's tool pages (batch, events): an uploaded table read as the commands read it
(CSV, JSONL, JSON or XLSX: ``matcher.tables_io``, each row with its line), and a folder of files sent back as one
zip. An upload is read from a temporary file that is gone when the request ends; nothing of it is logged.
(Tables to download: exports.py.)
"""
from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from pathlib import Path

from flask import Response, request

from matcher.records import RecordError
from matcher.tables_io import read_table, table_format

ACCEPT = ".csv,.jsonl,.ndjson,.json,.xlsx"  # the file input's accept attribute

Rows = list[tuple[int, dict | RecordError]]


def read_upload(name: str, errors: dict[str, str]) -> Rows | None:
    """The rows (line, record or RecordError) of the file uploaded as input ``name``; None, with the problem in
    ``errors[name]``, when there is no file, its type is not a table's, it cannot be read, or it has no row."""
    upload = request.files.get(name)
    if upload is None or not upload.filename:
        errors[name] = "choose a file"
        return None
    try:
        fmt = table_format(upload.filename)
    except ValueError:
        errors[name] = "must be a .csv, .jsonl, .json or .xlsx file"
        return None
    gz = ".gz" if upload.filename.lower().endswith(".gz") else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload.{fmt}{gz}"
        upload.save(path)
        try:
            rows = list(read_table(path))
        except UnicodeDecodeError:
            errors[name] = "is not UTF-8 text: save it as “CSV UTF-8” (or as XLSX) and upload it again"
            return None
        except (ValueError, csv.Error, OSError, EOFError) as exc:  # a broken XLSX, gzip or CSV
            problem = str(exc).replace(str(path), "").lstrip(": ") or exc.__class__.__name__
            errors[name] = f"cannot be read as a {fmt.upper()} file: {problem}"
            return None
    if not rows:
        errors[name] = "has no rows under its header" if fmt in ("csv", "xlsx") else "has no rows"
        return None
    return rows


def send_folder_zip(folder: Path, stem: str) -> Response:
    """Every file under ``folder`` in one zip download, under a top folder named ``stem``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{stem}/{path.relative_to(folder).as_posix()}")
    return Response(buffer.getvalue(), mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{stem}.zip"'})
