"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis), in process, on the real model and a real
SQLite file: every operation, with a key that has every scope and with missing, malformed, unknown, revoked
and wrong-scope keys. No answer may be a 5xx, and every answer must keep to the document: a documented status
code, JSON for errors, a body that matches the documented schema. Then the inputs fuzzers rarely reach by
chance: injection-like strings, NUL characters, RTL/emoji/combining text, 50,000-character texts, a body over
MATCHER_MAX_BODY_BYTES, NaN/Infinity/1e309 in JSON bodies, and k and batches over their limits.

Deterministic: a fixed schemathesis seed and ``derandomize=True``, so CI sees the same cases every run.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from matcher.engine import Engine
from matcher.settings import Settings
from models.keys import SCOPES, KeyStore
from models.schemas import MAX_BATCH_REQUESTS, MAX_BULK_ITEMS, MAX_DESCRIPTION, MAX_K
from service.openapi import openapi_spec
from tests.conftest import ORGS, TEST_DB_URL

TENANT = "fuzz"
MAX_BODY = 1024 * 1024  # MATCHER_MAX_BODY_BYTES of the fuzzed app: small, so a body over it is cheap to send
SEED = 20_260_601
FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

CHALLENGES = [
    {"id": "school-storage", "title": "Battery storage for a school", "owner_id": "ghent-energy",
     "description": "A primary school wants to store its rooftop solar power for the evening sports hall."},
    {"id": "leaky-mains", "title": "Find leaks in old water mains", "status": "closed",
     "description": "The utility loses a fifth of its drinking water through leaks in cast-iron pipes."},
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, encoder):
    """One app with API keys for the whole module, seeded so that ids exist (MATCHER_TEST_DB_URL: on that
    database instead of a SQLite file)."""
    from service import create_app

    data = tmp_path_factory.mktemp("fuzz") / "data"
    data.mkdir()
    db_url = f"sqlite:///{data / 'matcher.db'}"
    if TEST_DB_URL:  # e.g. PostgreSQL, from empty tables
        from sqlalchemy import create_engine

        from models.tables import metadata

        db = create_engine(TEST_DB_URL)
        metadata.drop_all(db)
        db.dispose()
        db_url = TEST_DB_URL
    settings_ = Settings.from_env(data_dir=data, db_url=db_url, load_demo=False,
                                  snapshot_every=500, auth=True, rate_limit=0, max_body_bytes=MAX_BODY)
    engine = Engine(settings_, encoder=encoder).open()
    app = create_app(settings_, engine)
    app.config.update(TESTING=True)
    keys = KeyStore(engine.store)
    full = {"Authorization": f"Bearer {keys.create(TENANT, ','.join(SCOPES))[0]}"}
    # a key with every scope but one, per scope: the 403 of each operation
    lacking = {s: {"Authorization": f"Bearer {keys.create(TENANT, [o for o in SCOPES if o != s])[0]}"} for s in SCOPES}
    revoked, record = keys.create(TENANT, ",".join(SCOPES))
    assert keys.revoke(record["id"])
    client = app.test_client()
    assert client.post("/v1/organisations/bulk", json={"items": ORGS}, headers=full).status_code == 200
    assert client.post("/v1/challenges/bulk", json={"items": CHALLENGES}, headers=full).status_code == 200
    job = client.post("/v1/jobs/batch-match", json={"queries": [{"text": "leaks"}]}, headers=full)  # stays queued
    assert job.status_code == 202
    known = {  # ids that exist, for the fuzzer's path ids (the keys are spares: the fuzzer may revoke them)
        "/v1/organisations/{id}": [o["id"] for o in ORGS], "/v1/challenges/{id}": [c["id"] for c in CHALLENGES],
        "/v1/organisations/{id}/export": [o["id"] for o in ORGS],
        "/v1/jobs/{id}": [job.get_json()["id"]], "/v1/jobs/{id}/result": [job.get_json()["id"]],
        "/v1/keys/{id}": [keys.create(TENANT, "read")[1]["id"] for _ in range(3)],
    }
    return SimpleNamespace(app=app, client=client, engine=engine, headers=full, lacking=lacking,
                           revoked={"Authorization": f"Bearer {revoked}"}, known=known)


