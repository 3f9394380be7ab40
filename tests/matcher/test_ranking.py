"""Hybrid retrieval and the learned ranker: BM25, track records, the co-partnership graph, scores, explanations."""
import dataclasses
import json

import numpy as np
import pytest

from matcher.engine import Engine
from matcher.hybrid import rank
from matcher.index import Filter
from matcher.lexical import LexicalIndex
from matcher.ranker import DEFAULT_PATH, FEATURES, TEXT_FEATURES, Calibration, Ranker, sigmoid
from matcher.track_record import TrackRecords, record_of
from models.enums import EntityKind
from models.schemas import MatchRequest
from tests.conftest import ORGS, org

ORG = EntityKind.organisations


def req(**body) -> MatchRequest:
    return MatchRequest.model_validate(body)


def ids(result) -> list[str]:
    return [m["id"] for m in result["matches"]]


def test_bm25_prefers_rare_terms_and_follows_upserts_and_removals():
    lexical = LexicalIndex()
    lexical.upsert([1, 2, 3], ["battery storage for microgrids", "battery recycling plant", "perovskite solar cells"])
    nums, scores = lexical.scores("perovskite battery")
    assert nums[int(np.argmax(scores))] == 3  # the rare term outweighs the common one
    lexical.upsert([3], ["wind turbines"])  # replaced: the old text no longer matches
    nums, scores = lexical.scores("perovskite")
    assert scores.max() == 0
    lexical.remove([1])
    nums, scores = lexical.scores("battery microgrids")
    assert 1 not in nums.tolist() and len(nums) == 2


def test_track_records_count_projects_and_link_partners_both_ways():
    docs = [
        {"id": "a", "past_projects": [{"title": "P1", "year": 2021, "role": "coordinator", "partner_ids": ["b", "ghost"]},
                                      {"title": "P2", "year": 2022, "partner_ids": ["b"]}]},
        {"id": "b", "past_projects": []},  # lists nothing itself: the link comes from a's side
        {"id": "c", "n_past_projects": 7},
    ]
    record = record_of(docs[0])
    assert (record.projects, record.coordinated, record.last_year) == (2, 1, 2022)
    assert record.partners == ("b", "ghost") and record.partner_counts == (2, 1)  # "ghost" is not stored: no error
    assert record_of(docs[2]).projects == 7
    records = TrackRecords()
    records.upsert([1, 2, 3], docs)
    assert records.linked_to([2]) == {1: 1.0} and records.linked_to([1]) == {2: 1.0}
    assert records.neighbours(2) == {1}
    assert records.shared_with(2, [3, 1, 99]) == [1] and records.shared_with(99, [1]) == [] and records.shared_with(1, []) == []
    named = records.features(1)
    assert named["projects"] == pytest.approx(np.log1p(2)) and named["years_since"] == 0.0
    records.remove([1])
    assert records.linked_to([2]) == {}


def test_the_shipped_ranker_loads_and_a_broken_one_is_refused(tmp_path):
    ranker = Ranker.load(DEFAULT_PATH)
    assert set(ranker.full.features) <= set(FEATURES) and ranker.text.features == TEXT_FEATURES
    assert not {"projects", "coordinated", "partners", "years_since", "linked_seeds"} & set(TEXT_FEATURES)
    weight = dict(zip(ranker.full.features, ranker.full.coef))
    assert weight["best_sentence"] > 0 and weight["dense_gap"] > 0 and weight["projects"] > 0 and weight["linked_seeds"] > 0
    data = json.loads(DEFAULT_PATH.read_text())
    data["models"]["full"]["features"][0] = "horoscope"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown features"):
        Ranker.load(bad)
    # A calibration that would reverse the order, or names a model the artefact lacks, is refused too.
    for calibration, message in (({"full": {"slope": -0.5, "offset": 0.0}}, "slope must be a positive"),
                                 ({"fancy": {"slope": 1.0, "offset": 0.0}}, "unknown models")):
        data = json.loads(DEFAULT_PATH.read_text())
        data["calibration"] = calibration
        bad.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            Ranker.load(bad)


