"""Brokerage-event schedules: 1:1 meetings between participants, placed in time slots and at tables.

Participants (a CSV, JSONL or XLSX file): ``id`` of a stored organisation, or an organisation profile with an
``id``; optional ``available`` (slot ids, ";"-separated in CSV/XLSX; empty = every slot), ``max_meetings``
(default: every slot), ``requests`` (ids this participant asks to meet) and ``blocked`` (ids it will not meet).
Slots: ``id``, ``start``, ``end`` (ISO date-times; with an offset they are written in UTC), ``tables``
(meetings at once, default 10) and optional ``location``.

**Scores.** Each direction is scored with the engine's vectors: A -> B is how well B's profile fits what
A seeks (A's needs when it states them, else A's whole profile). Both must fit, so the pair's **mutual fit**
is the geometric mean of the two directions (clipped at 0): a similarity of profiles, not the match score of
the API (a calibrated chance, with its bands in words), so agendas call it "mutual fit" and never "match". A
pair's value is its mutual fit plus REQUESTED for each side that asked for it, so a requested meeting always
outranks an unrequested one. Blocked pairs (either side) are never scheduled.

**Assignment.** Pairs are taken by value, best first (ties by ids, so the schedule is deterministic); each
goes to the first slot where both are available and free, a table is left and neither has reached its
maximum. Then each requested pair still unplaced is retried: in a slot that suits both, the meetings that
keep either of them busy move to another slot that suits both of their parties (a move never unplaces one).
A participant's own requests come before the requests others make of it: while its own are still to be
placed, a request from someone else takes only the meetings its maximum leaves beyond them. Those held back
are placed afterwards, in whatever its own requests did not use.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matcher.records import RecordError
from matcher.text import entity_text
from models.enums import EntityKind
from models.schemas import ID_PATTERN, InvalidInput, validate_entity

REQUESTED = 1.0
DEFAULT_TABLES = 10
PARTICIPANT_LISTS = ("available", "requests", "blocked")


@dataclass
class Participant:
    id: str
    name: str
    doc: dict
    available: set[str] | None
    max_meetings: int | None
    requests: list[str]
    blocked: list[str]
    line: int


@dataclass
class Slot:
    id: str
    start: dt.datetime
    end: dt.datetime
    tables: int
    location: str | None
    line: int


@dataclass
class Meeting:
    slot: str
    table: int
    a: str
    b: str
    score: float
    requested_by: list[str]


@dataclass
class Schedule:
    participants: list[Participant]
    slots: list[Slot]
    meetings: list[Meeting]
    requested_pairs: list[tuple[str, str]]
    unplaced_requests: list[tuple[str, str]]
    errors: list[RecordError] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        placed = len(self.requested_pairs) - len(self.unplaced_requests)
        return {
            "participants": len(self.participants),
            "slots": len(self.slots),
            "meetings": len(self.meetings),
            "requested_pairs": len(self.requested_pairs),
            "requested_placed": placed,
            "requested_unplaced": [list(p) for p in self.unplaced_requests],
            "total_score": round(sum(m.score for m in self.meetings), 4),
            "mean_score": round(sum(m.score for m in self.meetings) / len(self.meetings), 4) if self.meetings else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "problems": [str(e) for e in self.errors],
        }


def _list(value) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError("must be a list (or ';'-separated ids)")


def _int(value, name: str, low: int) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}: must be a whole number") from None
    if number < low:
        raise ValueError(f"{name}: must be at least {low}")
    return number


def read_slots(records) -> tuple[list[Slot], list[RecordError]]:
    slots, errors, seen = [], [], {}
    for line, rec in records:
        if isinstance(rec, RecordError):
            errors.append(rec)
            continue
        try:
            slot_id = str(rec.get("id") or "").strip()
            if not slot_id:
                raise ValueError("id: missing")
            if slot_id in seen:
                raise ValueError(f"id: '{slot_id}' repeats line {seen[slot_id]}")
            times = {}
            for key in ("start", "end"):
                try:
                    times[key] = dt.datetime.fromisoformat(str(rec.get(key) or "").strip())
                except ValueError:
                    raise ValueError(f"{key}: not an ISO date-time such as 2027-03-15T09:00") from None
            if (times["start"].tzinfo is None) != (times["end"].tzinfo is None) or times["end"] <= times["start"]:
                raise ValueError("end: must be after start (and both with or both without an offset)")
            if slots and (times["start"].tzinfo is None) != (slots[0].start.tzinfo is None):
                raise ValueError(f"start: {'without' if times['start'].tzinfo is None else 'with'} an offset, unlike "
                                 f"line {slots[0].line}: give every slot an offset, or none")
            tables = _int(rec.get("tables"), "tables", 1) or DEFAULT_TABLES
        except ValueError as exc:
            errors.append(RecordError(line, str(exc)))
            continue
        seen[slot_id] = line
        slots.append(Slot(slot_id, times["start"], times["end"], tables, rec.get("location"), line))
    slots.sort(key=lambda s: (s.start, s.id))
    return slots, errors


def read_participants(records, store, slot_ids: set[str]) -> tuple[list[Participant], list[RecordError]]:
    """Participants with their stored or validated profile; a bad row is reported with its line and skipped."""
    rows, errors = [], []
    for line, rec in records:
        if isinstance(rec, RecordError):
            errors.append(rec)
            continue
        rows.append((line, rec))
    stored_ids = [str(r.get("id")) for _, r in rows if r.get("id") and not r.get("description")]
    stored = store.get_many(EntityKind.organisations, stored_ids)
    out, seen = [], {}
    for line, rec in rows:
        extra = {k: rec[k] for k in ("available", "max_meetings", "requests", "blocked") if k in rec}
        profile = {k: v for k, v in rec.items() if k not in extra}
        try:
            pid = str(profile.get("id") or "").strip()
            if not pid or not re.match(ID_PATTERN, pid):
                raise ValueError("id: missing or not a valid id")
            if pid in seen:
                raise ValueError(f"id: '{pid}' repeats line {seen[pid]}")
            if profile.get("description"):
                doc = validate_entity(EntityKind.organisations, profile, strict=False)
            elif pid in stored:
                doc = stored[pid]
            else:
                raise ValueError(f"id: no stored organisation '{pid}' (or give a profile: name, type, description)")
            lists = {}
            for key in PARTICIPANT_LISTS:
                try:
                    lists[key] = _list(extra.get(key))
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
            unknown = [s for s in lists["available"] if s not in slot_ids]
            if unknown:
                raise ValueError(f"available: unknown slot '{unknown[0]}'")
            max_meetings = _int(extra.get("max_meetings"), "max_meetings", 0)
        except InvalidInput as exc:
            errors.extend(RecordError(line, f"{d['field']}: {d['problem']}") for d in exc.details)
            continue
        except ValueError as exc:
            errors.append(RecordError(line, str(exc)))
            continue
        seen[pid] = line
        out.append(Participant(pid, doc["name"], doc, set(lists["available"]) or None, max_meetings,
                               lists["requests"], lists["blocked"], line))
    ids = {p.id for p in out}
    for p in out:
        for key in ("requests", "blocked"):
            for other in getattr(p, key):
                if other not in ids:
                    errors.append(RecordError(p.line, f"{key}: '{other}' is not a participant (ignored)"))
        p.requests = [o for o in p.requests if o in ids and o != p.id]
        p.blocked = [o for o in p.blocked if o in ids]
    errors.sort(key=lambda e: e.line)
    return out, errors


def mutual_scores(engine, participants: list[Participant]) -> np.ndarray:
    """(n, n) mutual scores: the geometric mean of both directions, each 'what A seeks' against 'B's profile'."""
    index = engine.indexes[EntityKind.organisations]
    profiles, to_encode = [None] * len(participants), []
    for i, p in enumerate(participants):
        num = index.num_of.get(p.id)
        stored_same = num is not None and "created_at" in p.doc
        if stored_same:
            profiles[i] = index.vector(num)
        else:
            to_encode.append(i)
    if to_encode:
        vectors = engine.encoder.encode([entity_text(EntityKind.organisations, participants[i].doc) for i in to_encode])
        for i, v in zip(to_encode, vectors):
            profiles[i] = v
    profile_matrix = np.vstack(profiles).astype(np.float32)
    seeks = profile_matrix.copy()
    with_needs = [i for i, p in enumerate(participants) if p.doc.get("needs")]
    if with_needs:
        needs = engine.encoder.encode(["Needs: " + "; ".join(participants[i].doc["needs"]) + "." for i in with_needs])
        seeks[with_needs] = needs
    directed = np.clip(seeks @ profile_matrix.T, 0, None)  # [a, b]: how well b fits what a seeks
    mutual = np.sqrt(directed * directed.T)
    np.fill_diagonal(mutual, 0.0)
    return mutual


