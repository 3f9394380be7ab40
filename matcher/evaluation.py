"""Match quality on real consortia (``python -m matcher evaluate``).

The pool (organisation profiles) is imported into a store of its own under ``<data dir>/eval/<pool name>``
and indexed exactly as the service indexes it; query embeddings are cached by text hash beside it, so a
rerun embeds nothing. Each query (a call topic: title and description) is ranked by the product, through
``Engine.match`` as ``POST /v1/match`` ranks it, and, in the same run, by the baselines: popularity,
TF-IDF, BM25, dense flat inner product and the reciprocal rank fusion of BM25 and dense. Relevant
organisations are those of the funded consortia (``relevant``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from matcher.hybrid import ranking_model, reciprocal_rank_fusion
from matcher.index import Filter
from matcher.lexical import LexicalIndex
from matcher.settings import Settings
from matcher.text import entity_text, text_hash
from models.enums import EntityKind
from models.files import open_private, private_dir, write_private
from models.schemas import MatchRequest

ORGS = EntityKind.organisations
CUTOFF = 100  # ranks kept per query and ranker
SMALL_ACTORS = ("sme", "startup")
LATENCY_QUERIES = 20  # queries timed end to end, embedding included


# --- metrics ------------------------------------------------------------------------------------

def ndcg_at(hits: list, n_relevant: int, k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(hits[:k]) if h)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, n_relevant)))
    return dcg / ideal if ideal else 0.0


def metrics(ranked_ids: list[str], relevant: set[str]) -> dict[str, float]:
    hits = [i in relevant for i in ranked_ids]
    n = len(relevant)
    first = next((i for i, h in enumerate(hits) if h), None)
    return {
        "nDCG@10": ndcg_at(hits, n, 10),
        "R@10": sum(hits[:10]) / n,
        "R@50": sum(hits[:50]) / n,
        "MRR": 1.0 / (first + 1) if first is not None else 0.0,
    }


# --- data ---------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def query_text(query: dict) -> str:
    return f"{query['title'].strip().rstrip('.')}.\n{query['description'].strip()}"


def without_track_record(doc: dict) -> dict:
    """The profile without its track record (past projects and their count): its text is unchanged."""
    return {k: v for k, v in doc.items() if k not in ("past_projects", "n_past_projects")}


def sample_pool(pool: list[dict], queries: list[dict], size: int, seed: int = 7) -> list[dict]:
    """The queries' relevant organisations plus others drawn at random, ``size`` in all (for quick runs)."""
    wanted = {r for q in queries for r in q["relevant"]}
    keep = [p for p in pool if p["id"] in wanted]
    others = [p for p in pool if p["id"] not in wanted]
    random.Random(seed).shuffle(others)
    return keep + others[: max(0, size - len(keep))]


def open_pool_engine(pool_path: Path, pool: list[dict] | None = None, settings: Settings | None = None,
                     progress: bool = True, variant: str = ""):
    """An engine over a store holding exactly the pool: the whole file, or ``pool`` (a sample of it, stored apart);
    imported (and embedded) only when the pool changed. ``variant`` (e.g. "text-only", for a pool changed as a
    whole) goes into the store's name."""
    from matcher.engine import Engine
    from matcher.records import import_file

    settings = settings or Settings.from_env()
    sample = pool is not None
    pool = pool if sample else read_jsonl(pool_path)
    digest = hashlib.sha256("\n".join(json.dumps(p, sort_keys=True) for p in pool).encode()).hexdigest()
    name = Path(pool_path).name.split(".")[0]
    if variant:
        name = f"{name}-{variant}"
    data_dir = settings.data_dir / "eval" / (f"{name}-{digest[:10]}" if sample else name)
    eval_settings = dataclasses.replace(settings, data_dir=data_dir, db_url=f"sqlite:///{data_dir / 'matcher.db'}")
    private_dir(data_dir)
    engine = Engine(eval_settings).open()
    marker = data_dir / "pool.sha256"
    if not marker.exists() or marker.read_text().strip() != digest:
        stored = set(engine.store.existing_ids(ORGS, [p["id"] for p in pool]))
        ids = {p["id"] for p in pool}
        extra = [row.id for row in engine.store.vectors(ORGS) if row.id not in ids]
        for entity_id in extra:
            engine.store.delete(ORGS, entity_id)
        tmp = data_dir / "pool.import.jsonl"
        write_private(tmp, "".join(json.dumps(p) + "\n" for p in pool))
        print(f"importing {len(pool)} organisations ({len(stored)} stored already; unchanged texts keep their embeddings)",
              file=sys.stderr)
        report = import_file(engine, ORGS, tmp, progress=progress)
        tmp.unlink()
        if report.errors:
            raise ValueError(f"the pool has invalid records, e.g. {report.errors[0]}")
        write_private(marker, digest + "\n")
    engine.load_indexes()
    return engine


