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
from dataclasses import dataclass

import numpy as np

from matcher.features import FEATURES, Signals, feature_matrix
from matcher.index import Filter, VectorIndex
from matcher.lexical import LexicalIndex
from matcher.past_work import FLOOR, TAU, PastWork
from matcher.ranker import Ranker, sigmoid
from matcher.sentence_index import SentenceIndex
from matcher.track_record import TrackRecords

_RRF_K = 60


@dataclass
class Corpus:
    """What ranking reads of one entity kind; ``matcher.live_index`` keeps it in sync with the store."""

    vectors: VectorIndex
    lexical: LexicalIndex
    records: TrackRecords | None = None  # organisations only
    sentences: SentenceIndex | None = None  # the profiles' sentence vectors (rows without: dense stands in)
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


def _best(values: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
    """The nums (positions of a num-space array) of the n largest positive values that ``mask`` allows, best
    first, ties by num."""
    nums = np.flatnonzero(values > 0 if mask is None else (values > 0) & mask)
    if len(nums) > n:
        nums = nums[np.argpartition(-values[nums], n - 1)[:n]]
    return nums[np.lexsort((nums, -values[nums]))]


def _spread(nums: np.ndarray, values: np.ndarray, space: int) -> np.ndarray:
    """Values given for some nums as a num-space array (0 elsewhere; nums beyond the space are left out)."""
    out = np.zeros(space)
    inside = nums < space
    out[nums[inside]] = values[inside]
    return out


def _segments(owner: np.ndarray, values: np.ndarray, n: int, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per owner (0..n-1, ``owner`` sorted): the largest of its values, and whether it has any (else ``fallback``)."""
    out, has = np.array(fallback, np.float64), np.zeros(n, bool)
    if len(owner):
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        out[owner[starts]] = np.maximum.reduceat(values, starts)
        has[owner[starts]] = True
    return out, has


@dataclass
class Candidates:
    nums: list[int]
    X: np.ndarray  # one row per candidate, one column per registry feature (``features.FEATURES``)
    seeds: list[int]
    linked: np.ndarray  # over num space: how many seeds each organisation worked with
    model_name: str  # the ranker model that ranks them (``ranking_model``)


def ranking_model(records) -> str:
    """``full`` when some stored organisation has a known track record (its signals are read), else ``text``."""
    return "full" if records is not None and records.any_known() else "text"


def past_work_vector(query_vector: np.ndarray, title_vector: np.ndarray | None) -> np.ndarray:
    """The vector that past work is compared with: the query's title embedded alone, else the whole query."""
    return query_vector if title_vector is None else title_vector


def gather(corpus: Corpus, query_vector: np.ndarray, query_text: str, flt: Filter, depth: int, n_seeds: int,
           title_vector: np.ndarray | None = None, *, base: Filter | None = None, k: int = 0) -> Candidates:
    """Candidates passing the filter, from the four retrievers, with every ranking signal.

    A candidate's signals never depend on the filter or on k, so neither does its score: the per-query
    references (the best dense and BM25 scores, the best past work, the strongest text matches whose partners
    count) come from the retrieval under ``base`` alone (the query's own exclusions: itself, a challenge's
    owner; none by default) at the ranker's ``depth``; the candidates from the retrieval under ``flt`` (which
    holds ``base``) at max(depth, k).
    ``title_vector``: the query's title embedded alone (``matcher.text.query_title``), which the past-work
    signal compares with past project titles (title to title); the whole query's vector when it has none.

    Everything per query is an array operation over "num space" (``VectorIndex.space``) or over the candidates:
    the query is compared with every profile, BM25 row and past project title once, and with the candidates'
    stored sentences (``SentenceIndex``); nothing is read from the store."""
    base = base or Filter()
    index, records = corpus.vectors, corpus.records
    model_name = ranking_model(records)
    if not len(index):
        return Candidates([], np.zeros((0, len(FEATURES))), [], np.zeros(0), model_name)
    space = index.space
    present = index.view().row_of >= 0
    work_vector = past_work_vector(query_vector, title_vector)
    bm25 = _spread(*corpus.lexical.scores(query_text), space)
    # Similar past work: kernel mass of the query's title over each organisation's past project titles.
    work_nums, work_mass, best_title = (
        corpus.past_work.mass(work_vector) if corpus.past_work is not None else (np.zeros(0, np.int64), np.zeros(0), 0.0)
    )
    mass_of = _spread(work_nums, work_mass, space)

    def retrieve(f: Filter, n: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
        mask = index.allowed_mask(f)
        return mask, index.top(query_vector, n, mask)[0], _best(bm25, mask, n), _best(mass_of, mask, n)

    def pool(mask, dense_top, lexical_top, work_top, n: int) -> np.ndarray:
        found = np.unique(np.concatenate([dense_top, lexical_top, work_top, _best(linked, mask, n)]))
        return found[present[found]]

    reference_retrieval = retrieve(base, depth)
    ref_mask = reference_retrieval[0]
    # Seeds: the strongest text matches by reciprocal rank fusion of the two retrievers.
    seeds = reciprocal_rank_fusion([reference_retrieval[1].tolist(), reference_retrieval[2].tolist()])[:n_seeds]
    use_records = model_name == "full"
    linked = _spread(*records.linked_arrays(seeds), space) if use_records else np.zeros(space)
    reference = pool(*reference_retrieval, depth)
    candidates = reference
    if flt != base or k > depth:
        candidates = pool(*retrieve(flt, max(depth, k)), max(depth, k))
    if not len(candidates):
        return Candidates([], np.zeros((0, len(FEATURES))), seeds, linked, model_name)
    everyone = np.union1d(reference, candidates)
    in_reference, at = np.isin(everyone, reference), np.searchsorted(everyone, candidates)
    vectors = index.vectors(everyone)
    dense = (vectors @ query_vector).astype(np.float64)
    # A profile without stored sentence vectors (an older store) counts its whole vector as its one sentence.
    whole_work = dense if title_vector is None else (vectors @ work_vector).astype(np.float64)
    queries = [query_vector] if title_vector is None else [query_vector, work_vector]
    sims, owner = (corpus.sentences.similarities(everyone, queries) if corpus.sentences is not None
                   else ([np.zeros(0, np.float32)] * len(queries), np.zeros(0, np.int64)))
    sentence_sims, work_sims = sims[0], sims[-1]
    best_sentence, has_sentences = _segments(owner, sentence_sims, len(everyone), dense)
    best_work = _segments(owner, work_sims, len(everyone), whole_work)[0]
    # The profile's own sentences count as past work too (they often name projects and topics); they are read
    # for the candidates only, on the same kernel scale as the titles. Without any stored past project titles
    # (no track records, or challenge targets), the sentences alone are the past work.
    inside = work_nums[work_nums < space]
    has_titles = len(work_nums) > 0 and (ref_mask is None or bool(ref_mask[inside].any()))
    best = max(([best_title] if has_titles else []) + [float(best_work[in_reference].max())])
    own = np.bincount(owner, weights=np.exp((work_sims - best) / TAU), minlength=len(everyone))
    own[~has_sentences] = np.exp((whole_work[~has_sentences] - best) / TAU)
    past_work = np.log(mass_of[everyone] * np.exp((best_title - best) / TAU) + own + FLOOR)
    signals = Signals(
        nums=candidates.tolist(),
        dense=dense[at],
        best_sentence=best_sentence[at],
        bm25=bm25[candidates],
        past_work=past_work[at],
        top_dense=float(dense[in_reference].max()),
        top_bm25=float(bm25[reference].max()),
        top_past_work=float(past_work[in_reference].max()),
        records=records,
        linked=linked[candidates],
    )
    return Candidates(signals.nums, feature_matrix(signals, use_records), seeds, linked, model_name)


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
        linked = corpus.records.shared_with(num, found.seeds) if found.linked[num] > 0 else []
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
