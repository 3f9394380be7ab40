"""Benchmark stores of N real CORDIS organisations, made without embedding anything: var/bench-stores/<N>/.

    .venv/bin/python bench/stores.py                          # 10,000 and 100,000 (reused when built already)
    .venv/bin/python bench/stores.py --sizes 20000 14783
    .venv/bin/python bench/stores.py --sizes 100000 --rebuild

Source: the evaluation pool's store var/eval/pool (the 14,783 organisations of pool.jsonl.gz, embedded by
`python -m matcher evaluate`). It is only read: its SQLite file (and -wal) is copied to a temporary folder and
opened there, so nothing under var/eval is touched.

Each store is a data dir, var/bench-stores/<N>/: matcher.db and the index snapshots the engine writes, in tenant
`bench` (serve it with MATCHER_DEFAULT_TENANT=bench, or API keys of tenant bench), ids.txt (its ids in row order)
and prepared.json (what it holds, the source's identity and content digest, the seed, the times of the build).
A store is reused while prepared.json matches the request and the source; --rebuild makes it again.

N <= 14,783: the first N rows of the pool (its file order is the store's row order). Beyond: all of them, then
cohorts K = 1, 2, ... of perturbed duplicates; a full cohort duplicates every pool row, the last one a seeded
sample of them (kept in pool order). The duplicate of row R in cohort K:
  - id `<R.id>-dupK`, name `<R.name> #K`;
  - description: R's sentences in a shuffled order, and with 3 or more of them one dropped in half the cases;
  - country and city kept (3 in 4) or swapped for those of another pool organisation drawn at random;
  - past projects kept (titles, years, roles); a partner id P becomes `P-dupK` when P has a duplicate in cohort
    K, so each full cohort holds a copy of the real co-partner graph (in the partial cohort, links to rows
    without a duplicate there stay on the original);
  - embedding: R's vector plus Gaussian noise of sigma (default 0.01) per dimension, renormalised: with 384
    dimensions the cosine to R's is about 1 / sqrt(1 + 384 sigma^2) = 0.981 (prepared.json has the measured mean
    and minimum); the description's sentence vectors (kept with their sentences, in the new order) and the past
    project title vectors are R's with the same noise; its text hash is the hash of its own profile text.
Every document is validated as the API validates it. The rows are written through models.store.Store.upsert
(2,000 a transaction, each logged in the change log as any write is); then Engine.load_indexes() builds the
indexes from the store and writes their snapshots, and Engine.status() must count N organisations indexed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from latency import git_revision, log, source_fingerprint  # noqa: E402
from load import TENANT, show  # noqa: E402

SOURCE = ROOT / "var" / "eval" / "pool"
STORES = ROOT / "var" / "bench-stores"
FORMAT = 1  # of the stores this script makes: a change here makes older ones be rebuilt
BATCH = 2000  # rows per transaction
SEED = 7
SIGMA = 0.01
COUNTRY_SWAP = 0.25
DEFAULT_SIZES = (10_000, 100_000)


def source_identity(source: Path) -> dict:
    """What a store was made from, cheap to check: the pool digest the evaluation store records, its size."""
    marker, db = source / "pool.sha256", source / "matcher.db"
    if not marker.exists() or not db.exists():
        raise SystemExit(
            f"{show(source)} holds no evaluation store. Build it once (it embeds the 14,783 pool organisations, "
            "about 10 minutes on 2 cores):\n  .venv/bin/python -m matcher evaluate "
            "--pool ../shared/data/cordis/bench/pool.jsonl.gz --queries ../shared/data/cordis/bench/dev_queries.jsonl.gz")
    return {"path": show(source), "pool_sha256": marker.read_text().strip(), "db_bytes": db.stat().st_size}


@functools.cache
def read_source(source: Path) -> tuple[list[tuple[dict, object]], str, str]:
    """Every organisation of the source store in row order, as (document, EmbeddingRecord); the tenant they were
    in, and a digest of their ids, text hashes, models and vectors. Read from a copy of the store."""
    from models.enums import EntityKind
    from models.store import Store

    kind = EntityKind.organisations
    with tempfile.TemporaryDirectory(prefix="bench-stores-source-") as tmp:
        for name in ("matcher.db", "matcher.db-wal"):
            if (source / name).exists():
                shutil.copyfile(source / name, Path(tmp) / name)
        store = Store(f"sqlite:///{tmp}/matcher.db")
        try:
            tenants = [t for t in store.tenant_ids() if store.scoped(t).count(kind)]
            if len(tenants) != 1:
                raise SystemExit(f"{show(source)}: expected the organisations of one tenant, found {tenants}")
            store = store.scoped(tenants[0])
            docs = [(row.id, row.data) for row in store.vectors(kind)]
            records = store.embeddings_of(kind, [i for i, _ in docs])
        finally:
            store.engine.dispose()
    digest = hashlib.sha256()
    for entity_id, _ in docs:
        r = records[entity_id]
        digest.update(f"{entity_id}|{r.text_hash}|{r.model}|".encode() + r.vector)
    return [(doc, records[i]) for i, doc in docs], tenants[0], digest.hexdigest()[:16]


def cohorts(n: int, originals: int, seed: int) -> list[tuple[int, list[int]]]:
    """(K, the source rows K holds) for a store of n rows: K = 0 the first rows themselves, then duplicates."""
    plan = [(0, list(range(min(n, originals))))]
    left, k = n - originals, 1
    while left > 0:
        rows = list(range(originals)) if left >= originals else sorted(random.Random(f"{seed}:{k}").sample(range(originals), left))
        plan.append((k, rows))
        left, k = left - len(rows), k + 1
    return plan


class Duplicator:
    """Makes the perturbed duplicates of one cohort (see the module's docstring)."""

    def __init__(self, source: list[tuple[dict, object]], k: int, rows: list[int], seed: int, sigma: float):
        from matcher.encoder import from_bytes

        self.source, self.k, self.sigma = source, k, sigma
        self.members = {source[i][0]["id"] for i in rows}
        self.rng = random.Random(f"{seed}:{k}:text")
        self.noise = np.random.default_rng([seed, k])
        self.places = [(d.get("country"), d.get("city"), d.get("region")) for d, _ in source]
        self.dim = len(from_bytes(source[0][1].vector))

    def _noisy(self, rows: np.ndarray) -> np.ndarray:
        out = rows.astype(np.float32) + self.noise.normal(0.0, self.sigma, rows.shape).astype(np.float32)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    def _description(self, text: str) -> str:
        from matcher.text import split_sentences

        sentences = split_sentences(text)
        if len(sentences) < 2:
            return text
        order = list(range(len(sentences)))
        self.rng.shuffle(order)
        if len(order) >= 3 and self.rng.random() < 0.5:
            order.pop(self.rng.randrange(len(order)))
        return " ".join(sentences[i] for i in order)

    def make(self, i: int) -> tuple[dict, object, float]:
        """The duplicate of source row i: (validated document, EmbeddingRecord, cosine of its vector to row i's)."""
        from matcher.encoder import from_bytes, matrix_from_bytes, matrix_to_bytes, to_bytes
        from matcher.text import entity_text, text_hash
        from models.enums import EntityKind
        from models.schemas import MAX_NAME, validate_entity
        from models.store import EmbeddingRecord

        kind = EntityKind.organisations
        doc, record = self.source[i]
        suffix = f" #{self.k}"
        dup = {**doc, "id": f"{doc['id']}-dup{self.k}", "name": doc["name"][: MAX_NAME - len(suffix)] + suffix,
               "description": self._description(doc["description"])}
        if self.rng.random() < COUNTRY_SWAP:
            dup["country"], dup["city"], dup["region"] = self.places[self.rng.randrange(len(self.places))]
        dup["past_projects"] = [
            {**p, "partner_ids": [f"{q}-dup{self.k}" if q in self.members else q for q in p.get("partner_ids") or []]}
            for p in doc.get("past_projects") or []
        ]
        dup = validate_entity(kind, {k: v for k, v in dup.items() if v is not None})
        original = from_bytes(record.vector)
        vector = self._noisy(original[None, :])[0]
        sentences = sentence_vectors = None
        if record.sentences and record.sentence_vectors:
            stored = matrix_from_bytes(record.sentence_vectors, self.dim)
            kept = sorted((dup["description"].find(s), j) for j, s in enumerate(record.sentences) if s in dup["description"])
            if kept:
                sentences = [record.sentences[j] for _, j in kept]
                sentence_vectors = matrix_to_bytes(self._noisy(stored[[j for _, j in kept]]))
        projects = None
        if record.project_vectors:  # the titles are unchanged: the same rows, with noise
            projects = matrix_to_bytes(self._noisy(matrix_from_bytes(record.project_vectors, self.dim)))
        made = EmbeddingRecord(to_bytes(vector), record.model, text_hash(entity_text(kind, dup)), sentences,
                               sentence_vectors, projects)
        return dup, made, float(vector @ original)


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def settings_for(data_dir: Path):
    """The settings an engine of a benchmark store runs with (its data dir, tenant bench, no demo data)."""
    from matcher.settings import Settings

    return Settings.from_env(data_dir=data_dir, load_demo=False, default_tenant=TENANT)


def stored_ids(data_dir: Path) -> list[str]:
    return (data_dir / "ids.txt").read_text().split()


def prepare(n: int, rebuild: bool = False, seed: int = SEED, sigma: float = SIGMA, source: Path = SOURCE,
            stores: Path = STORES) -> dict:
    """The store of n organisations (built unless an up-to-date one is there): prepared.json's content, with
    ``data_dir`` and ``reused``."""
    data_dir = stores / str(n)
    marker = data_dir / "prepared.json"
    want = {"format": FORMAT, "orgs": n, "tenant": TENANT, "seed": seed, "sigma": sigma, "country_swap": COUNTRY_SWAP,
            "source": source_identity(source)}
    if marker.exists() and (data_dir / "matcher.db").exists() and not rebuild:
        prepared = json.loads(marker.read_text())
        if all(prepared.get(k) == v for k, v in want.items()):
            return {**prepared, "data_dir": data_dir, "reused": True}
        log(f"[store {n:,}] {show(marker)} describes another store; rebuilding")
    return {**build(data_dir, want, source), "data_dir": data_dir, "reused": False}


def build(data_dir: Path, want: dict, source_dir: Path) -> dict:
    from matcher.engine import Engine
    from models.enums import EntityKind

    kind, n = EntityKind.organisations, want["orgs"]
    started = time.perf_counter()
    log(f"[store {n:,}] reading the source {want['source']['path']}")
    source, source_tenant, digest = read_source(source_dir)
    read_s = time.perf_counter() - started
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    engine = Engine(settings_for(data_dir)).open()
    try:
        made_s = write_s = 0.0
        cosines: list[float] = []
        ids: list[str] = []
        for k, rows in cohorts(n, len(source), want["seed"]):
            t0 = time.perf_counter()
            if k == 0:
                items = [source[i] for i in rows]
            else:
                dup = Duplicator(source, k, rows, want["seed"], want["sigma"])
                items = []
                for i in rows:
                    doc, record, cosine = dup.make(i)
                    items.append((doc, record))
                    cosines.append(cosine)
            t1 = time.perf_counter()
            for start in range(0, len(items), BATCH):
                engine.store.upsert(kind, items[start : start + BATCH])
            t2 = time.perf_counter()
            made_s, write_s = made_s + t1 - t0, write_s + t2 - t1
            ids += [doc["id"] for doc, _ in items]
            log(f"[store {n:,}] cohort {k}: {len(items):,} rows ({'the pool rows' if k == 0 else 'duplicates'}) "
                f"made in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s")
        t0 = time.perf_counter()
        engine.load_indexes()  # no snapshot yet: built from the store, then written
        index_s = time.perf_counter() - t0
        status = engine.status()
        if status["indexed"].get(kind.value) != n or status["stale_embeddings"].get(kind.value):
            raise SystemExit(f"[store {n:,}] the engine does not see {n} organisations indexed: {status}")
        with engine.store.engine.connect() as conn:  # one file to copy: the WAL folded into it
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.store.engine.dispose()
    (data_dir / "ids.txt").write_text("\n".join(ids) + "\n")
    prepared = {
        **want,
        "source_tenant": source_tenant,
        "source_digest": digest,
        "originals": min(n, len(source)),
        "duplicates": len(cosines),
        "cosine_to_original": {"mean": float(np.mean(cosines)), "min": float(np.min(cosines))} if cosines else None,
        "indexed": status["indexed"],
        "model": status["model"] or source[0][1].model,
        "seconds": {"read_source": read_s, "make_duplicates": made_s, "write_store": write_s, "build_indexes": index_s,
                    "total": time.perf_counter() - started},
        "disk_mb": _dir_mb(data_dir),
        "built_at": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "revision": git_revision(),
        "sources": source_fingerprint(),
        "load_avg": os.getloadavg()[0],
    }
    (data_dir / "prepared.json").write_text(json.dumps(prepared, indent=2) + "\n")
    s = prepared["seconds"]
    log(f"[store {n:,}] built in {s['total']:.0f} s (read {s['read_source']:.0f}, duplicates {s['make_duplicates']:.0f}, "
        f"write {s['write_store']:.0f}, indexes {s['build_indexes']:.0f}), {prepared['disk_mb']:,.0f} MB in {show(data_dir)}"
        + (f"; duplicates' cosine to their original: mean {prepared['cosine_to_original']['mean']:.4f}, "
           f"min {prepared['cosine_to_original']['min']:.4f}" if cosines else ""))
    return prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="organisations (default 10000 100000)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if an up-to-date store is there")
    parser.add_argument("--seed", type=int, default=SEED, help=f"of the duplicates' perturbations (default {SEED})")
    parser.add_argument("--sigma", type=float, default=SIGMA, help=f"noise per vector dimension (default {SIGMA})")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.sizes) or args.sigma < 0:
        parser.error("sizes must be positive, sigma not negative")
    for n in args.sizes:
        p = prepare(n, args.rebuild, args.seed, args.sigma)
        if p["reused"]:
            log(f"[store {n:,}] up to date in {show(p['data_dir'])} (built {p['built_at']} in {p['seconds']['total']:.0f} s, "
                f"{p['disk_mb']:,.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
