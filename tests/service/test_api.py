"""Every endpoint through the Flask test client, with its errors."""
import pytest

from tests.conftest import ORGS


def error_fields(response) -> set[str]:
    body = response.get_json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    return {d["field"] for d in body["error"]["details"]}


@pytest.fixture
def seeded(client):
    assert client.post("/v1/organisations/bulk", json={"items": ORGS}).status_code == 200
    return client


def test_create_read_replace_patch_delete(client):
    r = client.post("/v1/organisations", json={"name": "HydroLoop", "type": "startup", "country": "EL",
                                               "description": "Greywater recycling for apartment blocks."})
    assert r.status_code == 201
    org = r.get_json()
    assert org["country"] == "GR" and org["id"] and org["created_at"] == org["updated_at"]
    oid = org["id"]
    assert client.get(f"/v1/organisations/{oid}").get_json()["name"] == "HydroLoop"
    assert client.post("/v1/organisations", json={**org}).status_code == 409  # same id again
    put = client.put(f"/v1/organisations/{oid}", json={**org, "name": "HydroLoop BV", "city": "Athens"})
    assert put.status_code == 200 and put.get_json()["name"] == "HydroLoop BV"
    assert put.get_json()["created_at"] == org["created_at"]
    patched = client.patch(f"/v1/organisations/{oid}", json={"offers": ["greywater units"], "city": None})
    assert patched.status_code == 200 and patched.get_json()["offers"] == ["greywater units"]
    assert patched.get_json()["city"] is None and patched.get_json()["name"] == "HydroLoop BV"
    assert client.delete(f"/v1/organisations/{oid}").status_code == 204
    for method in ("get", "put", "patch", "delete"):
        r = getattr(client, method)(f"/v1/organisations/{oid}", json={"name": "x", "type": "sme", "description": "y"})
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_bad_input_is_400_naming_the_field(client):
    r = client.post("/v1/organisations", data="{not json", content_type="application/json")
    assert r.status_code == 400 and error_fields(r) == {"body"}
    r = client.post("/v1/organisations", json=["a list"])
    assert r.status_code == 400 and error_fields(r) == {"body"}
    r = client.post("/v1/organisations", json={"name": "x", "type": "dragon", "description": "y", "k": 1})
    assert r.status_code == 400 and error_fields(r) == {"type", "k"}
    r = client.post("/v1/organisations", json={"name": "x", "type": "sme", "description": "y" * 50_001})
    assert r.status_code == 400 and error_fields(r) == {"description"}
    r = client.patch("/v1/organisations/none", json={"type": "x"})
    assert r.status_code == 404


def test_patch_validation_keeps_the_stored_entity(seeded):
    r = seeded.patch("/v1/organisations/lumen", json={"type": "lamp"})
    assert r.status_code == 400 and error_fields(r) == {"type"}
    assert seeded.get("/v1/organisations/lumen").get_json()["type"] == "sme"


def test_bulk_is_all_or_nothing(client):
    items = [*ORGS[:3], {"name": "Broken", "type": "sme"}]
    r = client.post("/v1/organisations/bulk", json={"items": items})
    assert r.status_code == 400 and error_fields(r) == {"items[3].description"}
    assert client.get("/v1/organisations").get_json()["items"] == []
    assert client.post("/v1/organisations/bulk", json={"items": []}).status_code == 400
    assert client.post("/v1/organisations/bulk", json={"things": []}).status_code == 400
    too_many = {"items": [{"name": f"n{i}", "type": "sme", "description": "d"} for i in range(1001)]}
    r = client.post("/v1/organisations/bulk", json=too_many)
    assert r.status_code == 400 and error_fields(r) == {"items"}
    r = client.post("/v1/organisations/bulk", json={"items": ORGS})
    assert r.status_code == 200 and r.get_json()["count"] == len(ORGS)


