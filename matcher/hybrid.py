"""Hybrid retrieval and learned ranking over one entity kind.

Candidates come from four places: the best dense (FAISS) matches, the best BM25 matches, the organisations
with the most similar past work (``matcher.past_work``), and the partners of the strongest text matches
(organisations that worked with them before). Each candidate gets the ranker's signals (the registry of
``matcher.features``); the learned model turns them into a score in [0, 1].
The same function ranks for the service, the evaluation command and the ranker's training.
"""
from __future__ import annotations

import time
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


def _within(nums: np.ndarray, scores: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if allowed is None or not len(nums):
        return nums, scores
    mask = np.isin(nums, allowed)
    return nums[mask], scores[mask]


def gather(corpus: Corpus, query_vector: np.ndarray, query_text: str, flt: Filter, depth: int, n_seeds: int,
           title_vector: np.ndarray | None = None, *, base: Filter | None = None, k: int = 0) -> Candidates:
    """Candidates passing the filter, from the four retrievers, with every ranking signal.

    A candidate's signals never depend on the filter or on k, so neither does its score: the per-query
    references (the best dense and BM25 scores, the best past work, the strongest text matches whose partners
    count) come from the retrieval under ``base`` alone (the query's own exclusions: itself, a challenge's
    owner; none by default) at the ranker's ``depth``; the candidates from the retrieval under ``flt`` (which
    holds ``base``) at max(depth, k).
    ``title_vector``: the query's title embedded alone (``matcher.text.query_title``), which the past-work
    signal compares with past project titles (title to title); the whole query's vector when it has none."""
    base = base or Filter()
    work_vector = past_work_vector(query_vector, title_vector)
    index = corpus.vectors
    lexical_nums, lexical_scores = corpus.lexical.scores(query_text)
    bm25_of = dict(zip(lexical_nums.tolist(), lexical_scores.tolist())) if len(lexical_nums) else {}
    # Similar past work: kernel mass of the query's title over each organisation's past project titles.
    work_nums, work_mass, best_title = (
        corpus.past_work.mass(work_vector) if corpus.past_work is not None else (np.zeros(0, np.int64), np.zeros(0), 0.0)
    )
    mass_of = dict(zip(work_nums.tolist(), work_mass.tolist())) if len(work_nums) else {}
    records = corpus.records
    model_name = ranking_model(records)
    use_records = model_name == "full"

    def retrieve(f: Filter, n: int) -> tuple[np.ndarray | None, list[tuple[int, float]], list[int], list[int]]:
        allowed = index.allowed(f)
        dense_hits = index.search(query_vector[None, :], n, allowed=allowed)[0]
        return (allowed, dense_hits, _top(*_within(lexical_nums, lexical_scores, allowed), n),
                _top(*_within(work_nums, work_mass, allowed), n))

    def pool(allowed, dense_hits, lexical_top, work_top, n: int) -> list[int]:
        allowed_set = None if allowed is None else set(allowed.tolist())
        by_links = sorted((x for x in linked if allowed_set is None or x in allowed_set), key=lambda x: (-linked[x], x))[:n]
        return [x for x in dict.fromkeys([x for x, _ in dense_hits] + lexical_top + work_top + by_links) if x in index.meta]

    reference_retrieval = retrieve(base, depth)
    ref_allowed, ref_dense = reference_retrieval[:2]
    # Seeds: the strongest text matches by reciprocal rank fusion of the two retrievers.
    seeds = reciprocal_rank_fusion([[x for x, _ in ref_dense], reference_retrieval[2]])[:n_seeds]
    linked: dict[int, float] = records.linked_to(seeds) if use_records else {}
    reference = pool(*reference_retrieval, depth)
    candidates = reference
    if flt != base or k > depth:
        candidates = pool(*retrieve(flt, max(depth, k)), max(depth, k))
    if not candidates:
        return Candidates(candidates, np.zeros((0, len(FEATURES))), seeds, linked, model_name)
    everyone = list(dict.fromkeys(reference + candidates))
    dense_of = dict(ref_dense)
    missing = [x for x in everyone if x not in dense_of]
    if missing:
        vectors = np.vstack([index.vector(x) for x in missing])
        dense_of.update(zip(missing, (vectors @ query_vector).tolist()))
    sentences = corpus.sentence_vectors(everyone)
    sentence_sims = {x: sentences[x] @ query_vector for x in everyone if len(sentences.get(x, ()))}
    work_sims = sentence_sims if title_vector is None else {x: sentences[x] @ work_vector for x in sentence_sims}
    # A profile without stored sentence vectors (an older store) counts its whole vector as its one sentence.
    work_sims = {**{x: np.array([index.vector(x) @ work_vector]) for x in everyone if x not in work_sims}, **work_sims}
    # The profile's own sentences count as past work too (they often name projects and topics); they are read
    # for the candidates only, on the same kernel scale as the titles. Without any stored past project titles
    # (no track records, or challenge targets), the sentences alone are the past work.
    has_titles = len(_within(work_nums, work_mass, ref_allowed)[0]) > 0
    best = max(([best_title] if has_titles else []) + [float(work_sims[x].max()) for x in reference])
    mass = np.array([
        mass_of.get(x, 0.0) * np.exp((best_title - best) / TAU) + float(np.exp((work_sims[x] - best) / TAU).sum())
        for x in everyone
    ])
    past_work = dict(zip(everyone, np.log(mass + FLOOR).tolist()))
    signals = Signals(
        nums=candidates,
        dense=np.array([dense_of[x] for x in candidates], np.float64),
        best_sentence=np.array([float(sentence_sims[x].max()) if x in sentence_sims else dense_of[x] for x in candidates]),
        bm25=np.array([bm25_of.get(x, 0.0) for x in candidates]),
        past_work=np.array([past_work[x] for x in candidates]),
        top_dense=max(dense_of[x] for x in reference),
        top_bm25=max(bm25_of.get(x, 0.0) for x in reference),
        top_past_work=max(past_work[x] for x in reference),
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
    base: Filter | None = None,
    timings: dict[str, float] | None = None,
) -> list[Ranked]:
    """The best k rows passing the filter, best first; a row's score is the same whatever the filter and k
    (``title_vector``, ``base``: see ``gather``). ``timings``, when given, gains the seconds spent retrieving
    (the candidates and their signals) and ranking."""
    started = time.perf_counter()
    found = gather(corpus, query_vector, query_text, flt, ranker.depth, ranker.seeds, title_vector, base=base, k=k)
    retrieved = time.perf_counter()
    out = _ranked(corpus, found, k, ranker, type_fit)
    if timings is not None:
        timings["retrieve"] = timings.get("retrieve", 0.0) + retrieved - started
        timings["rank"] = timings.get("rank", 0.0) + time.perf_counter() - retrieved
    return out


def _ranked(corpus: Corpus, found: Candidates, k: int, ranker: Ranker, type_fit: Callable[[int], bool] | None) -> list[Ranked]:
    """The best k of the candidates by the ranker's calibrated score, each with its signals' contributions."""
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
