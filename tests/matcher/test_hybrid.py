"""Hybrid retrieval: reciprocal rank fusion, the top-n helper, and gather/rank on a small real corpus."""
import numpy as np
import pytest

from matcher.features import FEATURES, REGISTRY, TEXT_FEATURES
from matcher.hybrid import _best, gather, rank, ranking_model, reciprocal_rank_fusion
from matcher.index import Filter
from models.enums import EntityKind
from tests.conftest import ORGS, org

ORG = EntityKind.organisations
TRACK_RECORD = [f.name for f in REGISTRY if f.track_record]


def column(found, name: str) -> np.ndarray:
    return found.X[:, FEATURES.index(name)]


def test_reciprocal_rank_fusion_sums_reciprocal_ranks_and_breaks_ties_by_item():
    # 3: 1/61 + 1/63 beats 2: 2/62 by a hair; 1 and 4 appear once, at ranks 1 and 3.
    assert reciprocal_rank_fusion([[1, 2, 3], [3, 2, 4]]) == [3, 2, 1, 4]
    assert reciprocal_rank_fusion([[7, 5], [5, 7]]) == [5, 7]  # equal sums: the smaller item first
    assert reciprocal_rank_fusion([["b"], ["a"]]) == ["a", "b"]
    assert reciprocal_rank_fusion([[1, 2], [2]], k=0) == [2, 1]  # 1/2 + 1/1 against 1/1
    assert reciprocal_rank_fusion([]) == []


def test_best_keeps_the_n_best_positive_values_the_mask_allows_best_first():
    values = np.array([0.5, 0.0, 2.0, 1.0, 0.2, 1.0])  # over num space: num 3 and 5 tie
    assert _best(values, None, 3).tolist() == [2, 3, 5]  # ties by num
    assert _best(values, None, 10).tolist() == [2, 3, 5, 0, 4]  # a zero value is no match
    assert _best(values, np.array([True, True, False, True, True, False]), 2).tolist() == [3, 0]
    assert _best(np.zeros(5), None, 3).tolist() == []
    assert _best(np.zeros(0), None, 3).tolist() == []


@pytest.fixture
def tracked(engine):
    """ORGS plus organisations with track records (one of them coordinated, one older, two partners)."""
    engine.upsert_many(ORG, ORGS + [
        org("nordic-h2", "Nordic Hydrogen Institute", "Research on electrolysers and hydrogen valleys for ports.",
            "research_institute", country="DK", past_projects=[
                {"title": "Hydrogen for harbour cranes", "year": 2022, "role": "coordinator", "partner_ids": ["port-consult"]},
                {"title": "Green ammonia bunkering", "year": 2021, "partner_ids": ["port-consult"]}]),
        org("port-consult", "Port Logistics Consult", "Advisory on terminal operations and port logistics.",
            "large_company", country="NL", past_projects=[{"title": "Smart terminal scheduling", "year": 2019,
                                                           "partner_ids": ["nordic-h2"]}]),
    ])
    return engine


def query(engine, text: str):
    return engine.encoder.encode([text])[0], text


def test_gather_fills_every_registry_feature_and_finds_the_obvious_match(tracked):
    vector, text = query(tracked, "hydrogen electrolysers for port cranes")
    corpus, num_of = tracked.live.corpus(ORG), tracked.indexes[ORG].num_of
    found = gather(corpus, vector, text, Filter(), 50, 5)
    assert found.model_name == "full" == ranking_model(corpus.records)
    assert found.X.shape == (len(found.nums), len(FEATURES)) == (len(ORGS) + 2, 11)
    assert np.all(np.any(found.X != 0, axis=0)), "every feature has a value for some candidate"
    row = {n: i for i, n in enumerate(found.nums)}
    h2, consult = row[num_of["nordic-h2"]], row[num_of["port-consult"]]
    assert found.nums[int(np.argmax(column(found, "dense")))] == num_of["nordic-h2"]
    dense = np.array([corpus.vectors.vector(n) @ vector for n in found.nums])
    assert column(found, "dense") == pytest.approx(dense, abs=1e-5)
    for gap in ("dense_gap", "past_work_gap"):
        assert column(found, gap).max() == 0.0 and (column(found, gap) <= 0).all()
    assert column(found, "bm25").max() == 1.0
    assert column(found, "projects")[h2] == pytest.approx(np.log1p(2))
    assert column(found, "coordinated")[h2] == pytest.approx(np.log1p(1)) and column(found, "coordinated")[consult] == 0
    assert column(found, "partners")[consult] == pytest.approx(np.log1p(1))
    assert column(found, "years_since")[consult] == 3.0 and column(found, "years_since")[h2] == 0.0
    assert column(found, "linked_seeds")[consult] > 0 and num_of["nordic-h2"] in found.seeds
    assert column(found, "past_work")[h2] == column(found, "past_work").max()


def test_without_track_records_only_the_text_features_are_filled(engine):
    engine.upsert_many(ORG, ORGS)
    vector, text = query(engine, "leak detection for water pipes")
    found = gather(engine.live.corpus(ORG), vector, text, Filter(), 50, 5)
    assert found.model_name == "text" and not found.linked.any()
    assert not found.X[:, [FEATURES.index(f) for f in TRACK_RECORD]].any()
    assert found.X[:, [FEATURES.index(f) for f in TEXT_FEATURES]].any(axis=0).all()
    assert found.nums[int(np.argmax(column(found, "bm25")))] == engine.indexes[ORG].num_of["aquasense"]


def test_gather_keeps_to_the_filter_and_rank_adds_the_type_bonus(tracked):
    vector, text = query(tracked, "battery storage for a port")
    corpus, index = tracked.live.corpus(ORG), tracked.indexes[ORG]
    belgian = gather(corpus, vector, text, Filter(countries=("BE",)), 50, 5)
    assert belgian.nums and {index.meta[n]["country"] for n in belgian.nums} == {"BE"}
    startups = {n for n, m in index.meta.items() if m["type"] == "startup"}
    ranked = rank(corpus, vector, text, Filter(), 20, tracked.ranker, type_fit=lambda n: n in startups)
    assert len(ranked) == len(index) and [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    slope = tracked.ranker.calibration_of("full").slope
    for r in ranked:
        assert set(r.features) == set(FEATURES)
        bonus = r.contributions.get("type_fit")
        assert bonus == pytest.approx(tracked.ranker.preferred_type_bonus * slope) if r.num in startups else bonus is None