def assign(participants: list[Participant], slots: list[Slot], mutual: np.ndarray) -> tuple[list[Meeting], list, list]:
    """Greedy by value, then a repair pass for requested pairs; returns (meetings, requested, unplaced)."""
    n = len(participants)
    ids = [p.id for p in participants]
    pos = {pid: i for i, pid in enumerate(ids)}
    slot_ids = [s.id for s in slots]
    requested_by: dict[tuple[int, int], list[str]] = {}
    for p in participants:
        for other in p.requests:
            key = tuple(sorted((pos[p.id], pos[other])))
            requested_by.setdefault(key, [])
            if p.id not in requested_by[key]:
                requested_by[key].append(p.id)
    blocked = {tuple(sorted((pos[p.id], pos[o]))) for p in participants for o in p.blocked}
    avail = np.array([[p.available is None or s in p.available for s in slot_ids] for p in participants], bool)
    cap = [len(slot_ids) if p.max_meetings is None else p.max_meetings for p in participants]
    busy = np.full((n, len(slot_ids)), -1, np.int64)  # meeting index per (participant, slot)
    count = [0] * n
    tables_left = [s.tables for s in slots]
    meetings: list[list] = []  # [slot index, a, b, value], None once moved away

    value = mutual.copy()
    for (a, b), who in requested_by.items():
        value[a, b] = value[b, a] = mutual[a, b] + REQUESTED * len(who)
    a_idx, b_idx = np.triu_indices(n, k=1)
    order = np.lexsort((b_idx, a_idx, -value[a_idx, b_idx]))

    def free_slot(a, b):
        both = avail[a] & avail[b] & (busy[a] < 0) & (busy[b] < 0)
        for s in np.flatnonzero(both):
            if tables_left[s] > 0:
                return int(s)
        return None

    own = {i: [key for key, who in requested_by.items() if ids[i] in who and key not in blocked] for i in range(n)}

    def room(x, key, reserve):
        """Whether x may take the meeting ``key``; with ``reserve``, a meeting x did not ask for leaves free
        the seats that x's own requests, not yet placed, still need."""
        left = cap[x] - count[x]
        if reserve and ids[x] not in requested_by.get(key, ()):
            left -= sum(1 for k in own[x] if k not in placed_pairs)
        return left > 0

    placed_pairs: set[tuple[int, int]] = set()

    def place(s, a, b):
        placed_pairs.add((min(a, b), max(a, b)))
        busy[a, s] = busy[b, s] = len(meetings)
        meetings.append([s, a, b])
        count[a] += 1
        count[b] += 1
        tables_left[s] -= 1

    # Repair: a requested pair that found no common free slot moves the meetings that block it elsewhere.
    def repair(reserve=False):
        placed = set(placed_pairs)
        for (a, b) in sorted(requested_by):
            if (a, b) in placed or (a, b) in blocked or not (room(a, (a, b), reserve) and room(b, (a, b), reserve)):
                continue
            for s in np.flatnonzero(avail[a] & avail[b]):
                if tables_left[s] <= 0 and busy[a, s] < 0 and busy[b, s] < 0:
                    continue
                blockers = [int(busy[x, s]) for x in (a, b) if busy[x, s] >= 0]
                moves = []
                for m in blockers:  # each blocking meeting needs another slot that suits both its parties
                    _, x, y = meetings[m]
                    options = [t for t in np.flatnonzero(avail[x] & avail[y] & (busy[x] < 0) & (busy[y] < 0))
                               if t != s and tables_left[t] - sum(1 for _, u in moves if u == t) > 0]
                    if not options:
                        break
                    moves.append((m, int(options[0])))
                if len(moves) < len(blockers):
                    continue
                for m, t in moves:
                    old, x, y = meetings[m]
                    busy[x, old] = busy[y, old] = -1
                    tables_left[old] += 1
                    busy[x, t] = busy[y, t] = m
                    meetings[m][0] = t
                    tables_left[t] -= 1
                if tables_left[s] > 0:
                    place(int(s), a, b)
                    placed.add((a, b))
                    break
        return placed

    def greedy(pairs, reserve=False):
        for k in pairs:
            a, b = int(a_idx[k]), int(b_idx[k])
            if (a, b) in blocked or (a, b) in placed_pairs or value[a, b] <= 0 \
                    or not (room(a, (a, b), reserve) and room(b, (a, b), reserve)):
                continue
            s = free_slot(a, b)
            if s is not None:
                place(s, a, b)

    is_requested = np.array([(int(a_idx[k]), int(b_idx[k])) in requested_by for k in order], bool)
    greedy(order[is_requested], reserve=True)  # each participant's own requests before others' requests of it
    repair(reserve=True)
    greedy(order[is_requested])  # then others' requests, in the meetings that its own left
    placed = repair()
    greedy(order[~is_requested])

    by_slot: dict[int, int] = {}
    out = []
    for s, a, b in sorted(meetings, key=lambda m: (m[0], -mutual[m[1], m[2]], ids[m[1]], ids[m[2]])):
        by_slot[s] = by_slot.get(s, 0) + 1
        key = (min(a, b), max(a, b))
        out.append(Meeting(slot_ids[s], by_slot[s], ids[a], ids[b], round(float(mutual[a, b]), 4), requested_by.get(key, [])))
    requested = [(ids[a], ids[b]) for a, b in sorted(requested_by) if (a, b) not in blocked]
    unplaced = [(ids[a], ids[b]) for a, b in sorted(requested_by) if (a, b) not in placed and (a, b) not in blocked]
    return out, requested, unplaced


