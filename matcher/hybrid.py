"""Hybrid retrieval and learned ranking over one entity kind.

Candidates come from four places: the best dense (FAISS) matches, the best BM25 matches, the organisations
with the most similar past work (``matcher.past_work``), and the partners of the strongest text matches
(organisations that worked with them before). Each candidate gets the ranker's signals (the registry of
``matcher.features``); the learned model turns them into a score in [0, 1].
The same function ranks for the service, the evaluation command and the ranker's training.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from matcher.features import FEATURES, Signals, feature_matrix
from matcher.index import Filter, VectorIndex
from matcher.lexical import LexicalIndex
from matcher.past_work import FLOOR, TAU, PastWork
from matcher.ranker import Ranker, sigmoid
from matcher.track_record import TrackRecords

_RRF_K = 60


@dataclass
class Corpus:
    """What ranking reads of one entity kind; ``matcher.live_index`` keeps it in sync with the store."""

    vectors: VectorIndex
    lexical: LexicalIndex
    records: TrackRecords | None = None  # organisations only
    # num -> the profile's sentence vectors (rows), for the rows asked; missing rows fall back to dense
    sentence_vectors: Callable[[list[int]], dict[int, np.ndarray]] = field(default=lambda nums: {})
    past_work: PastWork | None = None  # organisations only


@dataclass
class Ranked:
    num: int
    score: float  # calibrated, in [0, 1]
    features: dict[str, float]
    contributions: dict[str, float]  # each signal's share of the logit (and "type_fit", the bonus), for explanations
    linked: list[int]  # seeds (strong text matches) this organisation has worked with


def reciprocal_rank_fusion(rankings: list[list], k: int = _RRF_K) -> list:
    """Items of several best-first rankings, best fused first (score: sum of 1 / (k + rank)); ties by item."""
    fused: dict = {}
    for ranking in rankings:
        for position, item in enumerate(ranking):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + position + 1)
    return sorted(fused, key=lambda item: (-fused[item], item))


def _top(nums: np.ndarray, scores: np.ndarray, n: int) -> list[int]:
    if len(nums) == 0:
        return []
    n = min(n, len(nums))
    part = np.argpartition(-scores, n - 1)[:n]
    part = part[scores[part] > 0]
    return [int(nums[i]) for i in part[np.argsort(-scores[part], kind="stable")]]


@dataclass
class Candidates:
    nums: list[int]
    X: np.ndarray  # one row per candidate, one column per registry feature (``features.FEATURES``)
    seeds: list[int]
    linked: dict[int, float]
    model_name: str  # the ranker model that ranks them (``ranking_model``)


def ranking_model(records) -> str:
    """``full`` when some stored organisation has a known track record (its signals are read), else ``text``."""
    return "full" if records is not None and records.any_known() else "text"


def past_work_vector(query_vector: np.ndarray, title_vector: np.ndarray | None) -> np.ndarray:
    """The vector that past work is compared with: the query's title embedded alone, else the whole query."""
    return query_vector if title_vector is None else title_vector