def query_vectors(engine, texts: list[str], progress: bool = True, max_windows: int | None = None) -> dict[str, np.ndarray]:
    """Embeddings of the query texts (over their first ``max_windows`` windows, or all), cached by text hash beside
    the pool's store."""
    key = engine.encoder.name + (f"/{max_windows}" if max_windows else "")
    path = engine.settings.data_dir / f"queries.{hashlib.sha256(key.encode()).hexdigest()[:10]}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as npz:
            cache = {k: npz[k] for k in npz.files}
    todo = [t for t in dict.fromkeys(texts) if text_hash(t) not in cache]
    if todo:
        print(f"embedding {len(todo)} queries", file=sys.stderr)
        with engine.encoder.threads(engine.settings.bulk_torch_threads):
            for text, vector in zip(todo, engine.encoder.encode(todo, max_windows=max_windows)):
                cache[text_hash(text)] = vector
        tmp = path.with_suffix(".tmp.npz")
        with os.fdopen(open_private(tmp), "wb") as fh:
            np.savez(fh, **cache)
        tmp.replace(path)
    return {t: cache[text_hash(t)] for t in texts}


# --- rankers ------------------------------------------------------------------------------------

class Baselines:
    """The standard rankers, over the same stored profiles and query embeddings as the product."""

    def __init__(self, engine):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.engine = engine
        index = engine.indexes[ORGS]
        self.index = index
        docs = engine.store.get_by_nums(ORGS, list(index.meta))
        self.nums = np.array(sorted(docs), np.int64)
        self.ids = [docs[n]["id"] for n in self.nums]
        texts = [entity_text(ORGS, docs[n]) for n in self.nums]
        self.popularity = np.array([max(len(docs[n].get("past_projects") or []), docs[n].get("n_past_projects") or 0)
                                    for n in self.nums], np.float64)
        self.tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, stop_words="english")
        self.tfidf_matrix = self.tfidf.fit_transform(texts)
        self.bm25 = LexicalIndex()
        self.bm25.upsert(self.nums.tolist(), texts)
        self.types = np.array([docs[n]["type"] for n in self.nums])

    def _top(self, scores: np.ndarray, allowed: np.ndarray | None) -> list[str]:
        scores = np.where(allowed, scores, -np.inf) if allowed is not None else scores
        order = np.lexsort((self.nums, -scores))[:CUTOFF]
        return [self.ids[i] for i in order if np.isfinite(scores[i])]

    def rank(self, name: str, text: str, vector: np.ndarray, types: tuple[str, ...] = ()) -> list[str]:
        allowed = np.isin(self.types, types) if types else None
        if name == "popularity":
            return self._top(self.popularity, allowed)
        if name == "tfidf":
            return self._top((self.tfidf_matrix @ self.tfidf.transform([text]).T).toarray().ravel(), allowed)
        if name == "bm25":
            nums, scores = self.bm25.scores(text)
            return self._top(scores[np.argsort(nums)], allowed)
        dense = self.index.search(vector[None, :], CUTOFF, Filter(types=types))[0]
        dense_ids = [self.index.meta[n]["id"] for n, _ in dense]
        if name == "dense":
            return dense_ids
        if name == "hybrid_rrf":
            return reciprocal_rank_fusion([dense_ids, self.rank("bm25", text, vector, types)])[:CUTOFF]
        raise ValueError(name)


BASELINES = ("popularity", "tfidf", "bm25", "dense", "hybrid_rrf")
LABELS = {
    "popularity": "popularity (most past projects)",
    "tfidf": "TF-IDF (scikit-learn, 1-2 grams)",
    "bm25": "BM25",
    "dense": "dense, flat inner product",
    "hybrid_rrf": "hybrid: RRF of BM25 and dense",
    "product": "**product: hybrid + learned ranker**",
}


