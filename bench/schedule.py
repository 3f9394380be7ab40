"""A realistic brokerage event: 200 real CORDIS organisations, 12 slots of 20 minutes, scheduled end to end.

    .venv/bin/python bench/schedule.py                    # 200 participants, 12 slots, 60 tables
    .venv/bin/python bench/schedule.py --participants 100 --slots 8

Participants are a seeded sample of ``pool.jsonl.gz`` given as profiles (so they are embedded as part of
the run, as for an event whose participants are not stored). Like a real event: 70% stay all day, 15% only
the morning, 15% only the afternoon; each takes 4 to 10 meetings; each requests 3 of its 15 best-scoring
counterparts and 1 at random; 1% of pairs are blocked. Files are written to bench/out/schedule/ and the
figures printed: requested meetings placed, meetings, mean score, and the time of each step.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(os.environ.get("MATCHER_BENCH_DATA", ROOT.parent / "shared" / "data" / "cordis" / "bench"))
OUT = ROOT / "bench" / "out" / "schedule"
ORG_FIELDS = ("id", "name", "type", "country", "city", "description")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--tables", type=int, default=60)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()

    from matcher.engine import Engine
    from matcher.schedule import build_schedule, mutual_scores, read_participants, write_outputs
    from matcher.settings import Settings
    from matcher.tables_io import read_table, write_table

    rng = random.Random(args.seed)
    with gzip.open(DATA / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh]
    people = [{k: o[k] for k in ORG_FIELDS if o.get(k) not in (None, "")} for o in rng.sample(pool, args.participants)]
    start = dt.datetime(2027, 3, 15, 9, 0)
    slot_rows = []
    for i in range(args.slots):
        begin = start + dt.timedelta(minutes=30 * i + (60 if i >= args.slots // 2 else 0))  # a lunch break
        slot_rows.append([f"s{i + 1:02d}", begin.isoformat(), (begin + dt.timedelta(minutes=20)).isoformat(), args.tables, "Hall B"])
    morning = [r[0] for r in slot_rows[: args.slots // 2]]
    afternoon = [r[0] for r in slot_rows[args.slots // 2 :]]

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(Settings.from_env(data_dir=Path(tmp), load_demo=False)).open()
        engine.load_indexes()
        OUT.mkdir(parents=True, exist_ok=True)
        write_table(OUT / "slots.csv", ["id", "start", "end", "tables", "location"], slot_rows)
        # Requests come from what each participant would see: its 15 best-scoring counterparts.
        plain = [(i + 2, {**p}) for i, p in enumerate(people)]
        parts, _ = read_participants(plain, engine.store, {r[0] for r in slot_rows})
        t = time.perf_counter()
        preview = mutual_scores(engine, parts)
        preview_s = time.perf_counter() - t
        ids = [p["id"] for p in people]
        rows = []
        for i, p in enumerate(people):
            best = [ids[j] for j in preview[i].argsort()[::-1][:15]]
            requests = rng.sample(best, 3) + [rng.choice(ids)]
            requests = [r for r in dict.fromkeys(requests) if r != p["id"]]
            blocked = [ids[j] for j in range(len(ids)) if j != i and rng.random() < 0.005]
            roll = rng.random()
            available = morning if roll < 0.15 else afternoon if roll < 0.30 else []
            rows.append([p["id"], p["name"], p["type"], p.get("country", ""), p.get("city", ""), p["description"],
                         ";".join(available), rng.randint(4, 10), ";".join(requests), ";".join(blocked)])
        write_table(OUT / "participants.csv", ["id", "name", "type", "country", "city", "description", "available",
                                               "max_meetings", "requests", "blocked"], rows)

        t = time.perf_counter()
        schedule = build_schedule(engine, list(read_table(OUT / "participants.csv")), list(read_table(OUT / "slots.csv")))
        summary = write_outputs(schedule, OUT / "result")
        total = time.perf_counter() - t
    wanted = sum(int(r[7]) for r in rows) // 2
    # An upper bound on requested meetings placed, from the maximums alone: each participant takes at most
    # max_meetings of the requested pairs it is in (half the sum, since each pair has two sides).
    degree = {p.id: 0 for p in schedule.participants}
    for a, b in schedule.requested_pairs:
        degree[a] += 1
        degree[b] += 1
    cap = {p.id: p.max_meetings if p.max_meetings is not None else len(schedule.slots) for p in schedule.participants}
    bound = sum(min(cap[i], degree[i]) for i in degree) // 2
    print(f"participants {summary['participants']}, slots {summary['slots']} x {args.tables} tables")
    print(f"requested pairs {summary['requested_pairs']}, placed {summary['requested_placed']} "
          f"({summary['requested_placed'] / max(1, summary['requested_pairs']):.1%}); at most {bound} can be, "
          f"given each participant's maximum number of meetings")
    print(f"meetings {summary['meetings']} (at most about {wanted} by the participants' maximums), mean mutual score {summary['mean_score']}")
    print(f"time: read + validate {summary['seconds']['read']:.2f} s, scores (embedding {len(rows)} profiles + needs) "
          f"{summary['seconds']['scores']:.2f} s, assignment {summary['seconds']['assignment']:.3f} s; "
          f"end to end with writing every file {total:.2f} s (the request preview took {preview_s:.2f} s)")
    print(f"files in {OUT / 'result'}: schedule.csv, schedule.xlsx, agendas/ and calendars/ ({len(rows)} each), summary.json")
    if summary["problems"]:
        print(f"{len(summary['problems'])} input problems, e.g. {summary['problems'][0]}")


if __name__ == "__main__":
    main()