def test_list_filters_and_cursor_pages(seeded):
    seen, cursor = [], None
    while True:
        r = seeded.get("/v1/organisations", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})})
        body = r.get_json()
        seen += [o["id"] for o in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(o["id"] for o in ORGS)
    startups = seeded.get("/v1/organisations?type=startup").get_json()["items"]
    assert {o["id"] for o in startups} == {"voltgrid", "caremind", "recyclo"}
    assert [o["id"] for o in seeded.get("/v1/organisations?country=EL").get_json()["items"]] == ["recyclo"]
    for query, field in [("limit=0", "limit"), ("limit=abc", "limit"), ("type=wizard", "type"),
                         ("country=XX", "country"), ("cursor=%%%", "cursor"), ("colour=red", "colour")]:
        r = seeded.get(f"/v1/organisations?{query}")
        assert r.status_code == 400 and error_fields(r) == {field}, query


def test_challenges_crud_and_owner_check(seeded):
    body = {"id": "port", "title": "Batteries for the harbour", "description": "Peak shaving for shore power.",
            "owner_id": "ghent-energy", "deadline": "2027-05-01", "preferred_partner_types": ["startup"]}
    r = seeded.post("/v1/challenges", json=body)
    assert r.status_code == 201 and r.get_json()["status"] == "open"
    r = seeded.post("/v1/challenges", json={**body, "id": "other", "owner_id": "ghost"})
    assert r.status_code == 400 and error_fields(r) == {"owner_id"}
    assert seeded.get("/v1/challenges?status=open").get_json()["items"][0]["id"] == "port"
    assert seeded.get("/v1/challenges?status=closed").get_json()["items"] == []
    assert seeded.patch("/v1/challenges/port", json={"status": "closed"}).get_json()["status"] == "closed"
    assert seeded.get("/v1/challenges?status=maybe").status_code == 400


def test_match_text_challenge_and_organisation(seeded):
    r = seeded.post("/v1/match", json={"query": {"text": "acoustic leak detection for water pipes"}, "k": 3})
    assert r.status_code == 200
    body = r.get_json()
    assert body["took_ms"] >= 0 and len(body["matches"]) == 3
    top = body["matches"][0]
    assert top["id"] == "aquasense" and set(top) >= {"id", "name", "type", "country", "score", "explanation"}
    assert top["explanation"]["closest_sentence"] and "leak" in " ".join(top["explanation"]["shared_terms"])
    r = seeded.post("/v1/match", json={"query": {"organisation_id": "voltgrid"}, "k": 100, "explain": False})
    ids = [m["id"] for m in r.get_json()["matches"]]
    assert "voltgrid" not in ids and len(ids) == len(ORGS) - 1
    assert all(m["explanation"] is None for m in r.get_json()["matches"])
    seeded.post("/v1/challenges", json={"id": "port", "title": "Harbour batteries", "description": "Shore power peaks.",
                                        "owner_id": "ghent-energy"})
    r = seeded.post("/v1/match", json={"query": {"challenge_id": "port"}, "filters": {"types": ["startup"]}})
    assert {m["type"] for m in r.get_json()["matches"]} == {"startup"}
    r = seeded.post("/v1/match", json={"query": {"organisation_id": "voltgrid"}, "target": "challenges"})
    assert [m["id"] for m in r.get_json()["matches"]] == ["port"]


@pytest.mark.parametrize("body,fields", [
    ({"query": {"text": "x"}, "k": 0}, {"k"}),
    ({"query": {"text": "x"}, "k": 101}, {"k"}),
    ({"query": {"text": "x"}, "k": "ten"}, {"k"}),
    ({"query": {"text": "x"}, "target": "people"}, {"target"}),
    ({"query": {"text": "x"}, "filters": {"types": ["wizard"]}}, {"filters.types[0]"}),
    ({"query": {"text": "x"}, "filters": {"countries": ["Atlantis"]}}, {"filters.countries[0]"}),
    ({"query": {"text": "x", "challenge_id": "y"}}, {"query"}),
    ({"query": {}}, {"query"}),
    ({"query": {"text": ""}}, {"query.text"}),
    ({}, {"query"}),
    ({"query": {"text": "x"}, "explain": "maybe"}, {"explain"}),
])
def test_match_rejects_bad_requests(seeded, body, fields):
    r = seeded.post("/v1/match", json=body)
    assert r.status_code == 400 and error_fields(r) == fields


def test_match_unknown_ids_are_404(seeded):
    for query in ({"challenge_id": "nope"}, {"organisation_id": "nope"}):
        r = seeded.post("/v1/match", json={"query": query})
        assert r.status_code == 404 and error_fields(r) == {f"query.{next(iter(query))}"}


def test_match_batch(seeded):
    r = seeded.post("/v1/match/batch", json={"requests": [
        {"query": {"text": "street lighting"}, "k": 1},
        {"query": {"organisation_id": "caremind"}, "k": 2, "explain": False},
    ]})
    results = r.get_json()["results"]
    assert [m["id"] for m in results[0]["matches"]] == ["lumen"] and len(results[1]["matches"]) == 2
    r = seeded.post("/v1/match/batch", json={"requests": [{"query": {"text": "x"}}, {"query": {"text": "x"}, "k": 500}]})
    assert r.status_code == 400 and error_fields(r) == {"requests[1].k"}
    assert seeded.post("/v1/match/batch", json={"requests": [{"query": {"text": "x"}}] * 101}).status_code == 400


def test_health_ready_openapi_and_unknown_routes(seeded):
    assert seeded.get("/healthz").get_json() == {"status": "ok"}
    ready = seeded.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["indexed"]["organisations"] == len(ORGS)
    spec = seeded.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/organisations", "/v1/organisations/bulk", "/v1/organisations/{id}", "/v1/challenges",
                 "/v1/challenges/{id}", "/v1/match", "/v1/match/batch", "/healthz", "/readyz"):
        assert path in spec["paths"]
    assert {"OrganisationIn", "ChallengeIn", "MatchRequest", "MatchResponse", "Error"} <= set(spec["components"]["schemas"])
    r = seeded.get("/v1/nothing")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert seeded.delete("/v1/organisations").status_code == 405