def _config(**extra) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"mode": "all"},
        # The coverage phase's boundary cases: only the invalid ones (k = MAX_K + 1, a string one over its
        # maxLength, ...). Its valid boundaries (50,000-character texts, 1,000-item bulks) would have the model
        # embed for minutes; test_huge_unicode_texts sends the 50,000 characters once.
        "phases": {"coverage": {"generation": {"mode": "negative"}}},
        "checks": {
            # The server enforces rules the document does not state as JSON Schema (country names it
            # normalises, e-mail and URL shapes, whitespace-only text, strict integers: k 10.0 is refused), so a
            # schema-valid request may rightly get a 400; every other check stays on.
            "positive_data_acceptance": {"enabled": False},
        },
        # /v1/organisations/bulk is also /v1/organisations/{id} with the id "bulk" (a valid id), and
        # /v1/jobs/batch-match is /v1/jobs/{id}: OPTIONS rightly lists both paths' methods in Allow.
        "operations": [{"include-path-regex": "/(bulk|batch-match)$", "checks": {"allow_header_conformance": {"enabled": False}}}],
        **extra,
    })


# The document /openapi.json serves (test_the_fuzzed_document_is_the_served_one), loaded when pytest collects:
# schemathesis.pytest.from_fixture (a schema from the app fixture) fails on pytest 9.2 (it sets
# request.node._nodeid, which pytest 9.2 no longer has), so each case is sent in process to the fixture's app.
schema = schemathesis.openapi.from_dict(openapi_spec(), config=_config())
keyless_schema = schemathesis.openapi.from_dict(openapi_spec(), config=_config(
    generation={"mode": "positive"}, phases={"examples": {"enabled": False}, "coverage": {"enabled": False}}))


def in_process(case, fuzzed) -> None:
    """Send the case, and the checks' own probes (e.g. the same request without the key), to the WSGI app; and
    have half the valid cases of an /{id} path name a row that exists (random ids are all 404s)."""
    case.operation.app = case.operation.schema.app = fuzzed.app
    ids = fuzzed.known.get(case.path)
    if ids and case.meta is not None and not case.meta.generation.mode.is_negative and "id" in (case.path_parameters or {}):
        pick = zlib.crc32(str(case.path_parameters["id"]).encode())  # not hash(): that differs per process
        if pick % 2:
            case.path_parameters = {**case.path_parameters, "id": ids[pick % len(ids)]}


def test_the_fuzzed_document_is_the_served_one(fuzzed):
    served = fuzzed.client.get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == json.loads(json.dumps(openapi_spec()))
    operations = [(m, p) for p, item in openapi_spec()["paths"].items() for m in item if m != "parameters"]
    assert len(operations) == len(list(schema.get_all_operations())) == 29


# --- Inputs fuzzers rarely reach by chance (first: the fuzzing below may replace or delete the seeded rows) -

INJECTIONS = [
    "'; DROP TABLE organisations; --",
    "\" OR \"1\"=\"1",
    "<script>alert(1)</script>",
    "{{7*7}}${7*7}<%= 7*7 %>",
    "../../etc/passwd",
    "%00%0d%0aSet-Cookie: x=1",
    "\u0000",
    "battery\x00storage",
    "\u202eRTL override \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001f50b\U0001f30d\U0001f468\u200d\U0001f469\u200d\U0001f467 zwj",
    "Z\u0351\u0345\u0353a\u0337\u0315l\u0360\u035fg\u0335o combining",
    "\ud800",  # a lone surrogate: not encodable as UTF-8
]


