import pytest

from matcher.engine import Engine
from models.enums import EntityKind
from models.errors import InvalidInput, NotFoundError
from models.schemas import MatchRequest
from models.store import EmbeddingRecord
from tests.conftest import ORGS

ORG, CH = EntityKind.organisations, EntityKind.challenges


def req(**body) -> MatchRequest:
    return MatchRequest.model_validate(body)


def ids(result) -> list[str]:
    return [m["id"] for m in result["matches"]]


@pytest.fixture
def loaded(engine):
    engine.upsert_many(ORG, ORGS)
    engine.create(CH, {"id": "harbour", "title": "Batteries for the harbour microgrid",
                       "description": "The port wants battery storage to shave the peaks of shore power for ships.",
                       "owner_id": "ghent-energy", "needs": ["battery management systems"],
                       "preferred_partner_types": ["startup", "sme"], "sectors": ["smart energy"], "country": "BE"})
    return engine


def test_text_query_ranks_the_right_partner_first(loaded):
    assert ids(loaded.match(req(query={"text": "leak detection for water pipes"}, k=3)))[0] == "aquasense"
    assert ids(loaded.match(req(query={"text": "adaptive LED streetlights"}, k=3)))[0] == "lumen"


def test_challenge_query_explains_and_excludes_its_owner(loaded):
    result = loaded.match(req(query={"challenge_id": "harbour"}, k=6))
    assert "ghent-energy" not in ids(result)
    assert "voltgrid" in ids(result)[:3]
    why = next(m for m in result["matches"] if m["id"] == "voltgrid")["explanation"]
    assert "battery management systems" in why["offers_for_needs"]
    assert why["shared_sectors"] == ["smart energy"]
    assert why["closest_sentence"].startswith("Battery storage controllers")
    assert "partner type the challenge prefers" in why["type_fit"]
    scores = [m["score"] for m in result["matches"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_organisation_query_never_returns_itself_and_filters_give_k(loaded):
    result = loaded.match(req(query={"organisation_id": "voltgrid"}, k=10, explain=False))
    assert "voltgrid" not in ids(result) and len(ids(result)) == len(ORGS) - 1
    only = loaded.match(req(query={"organisation_id": "voltgrid"}, k=2, filters={"types": ["startup"]}))
    assert ids(only) == ["recyclo", "caremind"] or set(ids(only)) == {"recyclo", "caremind"}
    greek = loaded.match(req(query={"text": "batteries"}, k=5, filters={"countries": ["EL"]}))
    assert ids(greek) == ["recyclo"]
    assert "recyclo" not in ids(loaded.match(req(query={"text": "batteries"}, filters={"exclude_ids": ["recyclo"]})))


def test_challenges_target_defaults_to_open_ones(loaded):
    loaded.create(CH, {"id": "old", "title": "Battery tender 2024", "description": "Closed battery storage tender.",
                       "status": "closed"})
    assert ids(loaded.match(req(query={"organisation_id": "voltgrid"}, target="challenges"))) == ["harbour"]
    both = loaded.match(req(query={"organisation_id": "voltgrid"}, target="challenges", filters={"status": "any"}))
    assert set(ids(both)) == {"harbour", "old"}


def test_unknown_query_ids_are_not_found(loaded):
    with pytest.raises(NotFoundError):
        loaded.match(req(query={"challenge_id": "nope"}))


def test_challenge_owner_must_exist_and_nothing_is_written(loaded):
    with pytest.raises(InvalidInput) as info:
        loaded.upsert_many(CH, [{"title": "A", "description": "a"}, {"title": "B", "description": "b", "owner_id": "ghost"}])
    assert info.value.details[0]["field"] == "items[1].owner_id"
    assert loaded.store.count(CH) == 1


def test_explanations_use_sentence_vectors_stored_at_write_time(loaded, monkeypatch):
    calls = []
    real = loaded.encoder.encode_sentences
    monkeypatch.setattr(loaded.encoder, "encode_sentences", lambda s: calls.append(s) or real(s))
    result = loaded.match(req(query={"challenge_id": "harbour"}, k=6))
    # Nothing is embedded: the challenge's title, embedded alone for the past-work signal, was stored with it.
    title = loaded.get(CH, "harbour")["title"]
    assert calls == [] and all(m["explanation"]["closest_sentence"] for m in result["matches"])
    assert float(loaded.embedder.stored_title_vector(loaded.get(CH, "harbour")) @ real([title])[0]) > 0.999
    # A challenge stored without it (an older store) has its title embedded then, once per process.
    from models.tables import challenges

    with loaded.store.engine.begin() as conn:
        conn.execute(challenges.update().where(challenges.c.id == "harbour").values(project_vectors=None))
    loaded.embedder.forget_sentences()  # embedded when it was written
    for _ in range(2):
        again = loaded.match(req(query={"challenge_id": "harbour"}, k=6))["matches"]
        assert [m["id"] for m in again] == [m["id"] for m in result["matches"]]
    assert calls == [[title]]
    # A row stored without sentence vectors (an older store) is explained by embedding its sentences then.
    from models.tables import organisations

    with loaded.store.engine.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == "aquasense").values(sentence_vectors=None))
    loaded.live._explained.clear()  # rows explained above are kept decoded; a worker started on that store has none
    result = loaded.match(req(query={"text": "leak detection for water pipes"}, k=1))
    assert len(calls) == 2 and result["matches"][0]["explanation"]["closest_sentence"].startswith("Acoustic sensors")


