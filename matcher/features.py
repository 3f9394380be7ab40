"""The ranking signals, named in one registry: each feature's name, meaning, computation and explanation group.

A feature is computed from ``Signals``, what one query knows of its candidates (``matcher.hybrid.gather``
fills it). The registry's order is the column order of the feature matrix that the ranker's artefact
(``matcher/ranker_model/ranker.json``) names its features from; a new signal is one entry here, then a
retrained artefact. ``ranker.FEATURES``, ``ranker.TEXT_FEATURES`` and ``explain.SIGNAL_GROUPS`` derive
from it. Per-query relative signals make long call texts and short queries comparable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from matcher.track_record import TRACK_FEATURES, TrackRecords


@dataclass
class Signals:
    """What one query knows of its candidates (``nums``, in order), one value per candidate."""

    nums: list[int]
    dense: np.ndarray  # cosine of the query and profile embeddings
    best_sentence: np.ndarray  # best cosine of the query with one profile sentence (dense without sentences)
    bm25: np.ndarray  # raw BM25 score
    past_work: np.ndarray  # log of the past-work kernel mass (``matcher.past_work``)
    # The query's references, from its unfiltered retrieval (``hybrid.gather``), so that no filter or k moves
    # a candidate's relative signals: the best dense, BM25 and past_work values.
    top_dense: float
    top_bm25: float
    top_past_work: float
    records: TrackRecords | None = None  # organisations' track records (the full model only)
    linked: np.ndarray | None = None  # how many of the query's strong text matches each has worked with

    @cached_property
    def track(self) -> np.ndarray:
        """Each candidate's track-record values (``TrackRecords.feature_rows``: columns ``TRACK_FEATURES``)."""
        return self.records.feature_rows(np.asarray(self.nums, np.int64))


@dataclass(frozen=True)
class Feature:
    name: str
    doc: str
    group: str  # the explanation's signal group (``matcher.explain.SIGNAL_GROUPS``)
    compute: Callable[[Signals], Sequence[float]]
    track_record: bool = False  # needs a track record: read by the full model only, 0 for the text model


def relative(values: np.ndarray, top: float) -> np.ndarray:
    """Values over the reference ``top`` (all zero when it is not positive)."""
    return values / top if top > 0 else np.zeros_like(values)


def _track(name: str) -> Callable[[Signals], np.ndarray]:
    return lambda s: s.track[:, TRACK_FEATURES.index(name)]


REGISTRY: tuple[Feature, ...] = (
    Feature("dense", "cosine of the query and profile embeddings", "meaning", lambda s: s.dense),
    Feature("dense_gap", "dense minus the best dense of this query's unfiltered retrieval (<= 0)", "meaning",
            lambda s: s.dense - s.top_dense),
    Feature("best_sentence", "best cosine of the query with one sentence of the profile (e.g. a past project title)",
            "meaning", lambda s: s.best_sentence),
    Feature("bm25", "BM25 over the best BM25 of this query's unfiltered retrieval, in [0, 1]", "key_terms",
            lambda s: relative(s.bm25, s.top_bm25)),
    Feature("projects", "log(1 + past projects)", "track_record", _track("projects"), True),
    Feature("coordinated", "log(1 + projects coordinated)", "track_record", _track("coordinated"), True),
    Feature("partners", "log(1 + distinct partners)", "track_record", _track("partners"), True),
    Feature("years_since", "years from the organisation's last project to the newest in the store, capped at 5",
            "track_record", _track("years_since"), True),
    Feature("linked_seeds", "log(1 + how many of the query's strongest text matches it has worked with)",
            "worked_with_matches", lambda s: np.log1p(np.maximum(np.asarray(s.linked, np.float64), 0.0)), True),
    Feature("past_work", "log of the kernel mass of the query's title over past project titles and profile sentences",
            "similar_past_work", lambda s: s.past_work),
    Feature("past_work_gap", "past_work minus the best past_work of this query's unfiltered retrieval (<= 0)",
            "similar_past_work", lambda s: s.past_work - s.top_past_work),
)
FEATURES = tuple(f.name for f in REGISTRY)  # column order
TEXT_FEATURES = tuple(f.name for f in REGISTRY if not f.track_record)  # what the text model may read


def feature_matrix(signals: Signals, with_track_records: bool) -> np.ndarray:
    """One row per candidate, one column per registry feature (track-record ones 0 unless asked)."""
    X = np.zeros((len(signals.nums), len(REGISTRY)))
    for f in REGISTRY:
        if with_track_records or not f.track_record:
            X[:, FEATURES.index(f.name)] = f.compute(signals)
    return X