def evaluate(engine, queries: list[dict], progress: bool = True, matches: list[tuple[int, float, bool]] | None = None) -> dict:
    """The product and every baseline on ``queries``. ``matches``, when given, receives the product's top 50 per
    query as (query number, score, relevant): the calibration table's data, which ``--calibrate`` fits on."""
    from tqdm import tqdm

    texts = [query_text(q) for q in queries]
    vectors = query_vectors(engine, texts, progress)  # the baselines': every window of the text
    windows = engine.settings.query_windows or None  # the product's, as it embeds a free-text query
    served = query_vectors(engine, texts, progress, windows) if windows else vectors
    baselines = Baselines(engine)
    stored = set(engine.indexes[ORGS].num_of)
    type_of = dict(zip(baselines.ids, baselines.types))
    per: dict[str, list[dict]] = {name: [] for name in (*BASELINES, "product")}
    small: dict[str, list[dict]] = {"dense": [], "product": []}
    top10: dict[str, set[str]] = {name: set() for name in per}
    took: dict[str, list[float]] = {"product": [], "dense": []}
    matches = [] if matches is None else matches
    skipped = 0
    for number, (query, text) in enumerate(tqdm(list(zip(queries, texts)), desc="ranking", disable=not progress)):
        relevant = set(query["relevant"]) & stored
        if not relevant:
            skipped += 1
            continue
        vector = vectors[text]
        for name in BASELINES:
            started = time.perf_counter()
            ranked = baselines.rank(name, text, vector)
            if name == "dense":
                took["dense"].append((time.perf_counter() - started) * 1000)
            per[name].append(metrics(ranked, relevant))
            top10[name].update(ranked[:10])
        started = time.perf_counter()
        result = engine.match_many([MatchRequest.model_validate({"query": {"text": text}, "k": CUTOFF, "explain": False})],
                                   text_vectors={text: served[text]})[0]
        took["product"].append((time.perf_counter() - started) * 1000)
        ranked = [m["id"] for m in result["matches"]]
        per["product"].append(metrics(ranked, relevant))
        top10["product"].update(ranked[:10])
        matches.extend((number, m["score"], m["id"] in relevant) for m in result["matches"][:50])
        # Small actors only: the same query filtered to SMEs and startups.
        small_relevant = {r for r in relevant if type_of[r] in SMALL_ACTORS}
        if small_relevant:
            small["dense"].append(metrics(baselines.rank("dense", text, vector, SMALL_ACTORS), small_relevant))
            filtered = engine.match_many([MatchRequest.model_validate(
                {"query": {"text": text}, "k": CUTOFF, "explain": False, "filters": {"types": list(SMALL_ACTORS)}})],
                text_vectors={text: served[text]})[0]
            small["product"].append(metrics([m["id"] for m in filtered["matches"]], small_relevant))

    # End to end, as a caller waits for it: the query text is embedded (no cache), then ranked.
    end_to_end: dict[str, list[float]] = {"product": [], "dense": []}
    for text in texts[:LATENCY_QUERIES]:
        started = time.perf_counter()
        engine.match(MatchRequest.model_validate({"query": {"text": text}, "k": 10, "explain": False}))
        end_to_end["product"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        vector = engine.encoder.encode([text], max_windows=engine.settings.query_windows or None)[0]
        engine.indexes[ORGS].search(vector[None, :], 10)
        end_to_end["dense"].append((time.perf_counter() - started) * 1000)

    def means(rows: list[dict]) -> dict[str, float]:
        return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]} if rows else {}

    n_pool = len(stored)
    return {
        "queries": len(queries) - skipped,
        "pool": n_pool,
        "model": engine.encoder.name,
        "ranker": engine.ranker.version,
        "ranker_model": ranking_model(engine.live.records),
        "rankers": {name: {**means(rows), "coverage@10": round(len(top10[name]) / n_pool, 4)} for name, rows in per.items()},
        "sme_startup_filtered": {name: {**means(rows), "queries": len(rows)} for name, rows in small.items()},
        "latency_ms_p50": {name: round(float(np.median(v)), 2) for name, v in took.items() if v},
        "end_to_end_ms_p50": {name: round(float(np.median(v)), 2) for name, v in end_to_end.items() if v},
        "encoder": f"{engine.encoder.runtime}, {engine.encoder.backend.serving} thread(s)",
        "query_windows": engine.settings.query_windows,
        "calibration": _calibration([(score, hit) for _, score, hit in matches]),
    }


def _calibration(pairs: list[tuple[float, bool]]) -> list[dict]:
    """Mean score against the share of relevant matches, by score band (top 50 per query)."""
    bands = [(0.0, 0.03), (0.03, 0.10), (0.10, 0.25), (0.25, 0.50), (0.50, 1.01)]
    out = []
    for low, high in bands:
        inside = [(s, r) for s, r in pairs if low <= s < high]
        if inside:
            out.append({"band": f"{low:.2f}-{min(high, 1.0):.2f}", "matches": len(inside),
                        "mean_score": round(float(np.mean([s for s, _ in inside])), 4),
                        "share_relevant": round(float(np.mean([r for _, r in inside])), 4)})
    return out