def test_two_processes_agree_through_the_store(loaded, settings, encoder):
    other = Engine(settings, encoder=encoder).open()  # a second worker on the same database
    other.load_indexes()
    loaded.create(ORG, {"id": "hydro", "name": "HydroLoop", "type": "startup",
                        "description": "Greywater recycling units for apartment blocks.", "sectors": ["water"]})
    assert ids(other.match(req(query={"text": "greywater recycling for apartments"}, k=1))) == ["hydro"]
    other.delete(ORG, "hydro")
    for engine in (loaded, other):
        assert "hydro" not in ids(engine.match(req(query={"text": "greywater recycling for apartments"}, k=10)))
    # The organisation's challenge stays, without an owner, after the owner is deleted.
    other.delete(ORG, "ghent-energy")
    assert loaded.get(CH, "harbour")["owner_id"] is None


def test_unchanged_profiles_are_not_embedded_again(loaded, monkeypatch):
    calls = []
    real = loaded.encoder.encode_with_sentences
    monkeypatch.setattr(loaded.encoder, "encode_with_sentences", lambda texts: calls.append(list(texts)) or real(texts))
    loaded.upsert_many(ORG, ORGS)  # identical
    assert calls == []
    changed = [dict(o) for o in ORGS]
    changed[0]["description"] += " Now also for ports."
    loaded.upsert_many(ORG, changed)
    assert len(calls) == 1 and len(calls[0]) == 1
    loaded.patch(ORG, "lumen", {"tags": None, "website": "https://lumen.example"})  # website is not embedded
    assert len(calls) == 1


def test_a_model_change_is_detected_and_reindex_repairs_it(loaded, settings, encoder):
    stored = loaded.store.embeddings_of(ORG, ["aquasense"])["aquasense"]
    loaded.store.set_embeddings(ORG, {"aquasense": EmbeddingRecord(stored.vector, "some-older-model", stored.text_hash)})
    fresh = Engine(settings, encoder=encoder).open()
    fresh.load_indexes()
    status = fresh.status()
    assert status["stale_embeddings"]["organisations"] == 1 and status["ready"] is False
    assert fresh.reindex() == {"organisations": 1, "challenges": 0}
    assert fresh.status()["ready"] is True
    assert ids(fresh.match(req(query={"text": "leak detection for water pipes"}, k=1))) == ["aquasense"]


def test_snapshot_start_matches_store_start(loaded, settings, encoder):
    loaded.save_snapshots()
    loaded.create(ORG, {"id": "late", "name": "Late Co", "type": "sme", "description": "Hydrogen buses for cities."})
    warm = Engine(settings, encoder=encoder).open()
    warm.load_indexes()  # from the snapshot, then the change log
    assert warm.status()["ready"] and warm.status()["indexed"]["organisations"] == len(ORGS) + 1
    query = req(query={"text": "hydrogen buses"}, k=3, explain=False)
    assert ids(warm.match(query)) == ids(loaded.match(query))
    for path in settings.index_dir.glob("*.npz"):
        path.write_bytes(b"corrupt")
    cold = Engine(settings, encoder=encoder).open()
    cold.load_indexes()  # a corrupt snapshot is rebuilt from the store
    assert ids(cold.match(query)) == ids(loaded.match(query))


def test_sentence_cache_never_evicts_what_a_request_needs(engine, monkeypatch):
    import matcher.embedding as embedding_module

    monkeypatch.setattr(embedding_module, "_SENTENCE_CACHE", 3)
    first = engine.embedder.sentence_vectors(["one sentence.", "two sentences."])
    both = engine.embedder.sentence_vectors(["three.", "four.", "five.", "one sentence."])
    assert both.shape == (4, engine.encoder.dim) and len(engine.embedder._sentences) == 3
    assert abs(float(both[3] @ first[0]) - 1.0) < 1e-5


def test_explanations_follow_an_updated_profile(loaded):
    """The decoded rows kept for explanations (MATCHER_EXPLAIN_CACHE) are dropped when their row changes."""
    query = req(query={"text": "leak detection for water pipes"}, k=1)
    first = loaded.match(query)["matches"][0]["explanation"]["closest_sentence"]
    assert first.startswith("Acoustic sensors") and loaded.live._explained
    changed = {**loaded.get(ORG, "aquasense"), "description": "Hydrophones that hear leaks in water mains at night."}
    loaded.upsert_many(ORG, [changed])
    again = loaded.match(query)["matches"][0]
    assert again["id"] == "aquasense" and again["explanation"]["closest_sentence"].startswith("Hydrophones")
