"""Train the ranker (``python -m matcher train-ranker``) on data that cannot leak into the evaluation.

Training queries are Horizon Europe call topics of 2021-2022 (the evaluation's queries are 2023-2024 topics).
Each topic is ranked against the pool with that topic taken out of every profile (leave-one-topic-out):
its projects leave the participants' descriptions, past projects and counts, and their embeddings are
recomputed, so a participant is found only through what it did on *other* projects, as a future
consortium member would be. The candidates and their signals come from ``matcher.hybrid.gather``, the
function the service ranks with. The labels: whether a candidate took part in the topic's projects.
Two logistic regressions are fitted (all signals; text signals only) and written as one JSON artefact.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import random
import sys
from pathlib import Path

import numpy as np

from matcher.encoder import matrix_from_bytes
from matcher.evaluation import ndcg_at, open_pool_engine
from matcher.hybrid import gather
from matcher.index import Filter
from matcher.ranker import DEFAULT_PATH, FEATURES, TEXT_FEATURES, LinearModel, artefact_version
from matcher.text import entity_text, query_title
from models.enums import EntityKind
from models.store import StoredVector

ORGS = EntityKind.organisations
TRAIN_YEARS = (2021, 2022)
ROLES = ("coordinator", "participant")
MIN_CONSORTIUM = 3  # partners in a project, as in the evaluation's consortia
MAX_MEMBERS = 80
REEMBED_CHARS = 1500
# The full model's signals. Chosen on the dev split (the only tuning done there): the partner count and the
# coordination count repeat the project count and took weights of opposite sign, which cost 0.014 nDCG@10.
SHIPPED_FEATURES = ("dense", "dense_gap", "best_sentence", "bm25", "projects", "linked_seeds", "past_work", "past_work_gap")


def _read(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def training_topics(cordis: Path, stored_ids: set[str]) -> list[dict]:
    """2021-2022 call topics with their consortium projects' titles and the stored organisations that took part."""
    texts = {t["topic_code"]: t for t in _read(cordis / "call_topics.jsonl.gz")}
    topics: dict[str, dict] = {}
    for project in _read(cordis / "projects.jsonl.gz"):
        if project.get("call_year") not in TRAIN_YEARS or not project.get("topics"):
            continue
        members = {p["org_id"] for p in project["participants"] if p["role"] in ROLES}
        if len(members) < MIN_CONSORTIUM:  # single-beneficiary grants (ERC, fellowships) are not consortia
            continue
        members &= stored_ids
        if not members:
            continue
        code, title = project["topics"][0]["code"], project["topics"][0]["title"]
        topic = topics.setdefault(code, {"code": code, "title": title, "year": project["call_year"],
                                         "titles": {title}, "members": set()})
        if project.get("title"):
            topic["titles"].add(project["title"])
        topic["members"] |= members
    out = []
    for topic in topics.values():
        call = texts.get(topic["code"])
        topic["text"] = topic["title"] + ".\n" + call["description"] if call and call.get("description") else topic["title"]
        topic["has_call_text"] = bool(call and call.get("description"))
        if MIN_CONSORTIUM <= len(topic["members"]) <= MAX_MEMBERS:
            out.append(topic)
    return sorted(out, key=lambda t: t["code"])


def _drop_items(description: str, label: str, titles: set[str]) -> str:
    """Remove the given items from a "Label: a; b; c." list of a pool description."""
    start = description.find(label)
    if start < 0:
        return description
    body_start = start + len(label)
    ends = [description.find(marker, body_start) for marker in (". Worked on: ", ". Fields: ", ". Objectives: ")]
    ends = [e for e in ends if e >= 0]
    end = min(ends) if ends else len(description.rstrip(".")) if description.endswith(".") else len(description)
    items = [i for i in description[body_start:end].split("; ") if i.strip().rstrip(".") not in titles]
    if not items:
        tail = description[end:].lstrip(". ")
        return (description[:start] + tail).strip()
    return description[:body_start] + "; ".join(items) + description[end:]


def without_topic(doc: dict, topic: dict) -> dict:
    """The profile as it would be had the organisation never worked on this topic."""
    titles = topic["titles"]
    kept = [p for p in doc.get("past_projects") or [] if not (p["title"] in titles and p.get("year") == topic["year"])]
    removed = len(doc.get("past_projects") or []) - len(kept)
    description = doc["description"]
    for label in ("Projects: ", "Worked on: "):
        description = _drop_items(description, label, titles)
    out = {**doc, "past_projects": kept, "description": description or doc["name"]}
    if doc.get("n_past_projects") is not None:
        out["n_past_projects"] = max(0, doc["n_past_projects"] - removed)
    return out