def conforms(method: str, path: str, response) -> None:
    """The response has a documented status code and matches the documented schema; errors are JSON."""
    documented = openapi_spec()["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, (method, path, response.status_code, response.get_data(as_text=True)[:300])
    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert set(body) == {"error"} and {"code", "message", "details"} == set(body["error"])
    schema[path][method.upper()].validate_response(response)


def _q(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


def _raw(client, method, url, text, headers):
    return client.open(url, method=method, data=text.encode("utf-8", "surrogatepass"),
                       content_type="application/json", headers=headers)


def _unstorable(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text)


STORABLE = [t for t in INJECTIONS if not _unstorable(t)]


@pytest.mark.slow
def test_injection_like_and_unicode_strings(fuzzed):
    """Stored and matched as plain text (one bulk write and one batch match: the model embeds them once); NUL
    and half surrogate pairs, which no store keeps, are a 400 naming the field; in a path or a query, a 404/400."""
    client, h = fuzzed.client, fuzzed.headers
    items = [{"id": f"inj-{i}", "name": t, "type": "sme", "description": f"{t} battery storage", "city": t,
              "offers": [t], "past_projects": [{"title": t, "role": t[:50]}]} for i, t in enumerate(STORABLE)]
    r = client.post("/v1/organisations/bulk", json={"items": items}, headers=h)
    conforms("post", "/v1/organisations/bulk", r)
    assert r.status_code == 200, r.get_json()
    for item in items:  # stored as sent: no escaping, no truncation, and readable back
        got = client.get(f"/v1/organisations/{item['id']}", headers=h)
        conforms("get", "/v1/organisations/{id}", got)
        assert {k: got.get_json()[k] for k in ("name", "city", "offers")} == {k: item[k] for k in ("name", "city", "offers")}
    for method, path, body in [
        ("post", "/v1/match/batch", {"requests": [{"query": {"text": t}, "k": 3} for t in STORABLE]}),
        ("post", "/v1/consortia", {"text": " ".join(STORABLE), "size": 2, "alternatives": 1}),
        ("post", "/v1/challenges/bulk", {"items": [{"title": t, "description": t, "owner_id": "lumen"} for t in STORABLE[:3]]}),
    ]:
        r = client.open(path, method=method.upper(), json=body, headers=h)
        conforms(method, path, r)
        assert r.status_code == 200, (path, r.get_json())
    for text in INJECTIONS:
        bad = _unstorable(text)
        for method, path, url, body, field in [
            ("post", "/v1/organisations", "/v1/organisations", {"name": text, "type": "sme", "description": "x"}, "name"),
            ("post", "/v1/match", "/v1/match", {"query": {"text": text}, "k": 3}, "query.text"),
            ("post", "/v1/keys", "/v1/keys", {"scopes": ["read"], "label": text}, "label"),
            ("post", "/v1/jobs/batch-match", "/v1/jobs/batch-match", {"queries": [{"text": "leaks"}, {"id": text}]}, "queries[1].id"),
            ("put", "/v1/challenges/{id}", "/v1/challenges/leaky-mains", {"title": "t", "description": "d", "region": text}, "region"),
            ("post", "/v1/consortia", "/v1/consortia", {"challenge_id": "school-storage", "must_include": [text]}, "must_include[0]"),
            ("patch", "/v1/organisations/{id}", "/v1/organisations/lumen", {"tags": [text]}, "tags[0]"),
        ]:
            if not bad and path in ("/v1/organisations", "/v1/match", "/v1/challenges/{id}", "/v1/organisations/{id}"):
                continue  # embeds: done in one batch above
            r = client.open(url, method=method.upper(), json=body, headers=h)
            conforms(method, path, r)
            if bad:
                assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == field, (path, r.get_json())
        for method, path, url in [
            ("get", "/v1/organisations/{id}", f"/v1/organisations/{_q(text)}"),
            ("delete", "/v1/challenges/{id}", f"/v1/challenges/{_q(text)}"),
            ("patch", "/v1/organisations/{id}", f"/v1/organisations/{_q(text)}"),
            ("get", "/v1/jobs/{id}/result", f"/v1/jobs/{_q(text)}/result"),
            ("delete", "/v1/keys/{id}", f"/v1/keys/{_q(text)}"),
            ("get", "/v1/organisations", f"/v1/organisations?country={_q(text)}"),
            ("get", "/v1/organisations", f"/v1/organisations?cursor={_q(text)}"),
            ("get", "/v1/organisations", f"/v1/organisations?{_q(text)}=1"),
            ("get", "/v1/challenges", f"/v1/challenges?status={_q(text)}"),
            ("get", "/v1/unsubscribe", f"/v1/unsubscribe?token={_q(text)}"),
        ]:
            r = client.open(url, method=method.upper(), json={"city": "x"}, headers=h)
            conforms(method, path, r)
            assert r.status_code in (400, 404), (url, r.status_code)
    # the seeded data is all still there, and the injected rows go as they came
    for item in items:
        assert client.delete(f"/v1/organisations/{item['id']}", headers=h).status_code == 204
    listed = client.get("/v1/organisations?limit=200", headers=h).get_json()["items"]
    assert {o["id"] for o in ORGS} <= {o["id"] for o in listed}


def test_huge_unicode_texts(fuzzed):
    """50,000 characters (the limit) of RTL, emoji, bidi controls and stacked combining marks: stored whole and
    matched; one more character is a 400 naming the field. (Combining marks keep the model's work small: the
    tokenizer drops them, so the test stays fast; a 50,000-character text of words is the load benchmark's job.)"""
    client, h = fuzzed.client, fuzzed.headers
    head = "Battery storage \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \U0001f50b\U0001f30d \u202edlrow\u202c "
    huge = (head + "a" + "\u0301\u0351\u0345\u0353" * 12_500)[:MAX_DESCRIPTION]
    assert len(huge) == MAX_DESCRIPTION
    r = client.post("/v1/organisations", json={"id": "huge", "name": huge[:300], "type": "sme", "description": huge}, headers=h)
    conforms("post", "/v1/organisations", r)
    assert r.status_code == 201 and r.get_json()["description"] == huge and r.get_json()["name"] == huge[:300]
    r = client.post("/v1/match", json={"query": {"text": huge}, "k": MAX_K}, headers=h)
    conforms("post", "/v1/match", r)
    assert r.status_code == 200 and "huge" in {m["id"] for m in r.get_json()["matches"]}
    over = huge + "x"
    for method, path, body, field in [
        ("post", "/v1/organisations", {"name": "Huge", "type": "sme", "description": over}, "description"),
        ("post", "/v1/organisations/bulk", {"items": [{"name": "Huge", "type": "sme", "description": over}]}, "items[0].description"),
        ("post", "/v1/match", {"query": {"text": over}}, "query.text"),
        ("post", "/v1/match/batch", {"requests": [{"query": {"text": over}}]}, "requests[0].query.text"),
        ("post", "/v1/consortia", {"text": over}, "text"),
        ("post", "/v1/organisations", {"name": "n" * 301, "type": "sme", "description": "x"}, "name"),
        ("post", "/v1/keys", {"scopes": ["read"], "label": "\U0001f50b" * 201}, "label"),
    ]:
        r = client.open(path, method=method.upper(), json=body, headers=h)
        conforms(method, path, r)
        assert r.status_code == 400 and field in {d["field"] for d in r.get_json()["error"]["details"]}, r.get_json()
    assert client.delete("/v1/organisations/huge", headers=h).status_code == 204


def test_a_body_over_the_limit_is_413_json(fuzzed):
    client, h = fuzzed.client, fuzzed.headers
    big = json.dumps({"name": "Big", "type": "sme", "description": "x" * MAX_BODY})
    for method, path, url in [("post", "/v1/organisations", "/v1/organisations"), ("post", "/v1/match", "/v1/match"),
                              ("post", "/v1/organisations/bulk", "/v1/organisations/bulk"),
                              ("put", "/v1/organisations/{id}", "/v1/organisations/lumen"),
                              ("post", "/v1/keys", "/v1/keys")]:
        r = _raw(client, method.upper(), url, big, h)
        assert r.status_code == 413, (url, r.status_code)
        conforms(method, path, r)
        assert r.get_json()["error"]["details"] == [{"field": "body", "problem": "larger than the server accepts"}]


@pytest.mark.parametrize("depth", [40, 5_000, 100_000])
def test_deeply_nested_json_is_400(fuzzed, depth):
    """json.loads gives up (RecursionError) near 1,000 levels: that was a 500."""
    client, h = fuzzed.client, fuzzed.headers
    for method, path, url, text in [("post", "/v1/match", "/v1/match", "[" * depth + "]" * depth),
                                    ("post", "/v1/organisations", "/v1/organisations", '{"a":' * depth + "1" + "}" * depth),
                                    ("patch", "/v1/challenges/{id}", "/v1/challenges/leaky-mains", '{"needs": ' + "[" * depth + "]" * depth + "}")]:
        r = _raw(client, method.upper(), url, text, h)
        conforms(method, path, r)
        assert r.status_code == 400 and r.get_json()["error"]["details"] == [{"field": "body", "problem": "nested more than 32 levels deep"}]


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]


@pytest.mark.parametrize("number", NON_FINITE)
def test_nan_and_infinity_are_400_naming_the_field(fuzzed, number):
    """Python's json reads NaN, Infinity and 1e309 (as inf); none is JSON, and none may be stored or used."""
    client, h = fuzzed.client, fuzzed.headers
    n = number
    cases = [
        ("post", "/v1/match", "/v1/match", f'{{"query": {{"text": "battery storage"}}, "k": {n}}}', "k"),
        ("post", "/v1/match/batch", "/v1/match/batch", f'{{"requests": [{{"query": {{"text": "leaks"}}, "k": {n}}}]}}', "requests[0].k"),
        ("post", "/v1/organisations", "/v1/organisations",
         f'{{"name": "N", "type": "sme", "description": "d", "past_projects": [{{"title": "t", "year": {n}}}]}}', "past_projects[0].year"),
        ("post", "/v1/organisations", "/v1/organisations", f'{{"name": "N", "type": "sme", "description": "d", "n_past_projects": {n}}}', "n_past_projects"),
        ("patch", "/v1/organisations/{id}", "/v1/organisations/lumen", f'{{"n_past_projects": {n}}}', "n_past_projects"),
        ("put", "/v1/challenges/{id}", "/v1/challenges/leaky-mains", f'{{"title": "t", "description": "d", "deadline": {n}}}', "deadline"),
        ("post", "/v1/keys", "/v1/keys", f'{{"scopes": ["read"], "rate_limit": {n}}}', "rate_limit"),
        ("post", "/v1/consortia", "/v1/consortia", f'{{"text": "storage", "size": {n}}}', "size"),
        ("post", "/v1/jobs/batch-match", "/v1/jobs/batch-match", f'{{"queries": [{{"text": "leaks"}}], "k": {n}}}', "k"),
        ("post", "/v1/organisations/bulk", "/v1/organisations/bulk",
         f'{{"items": [{{"name": "N", "type": "sme", "description": "d", "email_opt_in": {n}}}]}}', "items[0].email_opt_in"),
    ]
    for method, path, url, text, field in cases:
        r = _raw(client, method.upper(), url, text, h)
        conforms(method, path, r)
        assert r.status_code == 400, (url, text, r.status_code)
        assert field in {d["field"] for d in r.get_json()["error"]["details"]}, (text, r.get_json())
    assert client.get("/v1/organisations/lumen", headers=h).get_json().get("n_past_projects") is None


def test_k_batch_and_bulk_limits_are_400_naming_the_field(fuzzed):
    client, h = fuzzed.client, fuzzed.headers
    query = {"query": {"text": "battery storage"}}
    for method, path, body, field in [
        ("post", "/v1/match", {**query, "k": MAX_K + 1}, "k"),
        ("post", "/v1/match", {**query, "k": 0}, "k"),
        ("post", "/v1/match", {**query, "k": "10"}, "k"),
        ("post", "/v1/match", {**query, "k": True}, "k"),
        ("post", "/v1/match/batch", {"requests": [query] * (MAX_BATCH_REQUESTS + 1)}, "requests"),
        ("post", "/v1/match/batch", {"requests": [{**query, "k": MAX_K + 1}]}, "requests[0].k"),
        ("post", "/v1/match/batch", {"requests": []}, "requests"),
        ("post", "/v1/jobs/batch-match", {"queries": [{"text": "leaks"}], "k": MAX_K + 1}, "k"),
        ("post", "/v1/consortia", {"text": "storage", "size": 31}, "size"),
        ("post", "/v1/organisations/bulk", {"items": [{"name": "N", "type": "sme", "description": "d"}] * (MAX_BULK_ITEMS + 1)}, "items"),
        ("post", "/v1/keys", {"scopes": ["read"], "rate_limit": 1_000_001}, "rate_limit"),
    ]:
        r = client.open(path, method=method.upper(), json=body, headers=h)
        conforms(method, path, r)
        assert r.status_code == 400 and field in {d["field"] for d in r.get_json()["error"]["details"]}, (body if len(str(body)) < 300 else path, r.get_json())
    r = client.post("/v1/match", json={**query, "k": MAX_K}, headers=h)
    conforms("post", "/v1/match", r)
    assert r.status_code == 200


def test_the_rate_limit_is_429_json_with_retry_after(fuzzed):
    client = fuzzed.client
    settings_ = fuzzed.app.extensions["matcher.settings"]
    fuzzed.app.extensions["matcher.settings"] = dataclasses.replace(settings_, rate_burst=2)
    try:
        secret, _ = KeyStore(fuzzed.engine.store).create(TENANT, "read", rate_limit=2)  # 2 at once, then 2 a minute
        h = {"Authorization": f"Bearer {secret}"}
        answers = [client.get("/v1/organisations", headers=h) for _ in range(3)]
    finally:
        fuzzed.app.extensions["matcher.settings"] = settings_
    assert [r.status_code for r in answers] == [200, 200, 429]
    conforms("get", "/v1/organisations", answers[-1])
    assert int(answers[-1].headers["Retry-After"]) >= 1 and answers[-1].get_json()["error"]["code"] == "rate_limited"


# --- The fuzzing --------------------------------------------------------------------------------------

def assert_json_error(response, status: int | None = None) -> dict:
    """A 4xx/5xx in the documented shape: JSON {"error": {"code", "message", "details": [{"field", "problem"}]}}."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    content_type = response.headers["content-type"][0]  # schemathesis' Response: lower-case names, lists of values
    assert content_type.startswith("application/json"), content_type
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    assert all(set(d) == {"field", "problem"} for d in body["error"]["details"])
    return body["error"]


@pytest.mark.slow
@schema.parametrize()
@FUZZ
def test_every_operation_keeps_to_its_document(case, fuzzed):
    in_process(case, fuzzed)
    response = case.call_and_validate(headers=fuzzed.headers, app=fuzzed.app)
    if response.status_code >= 400:  # (/v1/unsubscribe answers a browser's Accept: text/html with a page)
        assert_json_error(response)


@pytest.mark.slow
@keyless_schema.parametrize()
@settings(FUZZ, max_examples=4)
def test_bad_keys_are_401_or_403_json_on_every_operation(case, fuzzed):
    in_process(case, fuzzed)
    scope = case.operation.definition.raw.get("x-required-scope")
    bad = {"missing": ({}, 401), "not bearer": ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
           "garbage": ({"Authorization": "Bearer ' OR 1=1; --\u202e"}, 401),
           "empty bearer": ({"Authorization": "Bearer "}, 401),
           "unknown": ({"Authorization": "Bearer mk_000000000000_" + "x" * 43}, 401),
           "revoked": (fuzzed.revoked, 401)}
    if scope is not None:
        bad["wrong scope"] = (fuzzed.lacking[scope], 403)
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    for name, (headers, status) in bad.items():
        response = case.call(headers=headers, app=fuzzed.app)
        if scope is None:  # open: the key does not matter, but it must not fail either
            assert response.status_code < 500, (name, response.status_code)
            continue
        error = assert_json_error(response, status)
        assert error["code"] == ("unauthorized" if status == 401 else "forbidden"), name
        assert error["details"][0]["field"] == "Authorization", name
        if status == 401:
            assert response.headers["www-authenticate"][0].startswith("Bearer")
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 content_type_conformance, response_schema_conformance])