@pytest.fixture
def ecosystem(engine):
    """ORGS plus organisations with track records: one found only by its words, one only by who it worked with."""
    extra = [
        org("nordic-h2", "Nordic Hydrogen Institute", "Research on electrolysers and hydrogen valleys for ports.",
            "research_institute", country="DK", past_projects=[
                {"title": "Hydrogen for harbour cranes", "year": 2022, "role": "coordinator",
                 "partner_ids": ["port-consult", "not-stored-anywhere"]},
                {"title": "Green ammonia bunkering", "year": 2021, "partner_ids": ["port-consult"]}]),
        org("port-consult", "Port Logistics Consult", "Advisory on terminal operations and port logistics.",
            "large_company", country="NL", past_projects=[{"title": "Smart terminal scheduling", "year": 2022,
                                                           "partner_ids": ["nordic-h2"]}]),
        org("zyx", "Zyxolite Coatings", "Makes zyxolite: a coating that stops corrosion on steel.", "sme", country="IT"),
    ]
    engine.upsert_many(ORG, ORGS + extra)
    return engine


def test_scores_are_calibrated_probabilities_in_rank_order_with_signal_explanations(ecosystem):
    result = ecosystem.match(req(query={"text": "hydrogen electrolysers for port cranes"}, k=5))
    scores = [m["score"] for m in result["matches"]]
    assert ids(result)[0] == "nordic-h2"
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    why = result["matches"][0]["explanation"]
    assert set(why["signals"]) >= {"meaning", "key_terms", "track_record", "worked_with_matches"}
    assert list(why["signals"].values()) == sorted(why["signals"].values(), reverse=True)
    assert why["related_projects"][0]["title"] == "Hydrogen for harbour cranes"
    assert why["summary"].startswith(("Very strong", "Strong", "Good", "Possible", "Weak"))


def test_a_calibration_rescales_the_scores_and_their_shares_and_keeps_the_order(ecosystem):
    text = "hydrogen electrolysers for port cranes"
    vector, corpus = ecosystem.encoder.encode([text])[0], ecosystem.live.corpus(ORG)
    raw = rank(corpus, vector, text, Filter(), 8, dataclasses.replace(ecosystem.ranker, calibration={}))
    calibration = Calibration(0.5, -1.0)
    calibrated = rank(corpus, vector, text, Filter(), 8,
                      dataclasses.replace(ecosystem.ranker, calibration={"full": calibration}))
    assert len(raw) == 8 and [r.num for r in calibrated] == [r.num for r in raw]
    for before, after in zip(raw, calibrated):
        raw_logit = np.log(before.score / (1 - before.score))
        assert after.score == pytest.approx(float(sigmoid(np.array(0.5 * raw_logit - 1.0))), rel=1e-6)
        assert after.contributions == pytest.approx({f: 0.5 * c for f, c in before.contributions.items()})
    assert calibrated[0].score < raw[0].score


def test_a_partner_of_strong_matches_is_a_candidate_and_says_whom_it_worked_with(ecosystem):
    result = ecosystem.match(req(query={"text": "hydrogen electrolysers for port cranes"}, k=10))
    consult = next(m for m in result["matches"] if m["id"] == "port-consult")
    assert consult["explanation"]["worked_with"] == ["Nordic Hydrogen Institute"]


def test_a_rare_word_finds_its_profile_lexically(ecosystem):
    assert ids(ecosystem.match(req(query={"text": "zyxolite"}, k=3)))[0] == "zyx"


def test_without_any_track_record_the_text_model_ranks(engine):
    engine.upsert_many(ORG, ORGS)
    assert not engine.live.records.any_known()
    result = engine.match(req(query={"text": "leak detection for water pipes"}, k=3))
    assert ids(result)[0] == "aquasense"
    signals = result["matches"][0]["explanation"]["signals"]
    assert "track_record" not in signals and "worked_with_matches" not in signals
    # Without past project titles, the profile's own sentences are its past work, and the summary says so.
    assert signals["similar_past_work"] > 0
    assert "several passages of its text close to the query" in result["matches"][0]["explanation"]["summary"]
    assert "past work" not in result["matches"][0]["explanation"]["summary"]


def test_another_process_sees_text_and_track_record_changes(ecosystem, settings, encoder):
    other = Engine(settings, encoder=encoder).open()
    other.load_indexes()
    assert ids(other.match(req(query={"text": "zyxolite"}, k=1))) == ["zyx"]
    ecosystem.delete(ORG, "zyx")
    ecosystem.delete(ORG, "nordic-h2")
    assert "zyx" not in ids(other.match(req(query={"text": "zyxolite"}, k=3)))
    consult = other.indexes[ORG].num_of["port-consult"]
    assert other.live.records.neighbours(consult) == set()  # the deleted partner left the graph
    assert len(other.live.lexical[ORG]) == len(other.indexes[ORG])