def collect(engine, topics: list[dict], depth: int, seeds: int, progress: bool = True):
    """Candidates, signals and labels for every training topic, in the leave-one-topic-out world."""
    corpus = engine.live.corpus(ORGS)
    index = corpus.vectors
    overrides: dict[int, np.ndarray] = {}
    queries = engine.encoder.encode([t["text"] for t in topics])
    # As the service does: a topic with a call text has a title line, embedded alone for the past-work signal.
    titles = [query_title(t["text"]) for t in topics]
    title_of = dict(zip([t for t in titles if t], engine.encoder.encode_sentences([t for t in titles if t])))
    rows, labels, groups = [], [], []
    from tqdm import tqdm

    for qid, (topic, qvec) in enumerate(tqdm(list(zip(topics, queries)), desc="training topics", disable=not progress)):
        nums = [index.num_of[m] for m in sorted(topic["members"]) if m in index.num_of]
        originals = engine.store.get_by_nums(ORGS, nums)
        originals = {n: {k: v for k, v in d.items() if k not in ("created_at", "updated_at")} for n, d in originals.items()}
        changed = {n: without_topic(d, topic) for n, d in originals.items()}
        # Short profiles are embedded again without the topic. A long profile (many projects) keeps its vector,
        # which one topic barely moves, and loses the sentences that name the topic's projects.
        short = [n for n in nums if len(changed[n]["description"]) <= REEMBED_CHARS]
        vectors = {n: index.vector(n) for n in nums}
        old_vectors = dict(vectors)
        if short:
            fresh, sentences = engine.encoder.encode_with_sentences([entity_text(ORGS, changed[n]) for n in short])
            for n, vector, pairs in zip(short, fresh, sentences):
                vectors[n] = vector
                described = [v for s, v in pairs if s in changed[n]["description"]]
                overrides[n] = np.vstack(described) if described else np.zeros((0, engine.encoder.dim), np.float32)
        stored = engine.store.sentence_vectors(ORGS, [n for n in nums if n not in overrides])
        for n, (sentences, blob, _) in stored.items():
            matrix = matrix_from_bytes(blob, engine.encoder.dim)
            keep = [i for i, s in enumerate(sentences) if not any(t in s for t in topic["titles"])]
            overrides[n] = matrix[keep]
        project_vectors = {r.num: r.project_vectors for r in engine.store.vectors(ORGS, nums)}
        # Without the topic, its project titles leave the past work too (the others keep their vectors).
        kept = [corpus.sentences.gather(np.array([n]))[0] for n in nums]  # _apply drops them: put back after
        _apply(engine, nums, np.vstack([vectors[n] for n in nums]), [changed[n] for n in nums])
        corpus.sentences.upsert(list(overrides), list(overrides.values()))
        try:
            found = gather(corpus, qvec, topic["text"], Filter(), depth, seeds, title_of.get(titles[qid]))
        finally:
            _apply(engine, nums, np.vstack([old_vectors[n] for n in nums]), [originals[n] for n in nums],
                   [project_vectors.get(n) for n in nums])
            corpus.sentences.upsert(nums, kept)
            overrides.clear()
        members = set(nums)
        rows.append(found.X)
        labels.append(np.array([n in members for n in found.nums]))
        groups.append(np.full(len(found.nums), qid))
    return np.vstack(rows), np.concatenate(labels), np.concatenate(groups)


def _apply(engine, nums, vectors, docs, project_vectors=None) -> None:
    index = engine.indexes[ORGS]
    index.upsert(nums, vectors, [dict(index.meta[n]) for n in nums])
    blobs = project_vectors or [None] * len(nums)
    engine.live.add_text(ORGS, [StoredVector(n, d["id"], {}, None, None, None, d, b) for n, d, b in zip(nums, docs, blobs)])


def fit(X: np.ndarray, y: np.ndarray, features: tuple[str, ...], c: float, weights: np.ndarray | None = None) -> LinearModel:
    from sklearn.linear_model import LogisticRegression

    cols = [FEATURES.index(f) for f in features]
    Z = X[:, cols]
    mean, scale = Z.mean(axis=0), Z.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=3000).fit((Z - mean) / scale, y, sample_weight=weights)
    return LinearModel(tuple(features), model.coef_[0], float(model.intercept_[0]), mean, scale)


