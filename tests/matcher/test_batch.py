"""Batch matching on real files: CSV, JSONL and XLSX in and out, bad rows, resume after a kill, Ray Data."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from openpyxl import Workbook, load_workbook

from matcher.batch import COLUMNS, run_batch_file
from models.enums import EntityKind
from tests.conftest import ORGS, ROOT

QUERIES = [
    {"text": "battery storage for a district microgrid"},
    {"organisation_id": "ghent-energy"},
    {"id": "aquasense"},
    {"text": "leak detection in water pipes", "id": "q-leaks"},
    {"name": "Lumiere Labs", "type": "startup", "description": "Smart LED street lights that dim when streets are empty."},
]


@pytest.fixture
def stocked(engine):
    engine.upsert_many(EntityKind.organisations, ORGS)
    engine.create(EntityKind.challenges, {"id": "ch-grid", "title": "Storage for the district grid",
                                          "description": "Ghent wants battery storage to balance solar peaks.",
                                          "owner_id": "ghent-energy"})
    return engine


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_jsonl_to_csv_with_bad_rows(stocked, tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", QUERIES + [
        '{"text": "cut short',                      # line 6: not JSON
        {"organisation_id": "nobody"},              # line 7: unknown id
        {"name": "No type", "description": "x"},    # line 8: profile without a type
        {"text": "ok", "challenge_id": "ch-grid"},  # line 9: two queries in one row
    ])
    report = run_batch_file(stocked, src, tmp_path / "out.csv", k=3, progress=False)
    assert report.read == 9 and report.queries == 5 and [e.line for e in report.errors] == [6, 7, 8, 9]
    assert "organisation_id: no organisation with id 'nobody'" in str(report.errors[1])
    assert "type" in str(report.errors[2])
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 15
    assert [r["query_line"] for r in rows[::3]] == ["1", "2", "3", "4", "5"]
    assert rows[3]["query_id"] == "ghent-energy" and "ghent-energy" not in [r["match_id"] for r in rows[3:6]]
    assert rows[6]["query_id"] == "aquasense" and rows[9]["match_id"] == "aquasense"  # a stored id, and the leak query
    assert rows[12]["match_id"] == "lumen" and rows[0]["match_id"] == "voltgrid"
    assert all(r["explanation"] for r in rows) and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert not (tmp_path / "out.csv.partial").exists()


def test_xlsx_in_and_out_challenges_target(stocked, tmp_path):
    book = Workbook()
    sheet = book.active
    sheet.append(["id", "text", "organisation_id"])
    sheet.append([None, "storage for solar peaks", None])
    sheet.append(["x1", None, "voltgrid"])
    sheet.append([None, None, None])  # an empty row is skipped
    sheet.append([None, None, None, "stray cell"])  # line 5: more cells than columns
    book.save(tmp_path / "q.xlsx")
    report = run_batch_file(stocked, tmp_path / "q.xlsx", tmp_path / "out.xlsx", target="challenges", k=5, progress=False)
    assert [e.line for e in report.errors] == [5] and report.queries == 2
    rows = list(load_workbook(tmp_path / "out.xlsx").active.iter_rows(values_only=True))
    assert list(rows[0]) == COLUMNS
    assert [(r[0], r[3]) for r in rows[1:]] == [(2, "ch-grid"), (3, "ch-grid")]


@pytest.mark.slow
def test_deterministic_and_resumes_without_duplicates(stocked, tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", [{"text": f"{o['description']} Variant {i}."} for i in range(5) for o in ORGS])
    clean = tmp_path / "clean.jsonl"
    run_batch_file(stocked, src, clean, k=4, progress=False)
    again = tmp_path / "again.jsonl"
    run_batch_file(stocked, src, again, k=4, progress=False)
    assert clean.read_bytes() == again.read_bytes()

    out = tmp_path / "out.jsonl"
    real_match_many, calls = stocked.match_many, []

    def interrupted(requests):
        if calls:
            raise KeyboardInterrupt  # as Ctrl-C after the first chunk
        calls.append(1)
        return real_match_many(requests)

    stocked.match_many = interrupted
    with pytest.raises(KeyboardInterrupt):
        run_batch_file(stocked, src, out, k=4, progress=False)
    stocked.match_many = real_match_many
    partial = out.with_name(out.name + ".partial")
    with open(partial, "ab") as fh:
        fh.write(b'{"line": 30, "result": [[30, "", 1')  # a line cut short by a kill
    assert not out.exists()
    report = run_batch_file(stocked, src, out, k=4, progress=False)
    assert report.resumed == 16 and report.queries == 35
    assert out.read_bytes() == clean.read_bytes()
    partial.write_text('{"fingerprint": "from another run"}\n')
    with pytest.raises(ValueError, match="other input or arguments"):
        run_batch_file(stocked, src, out, k=4, progress=False)
    assert run_batch_file(stocked, src, out, k=4, progress=False, restart=True).resumed == 0


@pytest.mark.slow
def test_cli_killed_run_continues_with_the_same_arguments(stocked, tmp_path):
    """The real `python -m matcher batch` process, killed with SIGKILL part-way, then run again."""
    src = write_jsonl(tmp_path / "q.jsonl", [{"text": f"{o['description']} Case {i}."} for i in range(12) for o in ORGS])
    out = tmp_path / "out.csv"
    env = {**os.environ, "MATCHER_DATA_DIR": str(stocked.settings.data_dir), "MATCHER_DB_URL": stocked.settings.db_url,
           "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "matcher", "-q", "batch", "--queries", str(src), "--out", str(out), "-k", "5"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = partial.read_bytes().count(b"\n") - 1
    assert 1 <= done_before < 84 and not out.exists()
    finished = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "from an earlier run" in finished.stdout
    rows = read_csv(out)
    assert len(rows) == 84 * 5
    assert len({(r["query_line"], r["rank"]) for r in rows}) == len(rows)  # no duplicate rows
    reference = tmp_path / "reference.csv"
    run_batch_file(stocked, src, reference, k=5, progress=False)
    assert out.read_bytes() == reference.read_bytes()


def test_unknown_file_types_and_broken_xlsx(stocked, tmp_path):
    (tmp_path / "q.txt").write_text("text\nx\n")
    with pytest.raises(ValueError, match="unknown file type"):
        run_batch_file(stocked, tmp_path / "q.txt", tmp_path / "out.csv", progress=False)
    (tmp_path / "q.xlsx").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a readable XLSX"):
        run_batch_file(stocked, tmp_path / "q.xlsx", tmp_path / "out.csv", progress=False)
    write_jsonl(tmp_path / "q.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="unknown file type"):
        run_batch_file(stocked, tmp_path / "q.jsonl", tmp_path / "out.parquet", progress=False)


def test_inline_profiles_without_ids_give_the_same_file_every_run(stocked, tmp_path):
    """An inline challenge or organisation without an id is named by its content: byte-identical output."""
    challenge = {"title": "Quieter night buses", "description": "Electric buses that charge silently at the depot."}
    src = write_jsonl(tmp_path / "q.jsonl", [challenge, QUERIES[4], {**challenge, "description": "Another text."}])
    outputs = [tmp_path / "one.csv", tmp_path / "two.csv"]
    for out in outputs:
        run_batch_file(stocked, src, out, k=2, progress=False, explain=False)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    ids = [r["query_id"] for r in read_csv(outputs[0])[::2]]
    assert ids[0].startswith("ch-") and ids[1].startswith("org-") and ids[2].startswith("ch-") and len(set(ids)) == 3
