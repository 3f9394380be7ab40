"""The events page: upload the participants and slots of a brokerage event, build its schedule of 1:1 meetings,
see it as a grid (slots x tables) and per participant, and download the agendas and calendars as one zip.

The files are those of ``python -m matcher schedule`` (matcher/schedule.py), read the same way; rows that cannot
be used are listed with their line and file. Nothing is stored: the schedule page carries the rows it was built
from (a hidden field, as JSON), and the download builds the same schedule again from them (the schedule is
deterministic) and zips ``write_outputs``' files: schedule.csv and .xlsx, agendas/*.md, calendars/*.ics and
summary.json.
"""
from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from flask import render_template, request

from matcher.records import RecordError
from matcher.schedule import Schedule, build_schedule, read_participants, read_slots, write_outputs
from service.api import engine
from service.console import bp
from service.console.errors import ConsoleError
from service.console.files import ACCEPT, Rows, read_upload, send_folder_zip
from service.console.session import needs

FILES = ("participants", "slots")
SLOTS_PREFIX = "slots file: "  # how build_schedule marks the problems of the slots file


def _rows_json(files: dict[str, Rows]) -> str:
    """The rows a schedule was built from, for the download form: [line, record] or [line, null, problem]."""
    return json.dumps({name: [[line, None, r.problem] if isinstance(r, RecordError) else [line, r] for line, r in rows]
                       for name, rows in files.items()}, ensure_ascii=False, separators=(",", ":"))


def _rows_of(text: str) -> dict[str, Rows]:
    """The download form's rows back, checked for their shape (their content is checked as a file's is)."""
    try:
        data = json.loads(text)
        return {name: [(int(row[0]), RecordError(int(row[0]), str(row[2])) if row[1] is None else dict(row[1]))
                       for row in data[name]] for name in FILES}
    except (ValueError, TypeError, KeyError, IndexError):
        raise ConsoleError(400, "This download cannot be made", "The schedule's rows did not come back whole. "
                           "Build the schedule again from its files.") from None


def _problems(files: dict[str, Rows], errors: dict[str, str]) -> None:
    """Why no schedule could be built: each file's problems beside its input (read again, as build_schedule does)."""
    slots, slot_errors = read_slots(files["slots"])
    people, people_errors = read_participants(files["participants"], engine().store, {s.id for s in slots})
    for name, ok, need, found in (("slots", bool(slots), "at least one valid slot", slot_errors),
                                  ("participants", len(people) >= 2, "at least two valid participants", people_errors)):
        if not ok:
            errors[name] = f"needs {need}" + "".join(f"; line {e.line}: {e.problem}" for e in found[:20])


def _view(schedule: Schedule) -> dict:
    """What the page shows: the grid (a row per slot, a cell per table in use) and each participant's meetings."""
    people = {p.id: p for p in schedule.participants}
    by_slot: dict[str, list] = {s.id: [] for s in schedule.slots}
    mine: dict[str, list] = {p.id: [] for p in schedule.participants}
    slots = {s.id: s for s in schedule.slots}
    for m in schedule.meetings:
        by_slot[m.slot].append(m)
        for me, other in ((m.a, m.b), (m.b, m.a)):
            mine[me].append({"slot": slots[m.slot], "table": m.table, "with": people[other], "score": m.score,
                             "asked": "you" if me in m.requested_by else ("them" if m.requested_by else None)})
    columns = max([len(ms) for ms in by_slot.values()] + [1])
    grid = [(s, [next((m for m in by_slot[s.id] if m.table == t), None) for t in range(1, columns + 1)])
            for s in schedule.slots]
    unplaced = {}
    for a, b in schedule.unplaced_requests:
        unplaced.setdefault(a, []).append(people[b])
        unplaced.setdefault(b, []).append(people[a])
    agendas = sorted(((p, mine[p.id], unplaced.get(p.id, [])) for p in schedule.participants),
                     key=lambda x: x[0].name.lower())
    bad = {"slots": [], "participants": []}
    for e in schedule.errors:
        slot_row = e.problem.startswith(SLOTS_PREFIX)
        bad["slots" if slot_row else "participants"].append(
            {"line": e.line, "field": "", "problem": e.problem.removeprefix(SLOTS_PREFIX)})
    return {"people": people, "columns": columns, "grid": grid, "agendas": agendas, "bad": bad,
            "summary": schedule.summary()}


def when(start: dt.datetime, end: dt.datetime) -> str:
    """A slot's time as a person reads it: 2027-03-15 09:00–09:20 (+01:00 when the file gave an offset)."""
    offset = f" (UTC{start.isoformat()[-6:]})" if start.tzinfo else ""
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M}{offset}"


@bp.route("/events", methods=["GET", "POST"])
@needs("match")
def events():
    """The upload form; a POST builds the schedule and shows it under the form."""
    errors: dict[str, str] = {}
    view = rows_json = None
    if request.method == "POST":
        files = {name: read_upload(name, errors) for name in FILES}
        if not errors:
            try:
                schedule = build_schedule(engine(), files["participants"], files["slots"])
            except ValueError:
                _problems(files, errors)
            else:
                view, rows_json = _view(schedule), _rows_json(files)
    return render_template("console/events.html", errors=errors, view=view, rows_json=rows_json, accept=ACCEPT,
                           when=when), 400 if errors else 200


@bp.post("/events/schedule.zip")
@needs("match")
def events_zip():
    """The schedule built again from the rows its page carries, as one zip of its files."""
    files = _rows_of(request.form.get("rows", ""))
    try:
        schedule = build_schedule(engine(), files["participants"], files["slots"])
    except ValueError:
        raise ConsoleError(400, "This schedule cannot be built any more", "Its participants or slots are no longer "
                           "valid (an organisation was deleted meanwhile?). Build it again from its files.") from None
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(schedule, Path(tmp))
        return send_folder_zip(Path(tmp), f"brokerage-schedule-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}")
