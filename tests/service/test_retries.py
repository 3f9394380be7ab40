"""Safe retries: Idempotency-Key on the POSTs that create, ETag and If-Match on entities (service/retries.py)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import pytest
from sqlalchemy import func, inspect, select, text, update

from matcher.engine import Engine
from models.enums import EntityKind
from models.errors import PreconditionFailed
from models.keys import KeyStore
from models.store import Store, entity_tag
from models.tables import api_keys, changes, idempotency_keys, jobs
from tests.conftest import ORGS

ORG = EntityKind.organisations
NEW = {"name": "HydroLoop", "type": "startup", "description": "Greywater recycling for apartment blocks."}


def rows(engine, table) -> int:
    with engine.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def key(value: str) -> dict:
    return {"Idempotency-Key": value}


def test_a_retried_create_gets_the_first_answer_and_writes_nothing(client, engine):
    first = client.post("/v1/organisations", json=NEW, headers=key("create-1"))
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    orgs, logged = engine.store.count(ORG), rows(engine, changes)
    # the same request (key order and spacing aside) is answered as the first time, and nothing is written
    again = client.post("/v1/organisations", data='{"description": "Greywater recycling for apartment blocks.",'
                        '  "type": "startup", "name": "HydroLoop"}', content_type="application/json", headers=key("create-1"))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() and again.headers["ETag"] == first.headers["ETag"]
    assert (engine.store.count(ORG), rows(engine, changes)) == (orgs, logged) == (1, 1)
    # the same key for another request is refused, and writes nothing either
    for path, body in [("/v1/organisations", {**NEW, "name": "HydroLoop BV"}), ("/v1/challenges", {"title": "t", "description": "d"})]:
        r = client.post(path, json=body, headers=key("create-1"))
        error = r.get_json()["error"]
        assert r.status_code == 409 and error["code"] == "idempotency_conflict"
        assert error["details"][0]["field"] == "Idempotency-Key"
    assert engine.store.count(ORG) == 1 and engine.store.count(EntityKind.challenges) == 0
    # without a key, or with another one, the same body is a new organisation
    assert client.post("/v1/organisations", json=NEW, headers=key("create-2")).status_code == 201
    assert client.post("/v1/organisations", json=NEW).status_code == 201
    assert engine.store.count(ORG) == 3


def test_a_refused_create_records_nothing_and_bad_keys_are_400(client, engine):
    r = client.post("/v1/organisations", json={**NEW, "type": "dragon"}, headers=key("k"))
    assert r.status_code == 400
    assert client.post("/v1/organisations", json=NEW, headers=key("k")).status_code == 201  # not 409: nothing was kept
    for bad in ["", "x" * 256, "with space", "caf\u00e9"]:
        r = client.post("/v1/organisations", json=NEW, headers={"Idempotency-Key": bad.encode("utf-8").decode("latin-1")})
        assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert engine.store.count(ORG) == 1


def test_bulk_and_jobs_are_idempotent(client, engine):
    items = [{k: v for k, v in o.items() if k != "id"} for o in ORGS[:3]]  # no ids: each write makes new ones
    first = client.post("/v1/organisations/bulk", json={"items": items}, headers=key("bulk"))
    again = client.post("/v1/organisations/bulk", json={"items": items}, headers=key("bulk"))
    assert first.status_code == again.status_code == 200 and again.get_json() == first.get_json()
    assert engine.store.count(ORG) == 3
    body = {"queries": [{"text": "battery storage"}, {"text": "leak detection"}], "k": 2}
    job = client.post("/v1/jobs/batch-match", json=body, headers=key("job"))
    retry = client.post("/v1/jobs/batch-match", json=body, headers=key("job"))
    assert job.status_code == retry.status_code == 202 and retry.get_json() == job.get_json()
    assert retry.headers["Location"] == job.headers["Location"] and rows(engine, jobs) == 1
    assert client.post("/v1/jobs/batch-match", json={**body, "k": 3}, headers=key("job")).status_code == 409
    assert rows(engine, jobs) == 1


def test_keys_expire_after_24_hours(client, engine):
    assert client.post("/v1/organisations", json=NEW, headers=key("old")).status_code == 201
    with engine.store.engine.begin() as conn:  # the record was made 24 hours and a second ago
        conn.execute(update(idempotency_keys).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=24, seconds=1)))
    r = client.post("/v1/organisations", json={**NEW, "name": "Other"}, headers=key("old"))
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers  # a new request under the old key
    assert client.post("/v1/organisations", json={**NEW, "name": "Other"}, headers=key("old")).headers["Idempotent-Replayed"] == "true"
    assert engine.store.count(ORG) == 2 and rows(engine, idempotency_keys) == 1  # the expired record is gone


def test_concurrent_requests_with_one_key_create_once(app, engine):
    answers = []

    def send():
        answers.append(app.test_client().post("/v1/organisations", json=NEW, headers=key("race")))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.get_json()["id"] for a in answers}) == 1 and engine.store.count(ORG) == 1


def test_a_request_that_loses_the_race_for_its_key_is_answered_by_the_winner(client, engine, monkeypatch):
    """Two requests with one key both find no record: the second's create fails on the key's unique constraint in
    its own transaction (nothing of it is kept), and it answers with the first one's record."""
    from models import idempotency

    first = client.post("/v1/organisations", json=NEW, headers=key("race"))
    find, looked = idempotency.IdempotencyKeys.find, []
    monkeypatch.setattr(idempotency.IdempotencyKeys, "find",
                        lambda self, *args: None if not looked.append(1) and len(looked) == 1 else find(self, *args))
    again = client.post("/v1/organisations", json=NEW, headers=key("race"))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true" and len(looked) == 2
    assert again.get_json() == first.get_json() and engine.store.count(ORG) == 1 and rows(engine, changes) == 1