def mean_ndcg(logits: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    values = []
    for g in np.unique(groups):
        mask = groups == g
        order = np.argsort(-logits[mask], kind="stable")
        values.append(ndcg_at(y[mask][order].tolist(), int(y[mask].sum()), k))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher train-ranker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cordis", default="../shared/data/cordis", help="folder with projects.jsonl.gz and call_topics.jsonl.gz")
    parser.add_argument("--pool", default=None, help="pool file (default: <cordis>/bench/pool.jsonl.gz)")
    parser.add_argument("--topics", type=int, default=400, help="training topics to sample (all with a call text are kept)")
    parser.add_argument("--depth", type=int, default=200, help="candidates per retriever")
    parser.add_argument("--seeds", type=int, default=20, help="strongest text matches whose partners join the candidates")
    parser.add_argument("--C", type=float, default=0.1, help="inverse regularisation strength")
    parser.add_argument("--features", default=",".join(SHIPPED_FEATURES),
                        help=f"signals the full model uses, comma-separated, from: {', '.join(FEATURES)}")
    parser.add_argument("--call-text-weight", type=float, default=5.0,
                        help="weight of a topic with a full call text (like the service's queries) against a title-only one")
    parser.add_argument("--from-dump", default=None, help="fit on signals saved by an earlier --dump instead of collecting them")
    parser.add_argument("--preferred-type-bonus", type=float, default=0.7)
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--dump", default=None, help="also save the collected signals and labels (.npz)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    cordis = Path(args.cordis)
    pool = Path(args.pool) if args.pool else cordis / "bench" / "pool.jsonl.gz"
    if args.from_dump:
        saved = np.load(args.from_dump)
        X, y, groups, call_text = saved["X"], saved["y"], saved["groups"], saved["call_text"]
        n_members = int(saved["members"])
    else:
        engine = open_pool_engine(pool, progress=not args.quiet)
        stored = set(engine.indexes[ORGS].num_of)
        topics = training_topics(cordis, stored)
        dev_path = cordis / "bench" / "dev_queries.jsonl.gz"
        dev_codes = {q["id"] for q in _read(dev_path)} if dev_path.exists() else set()
        assert not dev_codes & {t["code"] for t in topics}, "a training topic is an evaluation query"
        with_text = [t for t in topics if t["has_call_text"]]
        others = [t for t in topics if not t["has_call_text"]]
        random.Random(args.seed).shuffle(others)
        chosen = with_text + others[: max(0, args.topics - len(with_text))]
        print(f"{len(topics)} topics of {TRAIN_YEARS} with {MIN_CONSORTIUM}+ stored participants; training on {len(chosen)} "
              f"({len(with_text)} with a call text)", file=sys.stderr)
        X, y, groups = collect(engine, chosen, args.depth, args.seeds, progress=not args.quiet)
        call_text = np.array([t["has_call_text"] for t in chosen])
        n_members = sum(len(t["members"]) for t in chosen)
        if args.dump:
            np.savez(args.dump, X=X, y=y, groups=groups, call_text=call_text, members=n_members)
    features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    unknown = set(features) - set(FEATURES)
    if unknown:
        parser.error(f"--features: unknown {sorted(unknown)}")
    weights = np.where(call_text[groups], args.call_text_weight, 1.0)
    full = fit(X, y, features, args.C, weights)
    text = fit(X, y, TEXT_FEATURES, args.C, weights)
    report = {
        "topics": len(call_text),
        "topics_with_call_text": int(call_text.sum()),
        "candidates": int(len(y)),
        "positives": int(y.sum()),
        "members_found_in_candidates": round(float(y.sum()) / n_members, 4),
        "C": args.C,
        "call_text_weight": args.call_text_weight,
        "train_ndcg@10": {
            "full": round(mean_ndcg(full.logits(X), y, groups), 4),
            "text": round(mean_ndcg(text.logits(X), y, groups), 4),
            "bm25_only": round(mean_ndcg(X[:, FEATURES.index("bm25")], y, groups), 4),
            "dense_only": round(mean_ndcg(X[:, FEATURES.index("dense")], y, groups), 4),
        },
    }
    payload = {
        "version": "",
        "trained_on": f"Horizon Europe call topics {TRAIN_YEARS[0]}-{TRAIN_YEARS[-1]}, leave-one-topic-out against {pool.name}",
        "models": {"full": full.to_json(), "text": text.to_json()},
        "preferred_type_bonus": args.preferred_type_bonus,
        "depth": args.depth,
        "seeds": args.seeds,
        "training": report,
    }
    # A new model has no calibration yet: refit it with `python -m matcher evaluate --calibrate`.
    payload["version"] = artefact_version(payload, dt.date.today().isoformat())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for name, model in (("full", full), ("text", text)):
        print(f"{name}: " + ", ".join(f"{f}={c:+.3f}" for f, c in zip(model.features, model.coef)) + f", intercept={model.intercept:+.3f}")
    print(f"wrote {args.out} ({payload['version']})")
    return 0