def test_body_size_limit(settings, engine):
    from service import create_app

    small = create_app(settings.__class__(**{**settings.__dict__, "max_body_bytes": 1000}), engine).test_client()
    r = small.post("/v1/organisations", json={"name": "x", "type": "sme", "description": "y" * 2000})
    assert r.status_code == 413 and error_fields(r) == {"body"}


def test_a_busy_or_unreachable_store_is_a_503_json_error_and_writes_nothing(client, engine):
    """A write lock held elsewhere past the busy timeout: 503 with Retry-After, not a 500, and nothing stored."""
    import sqlite3

    from tests.conftest import ORGS

    if not engine.settings.db_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    engine.store.engine.dispose()
    path = engine.settings.db_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    from sqlalchemy import event

    def short_timeout(dbapi_connection, _):
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    event.listen(engine.store.engine, "connect", short_timeout)
    try:
        r = client.post("/v1/organisations", json=ORGS[0])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        event.remove(engine.store.engine, "connect", short_timeout)
        engine.store.engine.dispose()
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["code"] == "store_unavailable"
    assert client.get("/v1/organisations/voltgrid").status_code == 404


def test_match_fields_of_each_kind_and_filters_that_cannot_apply(seeded):
    """A challenge match has a status and no type (an organisation match the reverse); a filter the target has no
    field for is a 400 naming it, in a match, a batch and a job; the JSON body null is not an object."""
    for cid, status in (("port", "open"), ("dock", "closed")):
        seeded.post("/v1/challenges", json={"id": cid, "title": f"Harbour {cid}", "description": "Shore power peaks.",
                                            "status": status})
    r = seeded.post("/v1/match", json={"query": {"organisation_id": "voltgrid"}, "target": "challenges",
                                       "filters": {"status": "any"}})
    matches = r.get_json()["matches"]
    assert r.status_code == 200 and {m["id"]: m["status"] for m in matches} == {"port": "open", "dock": "closed"}
    assert not any("type" in m for m in matches)
    assert [m["id"] for m in seeded.post("/v1/match", json={"query": {"organisation_id": "voltgrid"},
                                                            "target": "challenges"}).get_json()["matches"]] == ["port"]
    orgs = seeded.post("/v1/match", json={"query": {"text": "battery storage"}, "k": 3}).get_json()["matches"]
    assert all(m["type"] and "status" not in m for m in orgs)
    r = seeded.post("/v1/match", json={"query": {"text": "battery"}, "filters": {"status": "open"}})
    assert r.status_code == 400 and error_fields(r) == {"filters.status"}
    assert "challenge targets only" in r.get_json()["error"]["details"][0]["problem"]
    r = seeded.post("/v1/match/batch", json={"requests": [{"query": {"text": "x"}},
                                                          {"query": {"text": "x"}, "filters": {"status": "any"}}]})
    assert r.status_code == 400 and error_fields(r) == {"requests[1].filters.status"}
    r = seeded.post("/v1/jobs/batch-match", json={"queries": [{"text": "x"}], "filters": {"status": "closed"}})
    assert r.status_code == 400 and error_fields(r) == {"filters.status"}
    for body, problem in (("null", "must be a JSON object, not null"), (" null\n", "must be a JSON object, not null"),
                          ("{not json", "not valid JSON"), ("", "missing: send a JSON body")):
        r = seeded.post("/v1/match", data=body, content_type="application/json")
        assert r.status_code == 400 and r.get_json()["error"]["details"] == [{"field": "body", "problem": problem}], body