def build_schedule(engine, participants_records, slots_records) -> Schedule:
    started = time.perf_counter()
    slots, slot_errors = read_slots(slots_records)
    engine.ensure_ready()
    participants, errors = read_participants(participants_records, engine.store, {s.id for s in slots})
    read_s = time.perf_counter() - started
    if not slots or len(participants) < 2:
        raise ValueError("need at least one valid slot and two valid participants"
                         + "".join(f"\n  slots {e}" for e in slot_errors) + "".join(f"\n  participants {e}" for e in errors))
    t = time.perf_counter()
    mutual = mutual_scores(engine, participants)
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    meetings, requested, unplaced = assign(participants, slots, mutual)
    assign_s = time.perf_counter() - t
    problems = [RecordError(e.line, f"slots file: {e.problem}") for e in slot_errors] + errors
    return Schedule(participants, slots, meetings, requested, unplaced, problems,
                    {"read": read_s, "scores": score_s, "assignment": assign_s})


# --- output ---------------------------------------------------------------------------------------

SCHEDULE_COLUMNS = ["slot", "start", "end", "table", "location", "participant_a", "name_a", "participant_b", "name_b",
                    "score", "requested_by"]


def _file_name(pid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", pid)


def write_outputs(schedule: Schedule, out_dir: str | Path, stamp: dt.datetime | None = None) -> dict:
    """schedule.csv, schedule.xlsx, agendas/<id>.md, calendars/<id>.ics and summary.json in out_dir."""
    from matcher.tables_io import write_table

    out = Path(out_dir)
    (out / "agendas").mkdir(parents=True, exist_ok=True)
    (out / "calendars").mkdir(parents=True, exist_ok=True)
    slots = {s.id: s for s in schedule.slots}
    people = {p.id: p for p in schedule.participants}
    rows = []
    for m in schedule.meetings:
        s = slots[m.slot]
        rows.append([m.slot, s.start.isoformat(), s.end.isoformat(), m.table, s.location or "", m.a, people[m.a].name,
                     m.b, people[m.b].name, m.score, ";".join(m.requested_by)])
    write_table(out / "schedule.csv", SCHEDULE_COLUMNS, rows)
    write_table(out / "schedule.xlsx", SCHEDULE_COLUMNS, rows)
    stamp = stamp or dt.datetime.now(dt.UTC)
    per_person: dict[str, list[Meeting]] = {p.id: [] for p in schedule.participants}
    for m in schedule.meetings:
        per_person[m.a].append(m)
        per_person[m.b].append(m)
    for pid, mine in per_person.items():
        me = people[pid]
        lines = [f"# Agenda: {me.name} ({pid})", ""]
        if not mine:
            lines.append("No meetings were scheduled.")
        for m in mine:
            other = people[m.b if m.a == pid else m.a]
            s = slots[m.slot]
            asked = " (requested by you)" if pid in m.requested_by else (" (requested by them)" if m.requested_by else "")
            where = f"table {m.table}" + (f", {s.location}" if s.location else "")
            lines.append(f"- {s.start:%Y-%m-%d %H:%M}-{s.end:%H:%M}, {where}: {other.name} ({other.doc['type'].replace('_', ' ')}"
                         f"{', ' + other.doc['country'] if other.doc.get('country') else ''}), mutual fit {m.score:.2f}{asked}")
        wanted = [o for o in me.requests if not any(pid in (m.a, m.b) and o in (m.a, m.b) for m in mine)]
        if wanted:
            lines += ["", "Requested but not scheduled: " + ", ".join(people[o].name for o in wanted)]
        (out / "agendas" / f"{_file_name(pid)}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / "calendars" / f"{_file_name(pid)}.ics").write_bytes(ics_calendar(me, mine, slots, people, stamp))
    summary = schedule.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


# --- iCalendar (RFC 5545), hand-written ---------------------------------------------------------

def _ics_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\r\n", "\\n").replace("\n", "\\n")


def _ics_time(value: dt.datetime) -> str:
    if value.tzinfo is None:  # floating local time, as the slots file gives it
        return value.strftime("%Y%m%dT%H%M%S")
    return value.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _fold(line: str) -> bytes:
    """A content line folded at 75 octets (never inside a UTF-8 character), with CRLF."""
    data = line.encode("utf-8")
    parts, start, limit = [], 0, 75
    while len(data) - start > limit:
        end = start + limit
        while end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        parts.append(data[start:end])
        start, limit = end, 74  # continuation lines begin with a space
    parts.append(data[start:])
    return b"\r\n ".join(parts) + b"\r\n"


def ics_calendar(me: Participant, meetings: list[Meeting], slots: dict, people: dict, stamp: dt.datetime) -> bytes:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//partner-matching//brokerage schedule//EN",
             "CALSCALE:GREGORIAN", "METHOD:PUBLISH", f"X-WR-CALNAME:{_ics_text('Meetings: ' + me.name)}"]
    for m in meetings:
        other = people[m.b if m.a == me.id else m.a]
        s = slots[m.slot]
        where = f"Table {m.table}" + (f", {s.location}" if s.location else "")
        lines += [
            "BEGIN:VEVENT",
            f"UID:{_file_name(m.slot)}-{_file_name(m.a)}-{_file_name(m.b)}@partner-matching",
            f"DTSTAMP:{stamp.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}",
            f"DTSTART:{_ics_time(s.start)}",
            f"DTEND:{_ics_time(s.end)}",
            f"SUMMARY:{_ics_text('Meeting with ' + other.name)}",
            f"LOCATION:{_ics_text(where)}",
            f"DESCRIPTION:{_ics_text(f'{other.name} ({other.id}); mutual fit {m.score:.2f}.')}",
            "END:VEVENT",
        ]
    lines.append("END:VCALENDAR")
    return b"".join(_fold(line) for line in lines)