def gather(corpus: Corpus, query_vector: np.ndarray, query_text: str, flt: Filter, depth: int, n_seeds: int,
           title_vector: np.ndarray | None = None) -> Candidates:
    """Candidates passing the filter, from the four retrievers, with every ranking signal.

    ``title_vector``: the query's title embedded alone (``matcher.text.query_title``), which the past-work
    signal compares with past project titles (title to title); the whole query's vector when it has none."""
    work_vector = past_work_vector(query_vector, title_vector)
    index = corpus.vectors
    allowed = index.allowed(flt)
    dense_hits = index.search(query_vector[None, :], depth, allowed=allowed)[0]
    nums, bm25 = corpus.lexical.scores(query_text)
    if allowed is not None:
        mask = np.isin(nums, allowed)
        nums, bm25 = nums[mask], bm25[mask]
    lexical_top = _top(nums, bm25, depth)
    bm25_of = dict(zip(nums.tolist(), bm25.tolist())) if len(nums) else {}

    # Seeds: the strongest text matches by reciprocal rank fusion of the two retrievers.
    seeds = reciprocal_rank_fusion([[n for n, _ in dense_hits], lexical_top])[:n_seeds]

    # Similar past work: kernel mass of the query's title over each organisation's past project titles.
    work_nums, work_mass, best_title = (
        corpus.past_work.mass(work_vector) if corpus.past_work is not None else (np.zeros(0, np.int64), np.zeros(0), 0.0)
    )
    if allowed is not None and len(work_nums):
        mask = np.isin(work_nums, allowed)
        work_nums, work_mass = work_nums[mask], work_mass[mask]
    work_top = _top(work_nums, work_mass, depth)
    mass_of = dict(zip(work_nums.tolist(), work_mass.tolist())) if len(work_nums) else {}

    records = corpus.records
    model_name = ranking_model(records)
    use_records = model_name == "full"
    linked: dict[int, float] = {}
    if use_records:
        linked = records.linked_to(seeds)
        if allowed is not None:
            allowed_set = set(allowed.tolist())
            linked = {n: c for n, c in linked.items() if n in allowed_set}
    by_links = sorted(linked, key=lambda n: (-linked[n], n))[:depth]

    candidates = [n for n in dict.fromkeys([n for n, _ in dense_hits] + lexical_top + work_top + by_links) if n in index.meta]
    if not candidates:
        return Candidates(candidates, np.zeros((0, len(FEATURES))), seeds, linked, model_name)
    dense_of = dict(dense_hits)
    missing = [n for n in candidates if n not in dense_of]
    if missing:
        vectors = np.vstack([index.vector(n) for n in missing])
        dense_of.update(zip(missing, (vectors @ query_vector).tolist()))
    sentences = corpus.sentence_vectors(candidates)
    sentence_sims = {n: sentences[n] @ query_vector for n in candidates if len(sentences.get(n, ()))}
    work_sims = sentence_sims if title_vector is None else {n: sentences[n] @ work_vector for n in sentence_sims}
    # A profile without stored sentence vectors (an older store) counts its whole vector as its one sentence.
    work_sims = {**{n: np.array([index.vector(n) @ work_vector]) for n in candidates if n not in work_sims}, **work_sims}
    # The profile's own sentences count as past work too (they often name projects and topics); they are read
    # for the candidates only, on the same kernel scale as the titles. Without any stored past project titles
    # (no track records, or challenge targets), the sentences alone are the past work.
    best = max(([best_title] if mass_of else []) + [float(sims.max()) for sims in work_sims.values()])
    mass = np.array([
        mass_of.get(n, 0.0) * np.exp((best_title - best) / TAU) + float(np.exp((work_sims[n] - best) / TAU).sum())
        for n in candidates
    ])
    signals = Signals(
        nums=candidates,
        dense=np.array([dense_of[n] for n in candidates], np.float64),
        best_sentence=np.array([float(sentence_sims[n].max()) if n in sentence_sims else dense_of[n] for n in candidates]),
        bm25=np.array([bm25_of.get(n, 0.0) for n in candidates]),
        past_work=np.log(mass + FLOOR),
        records=records,
        linked=linked,
    )
    return Candidates(candidates, feature_matrix(signals, use_records), seeds, linked, model_name)


def rank(
    corpus: Corpus,
    query_vector: np.ndarray,
    query_text: str,
    flt: Filter,
    k: int,
    ranker: Ranker,
    type_fit: Callable[[int], bool] | None = None,
    title_vector: np.ndarray | None = None,
) -> list[Ranked]:
    """The best k rows passing the filter, best first (``title_vector``: see ``gather``)."""
    found = gather(corpus, query_vector, query_text, flt, max(ranker.depth, k), ranker.seeds, title_vector)
    if not found.nums:
        return []
    model, calibration = getattr(ranker, found.model_name), ranker.calibration_of(found.model_name)
    contributions = model.contributions(found.X)
    names = list(model.features)
    if type_fit is not None:  # the challenge says which organisation types it wants
        bonus = np.array([[ranker.preferred_type_bonus if type_fit(n) else 0.0] for n in found.nums])
        contributions, names = np.hstack([contributions, bonus]), names + ["type_fit"]
    logits = model.intercept + contributions.sum(axis=1)
    scores = sigmoid(calibration.logits(logits))
    contributions = contributions * calibration.slope  # shares of the calibrated log-odds, as the score reads them
    order = np.lexsort((np.array(found.nums), -logits))[:k]  # ties broken by num: deterministic
    out = []
    for i in order:
        num = found.nums[i]
        linked = []
        if num in found.linked:
            neighbours = corpus.records.neighbours(num)
            linked = [s for s in found.seeds if s in neighbours]
        out.append(
            Ranked(
                num=num,
                score=float(scores[i]),
                features={f: float(found.X[i, j]) for j, f in enumerate(FEATURES)},
                contributions={f: float(c) for f, c in zip(names, contributions[i]) if f != "type_fit" or c},
                linked=linked,
            )
        )
    return out