def table(result: dict) -> str:
    lines = ["| ranker | nDCG@10 | R@10 | R@50 | MRR | coverage@10 |", "|---|---|---|---|---|---|"]
    for name, row in result["rankers"].items():
        lines.append(f"| {LABELS[name]} | {row['nDCG@10']:.3f} | {row['R@10']:.3f} | {row['R@50']:.3f} | {row['MRR']:.3f} | "
                     f"{row['coverage@10']:.3f} |")
    lines += ["", "Filtered to SMEs and startups (relevant SMEs only):", "",
              "| ranker | queries | nDCG@10 | R@10 | R@50 | MRR |", "|---|---|---|---|---|---|"]
    for name, row in result["sme_startup_filtered"].items():
        if row.get("queries"):
            lines.append(f"| {LABELS[name]} | {row['queries']} | {row['nDCG@10']:.3f} | {row['R@10']:.3f} | {row['R@50']:.3f} | {row['MRR']:.3f} |")
    lines += ["", "Ranking time per query, query embedding excluded (p50 ms): "
              + ", ".join(f"{k} {v}" for k, v in result["latency_ms_p50"].items()),
              f"End to end, k=10, query embedded on {result['encoder']}, first {result['query_windows'] or 'all'} "
              f"windows (p50 ms over "
              f"{min(LATENCY_QUERIES, result['queries'])} queries): "
              + ", ".join(f"{k} {v}" for k, v in result["end_to_end_ms_p50"].items()),
              "", "Calibration (top 50 per query): " + "; ".join(
                  f"{c['band']}: mean score {c['mean_score']:.3f}, relevant {c['share_relevant']:.3f} (n={c['matches']})"
                  for c in result["calibration"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True, help="organisation profiles, JSONL (.gz)")
    parser.add_argument("--queries", required=True, help="queries with `title`, `description` and `relevant` ids, JSONL (.gz)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries")
    parser.add_argument("--pool-sample", type=int, default=None,
                        help="a pool of N: the queries' relevant organisations plus random others (quick runs)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    parser.add_argument("--text-only", action="store_true",
                        help="drop every organisation's track record (past_projects, n_past_projects) first: the product "
                             "then ranks with its text model, as for a store without track records")
    parser.add_argument("--calibrate", action="store_true",
                        help="refit the score calibration on this run's top 50 per query and write it into the ranker "
                             "artefact (MATCHER_RANKER, else the shipped one); the ranking is unchanged")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    queries = read_jsonl(Path(args.queries))[: args.limit]
    pool = sample_pool(read_jsonl(Path(args.pool)), queries, args.pool_sample) if args.pool_sample else None
    if args.text_only:
        pool = [without_track_record(p) for p in (pool if pool is not None else read_jsonl(Path(args.pool)))]
    engine = open_pool_engine(Path(args.pool), pool, progress=not args.quiet,
                              variant="text-only" if args.text_only else "")
    matches: list[tuple[int, float, bool]] = []
    result = evaluate(engine, queries, progress=not args.quiet, matches=matches)
    print(f"{result['queries']} queries, pool of {result['pool']} organisations, model {result['model']}, "
          f"ranker {result['ranker']}\n")
    print(table(result))
    if args.calibrate:
        try:
            label = Path(args.queries).name + (" with every track record dropped" if args.text_only else "")
            result["calibration_refit"] = _refit_calibration(engine, result, matches, label)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _refit_calibration(engine, result: dict, matches: list[tuple[int, float, bool]], queries_name: str) -> dict:
    """Fit the score calibration on the run's top-50 matches, report it held out, write it into the artefact."""
    from matcher import calibration
    from matcher.ranker import DEFAULT_PATH

    groups = np.array([q for q, _, _ in matches])
    logits = calibration.logit(np.array([s for _, s, _ in matches]))
    relevant = np.array([r for _, _, r in matches], bool)
    held_out = calibration.held_out(logits, relevant, groups)
    refit = calibration.fit(logits, relevant)
    path = Path(engine.settings.ranker or DEFAULT_PATH)
    fitted_on = f"{queries_name}: top 50 of {result['queries']} queries, {result['pool']} organisations"
    payload = calibration.write(path, result["ranker_model"], refit, fitted_on)
    bands = _calibration(list(zip(held_out.tolist(), relevant.tolist())))
    print(f"\nCalibration refit ({result['ranker_model']} model, {len(relevant)} matches): slope {refit.slope:.3f}, "
          f"offset {refit.offset:+.3f} on the current scores' log-odds. Held out (2 folds by query): " + "; ".join(
              f"{c['band']}: mean score {c['mean_score']:.3f}, relevant {c['share_relevant']:.3f} (n={c['matches']})"
              for c in bands))
    print(f"wrote {path} ({payload['version']}); the ranking is unchanged")
    return {"slope": refit.slope, "offset": refit.offset, "held_out": bands, "version": payload["version"]}
