"""Brokerage schedules from real files: constraints, malformed rows, outputs, and .ics files checked by parsing."""
import csv
import datetime as dt
import json
import re
from collections import Counter

import pytest
from openpyxl import Workbook, load_workbook

from matcher import cli
from matcher.schedule import build_schedule, read_slots, write_outputs
from matcher.tables_io import read_table
from models.enums import EntityKind
from tests.conftest import ORGS

SLOTS_CSV = """id,start,end,tables,location
s1,2027-03-15T09:00:00+01:00,2027-03-15T09:20:00+01:00,2,"Hall A, Ghent"
s2,2027-03-15T09:30:00+01:00,2027-03-15T09:50:00+01:00,2,"Hall A, Ghent"
s3,2027-03-15T10:00:00+01:00,2027-03-15T10:20:00+01:00,1,"Hall A, Ghent"
bad,2027-03-15T10:30,not a time,1,
"""


def participants_rows():
    rows = [["id", "name", "type", "description", "available", "max_meetings", "requests", "blocked"]]
    rows.append(["voltgrid", "", "", "", "", "3", "tu-tampere;recyclo", ""])
    rows.append(["tu-tampere", "", "", "", "s1;s2", "2", "", ""])
    rows.append(["recyclo", "", "", "", "", "", "", "ghent-energy"])
    rows.append(["ghent-energy", "", "", "", "", "", "voltgrid;recyclo", ""])  # asks for a blocked pair
    rows.append(["aquasense", "", "", "", "", "1", "", ""])
    rows.append(["hydro", "HydroLoop", "startup", "Greywater recycling units, à la carte; for apartment blocks.", "", "", "aquasense", ""])
    rows.append(["lumen", "", "", "", "s7", "", "", ""])           # line 8: unknown slot
    rows.append(["caremind", "", "", "", "", "many", "", ""])     # line 9: not a number
    rows.append(["ghost", "", "", "", "", "", "", ""])            # line 10: not stored, no profile
    rows.append(["odd", "Odd", "wizard", "A profile with a bad type.", "", "", "", ""])  # line 11
    return rows


