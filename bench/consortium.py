"""Consortium builder against real Horizon Europe consortia.

    .venv/bin/python bench/consortium.py                 # 40 queries, their real partners + 1,500 distractors
    .venv/bin/python bench/consortium.py --queries 20 --distractors 500

For each of N call topics of ``dev_queries.jsonl.gz`` (seeded sample among topics with 3 to 30 real
partners in the pool) the real consortium is ``relevant``: the pool organisations funded under that topic.
With n = the real consortium's size, we count how many real partners are among
  - the top-n list of ``Engine.match`` for the call text (title + description), and
  - the first consortium of size n that ``matcher.consortium.build`` proposes (no type constraints), and
  - the same with the required types that the real consortium has (at least one of each of its types).
The store is a subset of the pool (the union of the N topics' real partners plus random distractors),
embedded once and cached in bench/out/consortium/ (gitignored), so reruns take a minute.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(os.environ.get("MATCHER_BENCH_DATA", ROOT.parent / "shared" / "data" / "cordis" / "bench"))
OUT = ROOT / "bench" / "out" / "consortium"
ORG_FIELDS = ("id", "name", "type", "country", "city", "description", "past_projects")


def select(args):
    from matcher.evaluation import read_jsonl

    rng = random.Random(args.seed)
    pool = {row["id"]: row for row in read_jsonl(DATA / "pool.jsonl.gz")}
    topics = [q for q in read_jsonl(DATA / "dev_queries.jsonl.gz") if 3 <= len([r for r in q["relevant"] if r in pool]) <= 30]
    topics = sorted(rng.sample(topics, min(args.queries, len(topics))), key=lambda q: q["id"])
    wanted = sorted({r for q in topics for r in q["relevant"] if r in pool})
    others = sorted(set(pool) - set(wanted))
    wanted += rng.sample(others, min(args.distractors, len(others)))
    return topics, [{k: pool[i][k] for k in ORG_FIELDS if pool[i].get(k) not in (None, "")} for i in sorted(wanted)]


def open_engine(orgs: list[dict]):
    from matcher.engine import Engine
    from matcher.settings import Settings
    from models.enums import EntityKind

    OUT.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(data_dir=OUT, load_demo=False, bulk_torch_threads=0)
    engine = Engine(settings).open()
    have = engine.store.existing_ids(EntityKind.organisations, [o["id"] for o in orgs])
    todo = [o for o in orgs if o["id"] not in have]
    if todo:
        from tqdm import tqdm

        started = time.perf_counter()
        with tqdm(total=len(todo), desc="embedding the pool subset", unit=" orgs") as bar:
            for start in range(0, len(todo), 500):
                engine.upsert_many(EntityKind.organisations, todo[start : start + 500])
                bar.update(len(todo[start : start + 500]))
        print(f"embedded {len(todo)} organisations in {time.perf_counter() - started:.0f} s")
    engine.load_indexes()
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--distractors", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--build-only", action="store_true", help="embed the store subset, then stop")
    parser.add_argument("--relevance", type=float, action="append",
                        help="weight of the match score in the greedy gain (default: the module's RELEVANCE); repeat to compare")
    args = parser.parse_args()
    topics, orgs = select(args)
    engine = open_engine(orgs)
    print(f"store: {len(orgs)} organisations ({len(orgs) - args.distractors} real partners of {len(topics)} topics, "
          f"{args.distractors} random distractors)")
    if args.build_only:
        return
    from matcher import consortium

    for weight in args.relevance or [consortium.RELEVANCE]:
        consortium.RELEVANCE = weight
        print(f"\n## RELEVANCE = {weight}, REDUNDANCY = {consortium.REDUNDANCY}")
        evaluate(engine, topics)


def evaluate(engine, topics) -> None:
    from matcher.consortium import build
    from models.enums import EntityKind
    from models.schemas import ConsortiumRequest, MatchRequest

    index = engine.indexes[EntityKind.organisations]
    rows = []
    started = time.perf_counter()
    for topic in topics:
        relevant = {r for r in topic["relevant"] if r in index.num_of}
        n = len(relevant)
        text = f"{topic['title']}\n{topic['description']}"
        top = engine.match(MatchRequest.model_validate({"query": {"text": text}, "k": n, "explain": False}))
        top_hits = len({m["id"] for m in top["matches"]} & relevant)
        plain = build(engine, ConsortiumRequest.model_validate({"text": text, "size": n, "alternatives": 1}))
        plain_hits = len({m["id"] for m in plain["consortia"][0]["members"]} & relevant)
        real_types = sorted({index.meta[index.num_of[r]]["type"] for r in relevant})
        typed = build(engine, ConsortiumRequest.model_validate(
            {"text": text, "size": n, "alternatives": 1, "required_types": [[t] for t in real_types][:n]}))
        typed_hits = len({m["id"] for m in typed["consortia"][0]["members"]} & relevant)
        rows.append((topic["id"], n, top_hits, plain_hits, typed_hits))
    took = time.perf_counter() - started
    total = sum(r[1] for r in rows)
    print()
    print("| topic | real size n | top-n list | consortium | consortium + real types |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")
    print()
    for label, col in (("top-n list", 2), ("consortium (greedy coverage)", 3), ("consortium, real types required", 4)):
        hits = sum(r[col] for r in rows)
        recall = statistics.mean(r[col] / r[1] for r in rows)
        any_hit = sum(1 for r in rows if r[col] > 0)
        print(f"{label:34s} real partners found: {hits}/{total} ({hits / total:.1%}); mean recall per topic "
              f"{recall:.3f}; topics with at least one: {any_hit}/{len(rows)}")
    print(f"{len(rows)} topics, {took:.1f} s ({took / len(rows):.2f} s per topic for the list and two consortia)")


if __name__ == "__main__":
    main()
