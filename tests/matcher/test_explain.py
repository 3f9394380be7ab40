"""Explanations: signal groups, key and shared terms, closest sentence, related projects and the summary line."""
import numpy as np
import pytest

from matcher import explain
from matcher.features import FEATURES


def test_signal_groups_cover_every_feature_once_and_sum_their_shares():
    grouped = [f for group, names in explain.SIGNAL_GROUPS.items() if group != "type_fit" for f in names]
    assert sorted(grouped) == sorted(FEATURES) and len(grouped) == len(set(grouped))
    assert explain.SIGNAL_GROUPS["meaning"] == ("dense", "dense_gap", "best_sentence")
    assert explain.SIGNAL_GROUPS["type_fit"] == ("type_fit",)
    signals = explain.signals({"dense": 0.5, "dense_gap": -0.2, "best_sentence": 0.1, "bm25": 0.3, "type_fit": 0.7,
                               "projects": -0.01234, "years_since": -0.0})
    assert signals == {"type_fit": 0.7, "meaning": 0.4, "key_terms": 0.3, "track_record": -0.012}
    assert list(signals) == ["type_fit", "meaning", "key_terms", "track_record"]  # largest first
    assert explain.signals({}) == {}


def test_key_terms_drop_stop_words_and_fold_plurals():
    assert explain.key_terms("Sensors and batteries for the city of Ghent") == {
        "sensor": "sensors", "battery": "batteries", "ghent": "ghent"}
    query = explain.key_terms("acoustic leak sensors for pipes")
    shared = explain.shared_terms(query, "Acoustic sensor network finds leaks in water pipes.")
    assert shared == ["acoustic", "sensor", "leaks", "pipes"]  # most specific (longest) first, as the text says them
    assert explain.shared_terms(query, "Acoustic sensor network finds leaks in water pipes.", limit=2) == ["acoustic", "sensor"]
    assert explain.phrase_overlap(["battery storage"], ["battery management systems", "microgrid control"]) == [
        "battery management systems"]


def test_closest_sentence_is_the_most_similar_one():
    vectors = np.eye(3, dtype=np.float32)
    sentences = ["about water.", "about light.", "about care."]
    best, similarity = explain.closest_sentence(np.array([0.1, 0.9, 0.2], np.float32), sentences, vectors)
    assert best == "about light." and similarity == pytest.approx(0.9)
    assert explain.closest_sentence(np.ones(3, np.float32), [], np.zeros((0, 3), np.float32)) is None


def test_related_projects_prefer_title_similarity_then_shared_terms_once_each():
    projects = [{"title": "Harbour cranes on hydrogen", "year": 2022, "role": "coordinator"},
                {"title": "Green ammonia", "year": 2021},
                {"title": "Harbour cranes on hydrogen", "year": 2020},
                {"title": "Unrelated bakery"}]
    terms = explain.key_terms("hydrogen for harbour cranes")
    found = explain.related_projects(np.ones(2), terms, projects, [], np.zeros((0, 2)),
                                     title_similarity={"Green ammonia": 0.8})
    assert [p["title"] for p in found] == ["Green ammonia", "Harbour cranes on hydrogen"]
    assert found[0]["similarity"] == 0.8 and found[1]["similarity"] is None and found[1]["role"] == "coordinator"


@pytest.mark.parametrize("score, words", [(0.5, "very strong match"), (0.4949, "strong match"), (0.25, "strong match"),
                                          (0.1, "good match"), (0.03, "possible match"), (0.0294, "weak match")])
def test_score_words_follow_the_documented_bands(score, words):
    assert explain.score_words(score) == words


@pytest.mark.parametrize("score, phrase", [(0.2465, "Strong match (0.25)"), (0.2449, "Good match (0.24)"),
                                           (0.4999, "Very strong match (0.50)"), (0.0999, "Good match (0.10)"),
                                           (0.0299, "Possible match (0.030)"), (0.005, "Weak match (0.005)")])
def test_score_words_agree_with_the_number_shown(score, phrase):
    """Issue 27: 0.2465 read "Good match (0.25)" and 0.005 "Weak match (0.00)": the band is the shown number's."""
    assert explain.score_phrase(score) == phrase
    assert phrase.startswith(explain.score_words(score).capitalize()) and explain.score_number(score) in phrase


def test_summary_names_the_positive_reasons_strongest_first():
    line = explain.summary(0.62, signals={"key_terms": 0.8, "meaning": 0.3, "track_record": -0.1},
                           shared=["leak", "pipes"], sectors=["water"], offers=["acoustic leak detection"], type_fit=None,
                           projects=[{"title": "Smart pipes"}], worked_with=[])
    assert line == ("Very strong match (0.62): both mention leak, pipes; close in meaning to the query, e.g. past project "
                    "'Smart pipes'; offers 'acoustic leak detection' that the query needs; shares the sector water.")
    without_projects = explain.summary(0.12, signals={"similar_past_work": 0.5}, shared=[], sectors=[], offers=[],
                                       type_fit=None, projects=[], worked_with=[], has_past_projects=False)
    assert without_projects == "Good match (0.12): several passages of its text close to the query."
    fallback = explain.summary(0.01, signals={"meaning": -0.2}, shared=["zyxolite"], sectors=[], offers=[], type_fit=None,
                               projects=[], worked_with=["A", "B", "C"])
    assert fallback == "Weak match (0.010): both mention zyxolite."
    partners = explain.summary(0.3, signals={"worked_with_matches": 0.4, "type_fit": 0.2}, shared=[], sectors=["a", "b"],
                               offers=[], type_fit="an SME is a partner type the challenge prefers", projects=[],
                               worked_with=["A", "B", "C"])
    assert partners == ("Strong match (0.30): has worked with A, B; an SME is a partner type the challenge prefers; "
                        "shares the sectors a, b.")