@pytest.fixture
def event(engine, tmp_path):
    engine.upsert_many(EntityKind.organisations, ORGS)
    (tmp_path / "slots.csv").write_text(SLOTS_CSV)
    with open(tmp_path / "people.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(participants_rows())
    book = Workbook()
    for row in participants_rows():
        book.active.append([c if c != "" else None for c in row])
    book.save(tmp_path / "people.xlsx")
    return engine, tmp_path


def parse_ics(data: bytes) -> list[dict]:
    """A strict reading of what we write (RFC 5545): CRLF lines of at most 75 octets, folding, nesting, required properties."""
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    raw = data.split(b"\r\n")[:-1]
    assert all(len(line) <= 75 for line in raw)
    lines = []
    for line in raw:
        if line.startswith(b" "):
            lines[-1] += line[1:]
        else:
            lines.append(line)
    text = [line.decode("utf-8") for line in lines]
    assert text[0] == "BEGIN:VCALENDAR" and text[-1] == "END:VCALENDAR"
    assert "VERSION:2.0" in text and any(t.startswith("PRODID:") for t in text)
    events, current, stack = [], None, []
    for line in text:
        name, _, value = line.partition(":")
        assert re.fullmatch(r"[A-Z][A-Z-]*", name), line
        if name == "BEGIN":
            stack.append(value)
            if value == "VEVENT":
                current = {}
        elif name == "END":
            assert stack.pop() == value
            if value == "VEVENT":
                assert {"UID", "DTSTAMP", "DTSTART", "DTEND", "SUMMARY"} <= set(current), current
                events.append(current)
        elif current is not None:
            assert not re.search(r"(?<!\\)[;,]", value), f"unescaped text: {line}"
            current[name] = value.replace("\\,", ",").replace("\\;", ";").replace("\\n", "\n").replace("\\\\", "\\")
    assert not stack
    for e in events:
        start, end = (dt.datetime.strptime(e[k], "%Y%m%dT%H%M%SZ") for k in ("DTSTART", "DTEND"))
        assert end > start
    return events


@pytest.mark.parametrize("people", ["people.csv", "people.xlsx"])
def test_schedule_from_real_files(event, people):
    engine, tmp = event
    schedule = build_schedule(engine, list(read_table(tmp / people)), list(read_table(tmp / "slots.csv")))
    problems = [str(e) for e in schedule.errors]
    assert any(p.startswith("line 5: slots file: end:") for p in problems)
    for line, word in ((8, "available: unknown slot 's7'"), (9, "max_meetings"), (10, "no stored organisation 'ghost'"), (11, "type")):
        assert any(p.startswith(f"line {line}:") and word in p for p in problems), problems
    ids = {p.id for p in schedule.participants}
    assert ids == {"voltgrid", "tu-tampere", "recyclo", "ghent-energy", "aquasense", "hydro"}

    meetings = schedule.meetings
    per_slot = Counter(m.slot for m in meetings)
    assert per_slot["s1"] <= 2 and per_slot["s2"] <= 2 and per_slot["s3"] <= 1  # tables
    busy = Counter((p, m.slot) for m in meetings for p in (m.a, m.b))
    assert max(busy.values()) == 1  # nobody in two meetings at once
    load = Counter(p for m in meetings for p in (m.a, m.b))
    assert load["voltgrid"] <= 3 and load["tu-tampere"] <= 2 and load["aquasense"] <= 1
    assert all(m.slot in ("s1", "s2") for m in meetings if "tu-tampere" in (m.a, m.b))  # availability
    pairs = {frozenset((m.a, m.b)) for m in meetings}
    assert frozenset(("recyclo", "ghent-energy")) not in pairs  # blocked, though requested by the other side
    assert len({frozenset((m.a, m.b)) for m in meetings}) == len(meetings)  # each pair meets once
    assert schedule.summary()["requested_pairs"] == 4
    assert schedule.unplaced_requests == [] and schedule.summary()["requested_placed"] == 4
    assert all(m.requested_by for m in meetings if frozenset((m.a, m.b)) == frozenset(("voltgrid", "tu-tampere")))


def test_slots_with_and_without_an_offset_do_not_mix():
    rows = [(2, {"id": "s1", "start": "2027-03-15T09:00+01:00", "end": "2027-03-15T09:20+01:00"}),
            (3, {"id": "s2", "start": "2027-03-15T09:30", "end": "2027-03-15T09:50"})]
    slots, errors = read_slots(rows)
    assert [s.id for s in slots] == ["s1"]
    assert [str(e) for e in errors] == ["line 3: start: without an offset, unlike line 2: give every slot an offset, or none"]


def test_outputs_agendas_and_calendars(event):
    engine, tmp = event
    schedule = build_schedule(engine, list(read_table(tmp / "people.csv")), list(read_table(tmp / "slots.csv")))
    out = tmp / "out"
    summary = write_outputs(schedule, out, stamp=dt.datetime(2027, 3, 1, tzinfo=dt.UTC))
    with open(out / "schedule.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(schedule.meetings) == summary["meetings"]
    xlsx = list(load_workbook(out / "schedule.xlsx").active.iter_rows(values_only=True))
    assert len(xlsx) == len(rows) + 1 and xlsx[1][0] == rows[0]["slot"]
    assert json.loads((out / "summary.json").read_text())["requested_placed"] == 4
    for p in schedule.participants:
        agenda = (out / "agendas" / f"{p.id}.md").read_text()
        events = parse_ics((out / "calendars" / f"{p.id}.ics").read_bytes())
        mine = [m for m in schedule.meetings if p.id in (m.a, m.b)]
        assert len(events) == len(mine) and agenda.count("\n- ") == len(mine)
        for e in events:
            assert e["SUMMARY"].startswith("Meeting with ") and e["LOCATION"].endswith("Hall A, Ghent")
            assert e["DTSTART"].endswith("Z") and e["DTSTART"][9:13] in ("0800", "0830", "0900")  # 09:00+01:00 in UTC
    hydro = parse_ics((out / "calendars" / "hydro.ics").read_bytes())
    assert hydro and "HydroLoop" in (out / "calendars" / "aquasense.ics").read_bytes().decode()


def test_cli_schedule(event, monkeypatch, capsys):
    engine, tmp = event
    monkeypatch.setenv("MATCHER_DATA_DIR", str(engine.settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", engine.settings.db_url)
    assert cli.main(["schedule", "--participants", str(tmp / "people.xlsx"), "--slots", str(tmp / "slots.csv"),
                     "--out", str(tmp / "cli")]) == 0
    captured = capsys.readouterr()
    assert "requested meetings placed: 4 of 4" in captured.out and "line 9: max_meetings" in captured.err
    (tmp / "empty.csv").write_text("id,start,end\n")
    assert cli.main(["schedule", "--participants", str(tmp / "people.csv"), "--slots", str(tmp / "empty.csv"),
                     "--out", str(tmp / "x")]) == 2
    assert "at least one valid slot" in capsys.readouterr().err