def test_deleting_an_entity_forgets_the_answers_that_held_it(client, engine):
    created = client.post("/v1/organisations", json={**NEW, "contact_email": "a@hydroloop.example.org"}, headers=key("erase"))
    client.post("/v1/organisations/bulk", json={"items": ORGS[:2]}, headers=key("bulk"))
    assert rows(engine, idempotency_keys) == 2
    assert client.delete(f"/v1/organisations/{created.get_json()['id']}").status_code == 204
    with engine.store.engine.connect() as conn:
        kept = conn.execute(select(idempotency_keys.c.idempotency_key, idempotency_keys.c.response)).all()
    assert [k for k, _ in kept] == ["bulk"] and "hydroloop" not in str(kept).lower()


def test_key_creation_is_idempotent_without_storing_the_secret(settings, encoder):
    from service import create_app

    settings = dataclasses.replace(settings, auth=True, rate_limit=0)
    engine = Engine(settings, encoder=encoder).open()
    client = create_app(settings, engine).test_client()
    secret, _ = KeyStore(engine.store).create("t", "admin")
    admin = {"Authorization": f"Bearer {secret}", **key("new-key")}
    first = client.post("/v1/keys", json={"scopes": ["read"], "label": "reporting"}, headers=admin)
    again = client.post("/v1/keys", json={"scopes": ["read"], "label": "reporting"}, headers=admin)
    assert first.status_code == again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    made = first.get_json()
    assert made["key"].startswith("mk_") and again.get_json() == {k: v for k, v in made.items() if k != "key"}
    assert rows(engine, api_keys) == 2
    with engine.store.engine.connect() as conn:
        assert made["key"].split("_")[2] not in str(conn.execute(select(idempotency_keys)).all())


def test_etag_changes_on_every_write_and_if_match_guards_them(client, engine):
    created = client.post("/v1/organisations", json={**NEW, "id": "hydro"})
    tag = created.headers["ETag"]
    read = client.get("/v1/organisations/hydro")
    assert read.headers["ETag"] == tag and tag.startswith('"') and tag.endswith('"')
    assert client.get("/v1/organisations/hydro", headers={"If-None-Match": tag}).status_code == 304
    assert client.get("/v1/organisations/hydro", headers={"If-None-Match": '"other"'}).status_code == 200
    body = read.get_json()
    put = client.put("/v1/organisations/hydro", json={**body, "city": "Athens"}, headers={"If-Match": tag})
    assert put.status_code == 200 and put.headers["ETag"] not in (tag, None)
    assert put.headers["ETag"] == client.get("/v1/organisations/hydro").headers["ETag"]
    current, logged = client.get("/v1/organisations/hydro").get_json(), rows(engine, changes)
    for method, payload in [("put", {**body, "city": "Sparta"}), ("patch", {"city": "Sparta"}), ("delete", None)]:
        for stale in (tag, f"W/{put.headers['ETag']}"):  # an old tag; a weak one never matches
            r = getattr(client, method)("/v1/organisations/hydro", json=payload, headers={"If-Match": stale})
            error = r.get_json()["error"]
            assert r.status_code == 412 and error["code"] == "precondition_failed"
            assert error["details"] == [{"field": "If-Match", "problem": "does not match the current ETag"}]
    assert client.get("/v1/organisations/hydro").get_json() == current and rows(engine, changes) == logged
    patched = client.patch("/v1/organisations/hydro", json={"city": "Sparta"}, headers={"If-Match": f'"x", {put.headers["ETag"]}'})
    assert patched.status_code == 200 and patched.headers["ETag"] != put.headers["ETag"]
    assert client.put("/v1/organisations/hydro", json={**body, "city": "Patras"}, headers={"If-Match": "*"}).status_code == 200
    assert client.delete("/v1/organisations/hydro", headers={"If-Match": client.get("/v1/organisations/hydro").headers["ETag"]}).status_code == 204
    assert client.delete("/v1/organisations/missing", headers={"If-Match": "*"}).status_code == 404


def test_if_match_is_checked_inside_the_write_transaction(db_url):
    """A writer that read the entity before another one wrote it cannot overwrite it, whatever the timing."""
    store = Store(db_url)
    store.create_all()
    doc = {**NEW, "id": "hydro"}
    read = store.upsert(ORG, [(doc, None)])[0]
    store.upsert(ORG, [({**doc, "city": "Athens"}, None)])  # someone else's write, after our read
    with pytest.raises(PreconditionFailed):
        store.upsert(ORG, [({**doc, "city": "Sparta"}, None)], if_match={entity_tag(read)})
    with pytest.raises(PreconditionFailed):
        store.delete(ORG, "hydro", if_match={entity_tag(read)})
    now = store.get(ORG, "hydro")
    assert now["city"] == "Athens" and entity_tag(now) != entity_tag(read)
    assert store.upsert(ORG, [({**doc, "city": "Sparta"}, None)], if_match={entity_tag(now)})[0]["city"] == "Sparta"


def test_an_older_store_gains_the_idempotency_table(db_url):
    store = Store(db_url)
    store.create_all()
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE idempotency_keys"))
    Store(db_url).create_all()
    assert "idempotency_keys" in inspect(store.engine).get_table_names()
