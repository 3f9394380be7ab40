"""Access: API keys and scopes, tenants that never see each other, contact data, erasure and rate limits."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from matcher.engine import Engine
from models.enums import EntityKind
from models.keys import KeyStore
from models.tables import changes, jobs as jobs_table
from tests.conftest import ORGS, ROOT

ORG = EntityKind.organisations
ADDRESS = "hello@voltgrid.example.org"


@pytest.fixture
def secured(settings, encoder):
    """An app with MATCHER_AUTH on, and a key per (tenant, scopes) made on demand."""
    from service import create_app

    settings = dataclasses.replace(settings, auth=True, rate_limit=0)
    engine = Engine(settings, encoder=encoder).open()
    app = create_app(settings, engine)
    app.config.update(TESTING=True)
    made: dict = {}

    def key(tenant: str, scopes: str = "read,match,write,admin", **kwargs) -> dict:
        if (tenant, scopes) not in made or kwargs:
            secret, _ = KeyStore(engine.store).create(tenant, scopes, **kwargs)
            made[(tenant, scopes)] = {"Authorization": f"Bearer {secret}"}
        return made[(tenant, scopes)]

    return app.test_client(), engine, key


def _two_tenants(client, key):
    """Tenant a holds the ecosystem; tenant b holds its own 'voltgrid' (same id, other organisation) and one more."""
    assert client.post("/v1/organisations/bulk", json={"items": [{**o, "contact_email": f"x@{o['id']}.example.org"} for o in ORGS]},
                       headers=key("a")).status_code == 200
    b_orgs = [{**ORGS[0], "name": "VoltGrid Logistics", "description": "Electric cargo bikes for last-mile parcel delivery."},
              {"id": "harbour", "name": "Harbour Lab", "type": "university", "description": "Port logistics research and cargo flows."}]
    assert client.post("/v1/organisations/bulk", json={"items": b_orgs}, headers=key("b")).status_code == 200


def test_keys_are_required_and_errors_are_json(secured):
    client, engine, key = secured
    for headers, problem in [({}, "missing"), ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
                             ({"Authorization": "Bearer mk_000000000000_" + "x" * 43}, "unknown"),
                             ({"Authorization": "Bearer not-a-key"}, "unknown")]:
        r = client.get("/v1/organisations", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        error = r.get_json()["error"]
        assert error["code"] == "unauthorized" and error["details"][0]["field"] == "Authorization"
        assert problem in error["details"][0]["problem"]
    for path in ("/healthz", "/openapi.json"):  # open
        assert client.get(path).status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    # the key is stored hashed: its secret is nowhere in the database
    secret = key("a")["Authorization"].split()[1]
    with engine.store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.exec_driver_sql("SELECT * FROM api_keys")]
    stored = json.dumps(rows, default=str)
    assert rows and secret not in stored and secret[len("mk_") + 13:] not in stored  # mk_<12-char id>_<secret>


@pytest.mark.parametrize("scopes, allowed", [
    ("read", {"get"}),
    ("match", {"match", "consortium"}),
    ("write", {"create", "delete"}),
    ("admin", {"job", "keys"}),
])
def test_scopes_are_enforced(secured, scopes, allowed):
    client, _, key = secured
    _two_tenants(client, key)
    h = key("a", scopes)
    calls = {
        "get": lambda: client.get("/v1/organisations/lumen", headers=h),
        "match": lambda: client.post("/v1/match", json={"query": {"text": "battery storage"}}, headers=h),
        "consortium": lambda: client.post("/v1/consortia", json={"text": "battery storage pilots", "size": 2}, headers=h),
        "create": lambda: client.post("/v1/challenges", json={"id": "c1", "title": "Storage", "description": "Batteries for a school."}, headers=h),
        "delete": lambda: client.delete("/v1/organisations/recyclo", headers=h),
        "job": lambda: client.post("/v1/jobs/batch-match", json={"queries": [{"text": "leaks"}]}, headers=h),
        "keys": lambda: client.get("/v1/keys", headers=h),
    }
    for name, call in calls.items():
        r = call()
        if name in allowed:
            assert r.status_code in (200, 201, 202, 204), (name, r.get_data(as_text=True))
        else:
            assert r.status_code == 403, (name, r.status_code)
            error = r.get_json()["error"]
            assert error["code"] == "forbidden" and error["details"][0]["field"] == "Authorization"


def test_a_tenant_never_sees_another_tenants_data(secured):
    client, engine, key = secured
    _two_tenants(client, key)
    a, b = key("a"), key("b")
    # the same id names a different organisation in each tenant
    assert client.get("/v1/organisations/voltgrid", headers=a).get_json()["name"] == "VoltGrid"
    assert client.get("/v1/organisations/voltgrid", headers=b).get_json()["name"] == "VoltGrid Logistics"
    # a's organisations do not exist for b: 404 on every path, never 403
    for call in (lambda: client.get("/v1/organisations/lumen", headers=b),
                 lambda: client.patch("/v1/organisations/lumen", json={"city": "Paris"}, headers=b),
                 lambda: client.put("/v1/organisations/lumen", json=ORGS[2], headers=b),
                 lambda: client.delete("/v1/organisations/lumen", headers=b),
                 lambda: client.post("/v1/match", json={"query": {"organisation_id": "lumen"}}, headers=b)):
        assert call().status_code == 404
    assert {o["id"] for o in client.get("/v1/organisations", headers=b).get_json()["items"]} == {"voltgrid", "harbour"}
    # matches rank b's own organisations only, whatever the query
    for text in ("battery storage for microgrids", "leak detection in water pipes", "street lighting"):
        r = client.post("/v1/match", json={"query": {"text": text}, "k": 20}, headers=b)
        assert {m["id"] for m in r.get_json()["matches"]} <= {"voltgrid", "harbour"}
        r = client.post("/v1/match/batch", json={"requests": [{"query": {"text": text}, "k": 20}]}, headers=b)
        assert {m["id"] for m in r.get_json()["results"][0]["matches"]} <= {"voltgrid", "harbour"}
    r = client.post("/v1/consortia", json={"text": "battery storage pilot", "size": 2, "must_include": ["lumen"]}, headers=b)
    assert r.status_code in (400, 404) and "lumen" in r.get_data(as_text=True)
    # b cannot own a challenge through a's organisation, nor write over a's rows with the same id
    r = client.post("/v1/challenges", json={"id": "c1", "title": "T", "description": "D.", "owner_id": "lumen"}, headers=b)
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "owner_id"
    assert client.put("/v1/organisations/recyclo", json={**ORGS[6], "name": "Taken"}, headers=b).status_code == 404
    assert client.post("/v1/organisations", json={**ORGS[6], "name": "B's own Recyclo"}, headers=b).status_code == 201
    assert client.get("/v1/organisations/recyclo", headers=a).get_json()["name"] == "Recyclo"
    # jobs and keys are a tenant's own too
    job = client.post("/v1/jobs/batch-match", json={"queries": [{"text": "battery"}]}, headers=a).get_json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=b).status_code == 404
    from matcher.jobs import JobWorker

    JobWorker(engine).run_forever(once=True)
    rows = client.get(f"/v1/jobs/{job['id']}/result", headers=a).get_json()["rows"]
    assert rows and {r["match_id"] for r in rows} <= {o["id"] for o in ORGS}
    a_key_id = client.get("/v1/keys", headers=a).get_json()["items"][0]["id"]
    assert a_key_id not in {k["id"] for k in client.get("/v1/keys", headers=b).get_json()["items"]}
    assert client.delete(f"/v1/keys/{a_key_id}", headers=b).status_code == 404
    # in the engine: each tenant's indexes hold its own rows only
    assert engine.for_tenant("b").status()["indexed"]["organisations"] == 3
    assert engine.for_tenant("a").status()["indexed"]["organisations"] == len(ORGS)


def test_contact_email_only_to_write_and_admin_keys(secured):
    client, _, key = secured
    _two_tenants(client, key)
    for scopes, shown in (("read", False), ("read,match", False), ("read,write", True), ("read,admin", True)):
        h = key("a", scopes)
        bodies = [client.get("/v1/organisations/voltgrid", headers=h), client.get("/v1/organisations", headers=h)]
        assert all(r.status_code == 200 for r in bodies)
        assert all(("@" in r.get_data(as_text=True)) is shown for r in bodies), scopes
    for scopes in ("match", "read,match,write,admin"):  # a match never carries it
        r = client.post("/v1/match", json={"query": {"organisation_id": "aquasense"}, "k": 10}, headers=key("a", scopes))
        assert r.status_code == 200 and "@" not in r.get_data(as_text=True)
    r = client.patch("/v1/organisations/voltgrid", json={"city": "Delft"}, headers=key("a", "write"))
    assert r.get_json()["contact_email"] == "x@voltgrid.example.org"
    # b's write key sees b's voltgrid (which has no address), never a's address
    assert "@" not in client.get("/v1/organisations/voltgrid", headers=key("b")).get_data(as_text=True)


def test_read_edit_put_keeps_the_address_and_null_removes_it(client, engine):
    """A client that cannot see the address (a read+write round trip without it) does not erase it by a PUT."""
    client.post("/v1/organisations", json={**ORGS[0], "contact_email": ADDRESS})
    doc = {k: v for k, v in client.get("/v1/organisations/voltgrid").get_json().items() if k != "contact_email"}
    assert client.put("/v1/organisations/voltgrid", json={**doc, "name": "VoltGrid BV"}).status_code == 200
    assert engine.store.get(ORG, "voltgrid")["contact_email"] == ADDRESS
    assert client.put("/v1/organisations/voltgrid", json={**doc, "contact_email": "new@voltgrid.example.org"}).status_code == 200
    assert engine.store.get(ORG, "voltgrid")["contact_email"] == "new@voltgrid.example.org"
    assert client.patch("/v1/organisations/voltgrid", json={"contact_email": None}).status_code == 200
    assert engine.store.get(ORG, "voltgrid").get("contact_email") is None


def test_delete_erases_the_organisation_everywhere(secured):
    client, engine, key = secured
    _two_tenants(client, key)
    a = key("a")
    eng = engine.for_tenant("a")
    # a digest to aquasense that names voltgrid, a pending one to lumen naming it, and voltgrid's own log
    sent = eng.store.add_digest("aquasense", "<m1@x>", [{"kind": "organisations", "id": "voltgrid"}, {"kind": "organisations", "id": "lumen"}], b"VoltGrid ...")
    eng.store.record_digest_attempt(sent, "sent")
    eng.store.add_digest("lumen", "<m2@x>", [{"kind": "organisations", "id": "voltgrid"}], b"VoltGrid ...")
    eng.store.add_digest("voltgrid", "<m3@x>", [{"kind": "organisations", "id": "lumen"}], b"...")
    job = client.post("/v1/jobs/batch-match", json={"queries": [{"text": "battery storage controllers for microgrids"},
                                                                {"organisation_id": "voltgrid"}], "k": 5}, headers=a).get_json()
    from matcher.jobs import JobWorker

    JobWorker(engine).run_forever(once=True)
    assert "voltgrid" in json.dumps(client.get(f"/v1/jobs/{job['id']}/result", headers=a).get_json()["rows"])
    queued = client.post("/v1/jobs/batch-match", json={"queries": [{"organisation_id": "voltgrid"}, {"text": "water leaks"}],
                                                       "filters": {"exclude_ids": ["voltgrid"]}}, headers=a).get_json()
    snapshot = eng.live.snapshot_path(ORG)
    eng.save_snapshots()
    assert b"VoltGrid" in snapshot.read_bytes()

    num = eng.indexes[ORG].num_of["voltgrid"]
    assert client.delete("/v1/organisations/voltgrid", headers=a).status_code == 204

    assert client.get("/v1/organisations/voltgrid", headers=a).status_code == 404
    assert eng.store.digest_log("voltgrid") == []
    log = {r["organisation_id"]: r for r in eng.store.digest_log()}
    assert log["aquasense"]["matches"] == [{"kind": "organisations", "id": "lumen"}] and log["aquasense"]["status"] == "sent"
    assert log["lumen"]["status"] == "cancelled" and log["lumen"]["matches"] == []
    assert eng.store.pending_digests() == []
    result = client.get(f"/v1/jobs/{job['id']}/result", headers=a).get_json()
    assert "voltgrid" not in json.dumps(result["rows"]) and any("deleted" in e["problem"] for e in result["errors"])
    with eng.store.engine.connect() as conn:
        assert "voltgrid" not in {r.entity_id for r in conn.execute(select(changes.c.entity_id).where(changes.c.tenant == "a"))}
        params = {r.id: r.params for r in conn.execute(select(jobs_table.c.id, jobs_table.c.params))}
    assert "voltgrid" not in json.dumps(params)  # neither the queries nor the exclusions of any job name it
    JobWorker(engine).run_forever(once=True)  # the queued job skips the erased query
    result = client.get(f"/v1/jobs/{queued['id']}/result", headers=a).get_json()
    assert result["job"]["status"] == "done" and result["job"]["progress"] == {"done": 2, "total": 2, "fraction": 1.0}
    assert [e["field"] for e in result["errors"] if "deleted" in e["problem"]] == ["queries[0]"] and result["rows"]
    assert "voltgrid" not in json.dumps(result)
    assert b"VoltGrid" not in snapshot.read_bytes()  # the snapshot on disk was rewritten without it
    assert "voltgrid" not in eng.indexes[ORG].num_of and num not in eng.live.lexical[ORG]
    for text in ("battery storage controllers for microgrids", "solar peaks"):
        r = client.post("/v1/match", json={"query": {"text": text}, "k": 10}, headers=a)
        assert "voltgrid" not in {m["id"] for m in r.get_json()["matches"]}
    # tenant b's voltgrid is untouched
    assert client.get("/v1/organisations/voltgrid", headers=key("b")).status_code == 200


def test_rate_limit_answers_429_with_retry_after(secured, monkeypatch):
    client, engine, key = secured
    extensions = client.application.extensions  # the app's settings (service/config.py)
    monkeypatch.setitem(extensions, "matcher.settings", dataclasses.replace(extensions["matcher.settings"], rate_limit=600, rate_burst=3))
    h = key("a", "read", rate_limit=6)  # 6 a minute, 3 at once
    codes = [client.get("/v1/organisations", headers=h) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    limited = codes[-1]
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    assert limited.get_json()["error"]["code"] == "rate_limited" and limited.get_json()["error"]["details"][0]["field"] == "Authorization"
    assert codes[0].headers["X-RateLimit-Limit"] == "6"
    assert client.get("/v1/organisations", headers=key("a", "read,match")).status_code == 200  # another key has its own


def test_a_keys_burst_never_exceeds_its_own_limit(secured, monkeypatch):
    client, _, key = secured
    extensions = client.application.extensions
    monkeypatch.setitem(extensions, "matcher.settings", dataclasses.replace(extensions["matcher.settings"], rate_limit=600, rate_burst=60))
    h, started = key("a", "read", rate_limit=30), time.monotonic()
    codes = [client.get("/v1/organisations", headers=h).status_code for _ in range(40)]
    refilled = int((time.monotonic() - started) * 30 / 60)  # half a token a second
    # 30 a minute: at most 30 at once (and what refilled meanwhile), not the global burst of 60
    assert codes[:30] == [200] * 30 and codes.count(200) <= 30 + refilled < 40
    assert [client.get("/v1/organisations", headers=key("b", "read")).status_code for _ in range(60)] == [200] * 60


def test_keys_over_the_api_and_revocation(secured):
    client, _, key = secured
    admin = key("a", "admin")
    r = client.post("/v1/keys", json={"scopes": ["read"], "label": "frontend"}, headers=admin)
    assert r.status_code == 201 and r.get_json()["tenant"] == "a" and r.get_json()["key"].startswith("mk_")
    new = {"Authorization": f"Bearer {r.get_json()['key']}"}
    assert client.get("/v1/organisations", headers=new).status_code == 200
    assert client.post("/v1/keys", json={"scopes": ["root"]}, headers=admin).get_json()["error"]["details"][0]["field"] == "scopes"
    listed = client.get("/v1/keys", headers=admin).get_json()["items"]
    assert len(listed) == 2 and all("key" not in k and "secret_hash" not in k for k in listed)
    assert client.delete(f"/v1/keys/{r.get_json()['id']}", headers=admin).status_code == 204
    assert client.get("/v1/organisations", headers=new).status_code == 401


@pytest.mark.slow
def test_keys_cli_create_use_revoke(tmp_path, secured):
    client, engine, _ = secured
    env = {"MATCHER_DATA_DIR": str(engine.settings.data_dir), "MATCHER_DB_URL": engine.settings.db_url, "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "matcher", "keys", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    made = run("create", "--tenant", "cli-tenant", "--scopes", "read,write")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mk_") and "not shown again" in made.stderr
    h = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/organisations", headers=h).status_code == 200
    assert client.post("/v1/match", json={"query": {"text": "x"}}, headers=h).status_code == 403
    assert run("create", "--tenant", "t", "--scopes", "read,root").returncode == 2
    key_id = secret.split("_")[1]
    assert key_id in run("list").stdout and secret not in run("list").stdout
    assert run("revoke", key_id).returncode == 0
    assert client.get("/v1/organisations", headers=h).status_code == 401
    assert run("revoke", key_id).returncode == 1


def test_auth_off_is_refused_beyond_loopback(settings, engine):
    from service import create_app
    from service.auth import check_bind, is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.1:8000", "localhost:80", "[::1]:8000", "::1", "unix:/tmp/s.sock"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "0.0.0.0:8000", "10.1.2.3:80", "[::]:8000", "example.org:80"))
    with pytest.raises(SystemExit, match="loopback"):
        create_app(dataclasses.replace(settings, host="0.0.0.0", auth=False), engine)
    with pytest.raises(SystemExit):
        check_bind(dataclasses.replace(settings, auth=False), ["127.0.0.1:8000", "0.0.0.0:8001"])
    check_bind(dataclasses.replace(settings, auth=True), ["0.0.0.0:8000"])  # with keys: anywhere


def test_the_spec_names_each_operations_scope_and_the_server_enforces_it(secured):
    client, _, key = secured
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer" and spec["security"] == [{"bearerAuth": []}]
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if op.get("security") == []:
                assert path in ("/healthz", "/readyz", "/openapi.json", "/v1/unsubscribe"), path
                continue
            scope = op["x-required-scope"]
            assert {"401", "403", "429"} <= set(op["responses"]), (path, method)
            others = ",".join(s for s in ("read", "match", "write", "admin") if s != scope)
            r = client.open(path.replace("{id}", "x"), method=method.upper(), json={}, headers=key("a", others))
            assert r.status_code == 403 and scope in r.get_json()["error"]["message"], (path, method, r.status_code)
            assert client.open(path.replace("{id}", "x"), method=method.upper(), json={}).status_code == 401
            checked += 1
    assert checked >= 18


@pytest.mark.slow
def test_make_run_flow_keys_tenants_and_shared_rate_limits_over_gunicorn(tmp_path):
    """As a user runs it: `matcher init` prints the demo key; gunicorn (2 workers) asks for keys, keeps tenants
    apart, and both workers draw on one rate-limit bucket per key; MATCHER_AUTH=off will not bind beyond loopback."""
    import re
    import stat
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.service.test_gunicorn import free_port, service_env, start_gunicorn, stop_gunicorn

    data = tmp_path / "data"
    env = service_env(data, free_port(), workers=2, auth="on", rate_limit=600, rate_burst=6, job_runner=0, load_demo=1)
    matcher = lambda *args: subprocess.run([sys.executable, "-m", "matcher", *args], cwd=ROOT, env=env,  # noqa: E731
                                           capture_output=True, text=True, timeout=300)
    init = matcher("-q", "init")
    assert init.returncode == 0, init.stderr
    demo = re.search(r"mk_[a-z0-9]+_[A-Za-z0-9_-]+", init.stdout).group(0)
    assert stat.S_IMODE((data / "demo_key").stat().st_mode) == 0o600 and demo in matcher("-q", "init").stdout  # kept
    other = matcher("keys", "create", "--tenant", "other", "--scopes", "read,write").stdout.strip()
    limited = matcher("keys", "create", "--tenant", "other", "--scopes", "read", "--rate-limit", "2").stdout.strip()
    proc, base, log = start_gunicorn(env, data / "gunicorn.log")
    try:
        bearer = lambda key: {"Authorization": f"Bearer {key}", "Connection": "close"}  # noqa: E731
        assert requests.get(f"{base}/v1/organisations", timeout=30).status_code == 401
        r = requests.post(f"{base}/v1/organisations", json=ORGS[0], headers=bearer(other), timeout=120)
        assert r.status_code == 201
        assert requests.get(f"{base}/v1/organisations/voltgrid", headers=bearer(demo), timeout=30).status_code == 404
        assert requests.get(f"{base}/v1/organisations/voltgrid", headers=bearer(other), timeout=30).status_code == 200
        r = requests.post(f"{base}/v1/match", json={"query": {"text": "battery storage"}, "k": 20}, headers=bearer(demo), timeout=60)
        demo_ids = {m["id"] for m in r.json()["matches"]}
        assert r.status_code == 200 and len(demo_ids) == 20 and "voltgrid" not in demo_ids  # the demo tenant's own data
        assert requests.get(f"{base}/v1/organisations/{min(demo_ids)}", headers=bearer(other), timeout=30).status_code == 404
        # 'limited' may make 2 requests at once (MATCHER_RATE_BURST is 6, but never more than the key's own rate),
        # then 2 a minute, across both workers.
        # Which worker accepts a connection is the kernel's choice, and one threaded worker may take many in a row:
        # send 8 at once until both have answered (at least 16 requests, at most 400: a few seconds, in which 2 a
        # minute refills no token).
        served_pids = lambda: set(re.findall(r'pid=<?(\d+)>? "GET /v1/organisations\?limit=1',  # noqa: E731
                                             (data / "gunicorn.log").read_text()))
        codes = []
        with ThreadPoolExecutor(8) as pool:
            while len(codes) < 16 or (len(served_pids()) < 2 and len(codes) < 400):
                codes += pool.map(lambda _: requests.get(f"{base}/v1/organisations?limit=1", headers=bearer(limited),
                                                         timeout=30), range(8))
        assert sorted(r.status_code for r in codes) == [200] * 2 + [429] * (len(codes) - 2)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in codes if r.status_code == 429)
        assert len(served_pids()) == 2, "both workers should have answered the limited key"
    finally:
        stop_gunicorn(proc, log)
    # MATCHER_AUTH=off on a public address: gunicorn refuses to start, and says why
    refused = subprocess.run([os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c", "service/gunicorn_conf.py",
                              "service:create_app()"], cwd=ROOT, env={**env, "MATCHER_AUTH": "off", "MATCHER_HOST": "0.0.0.0"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "loopback" in refused.stdout + refused.stderr


def test_addresses_never_reach_the_logs(secured, monkeypatch):
    import io
    import logging

    from service.logging_setup import configure_logging

    client, engine, key = secured
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logging.getLogger().addHandler(handler)
    try:
        configure_logging("info")
        client.post("/v1/organisations", json={**ORGS[0], "contact_email": ADDRESS}, headers=key("a"))

        def fails(*_):
            raise RuntimeError(f"could not read the profile of {ADDRESS}")

        monkeypatch.setattr(Engine, "get", fails)
        r = client.get("/v1/organisations/voltgrid", headers=key("a"))
        assert r.status_code == 500 and ADDRESS not in r.get_data(as_text=True)
        logging.getLogger("matcher.digest").info("sending to %s", ADDRESS)
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert "unhandled error" in text and "RuntimeError" in text and "<e-mail>" in text and ADDRESS not in text


def test_tenant_names_are_checked(engine):
    """A tenant names a folder of index snapshots: nothing like a path gets through."""
    for bad in ("../etc", "a/b", "", ".", "-x", "x" * 65):
        with pytest.raises(ValueError):
            engine.for_tenant(bad)
        with pytest.raises(ValueError):
            KeyStore(engine.store).create(bad, "read")
    made = subprocess.run([sys.executable, "-m", "matcher", "keys", "create", "--tenant", "../x", "--scopes", "read"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 2 and "tenant" in made.stderr


def test_rate_buckets_refill_and_never_lose_tokens_to_clock_order():
    from service.ratelimit import Buckets

    b = Buckets(slots=8)
    assert [b.take("k", 60, 2, now=100.0).allowed for _ in range(3)] == [True, True, False]
    assert b.take("k", 60, 2, now=100.2).retry_after == 1
    assert b.take("k", 60, 2, now=101.5).allowed  # one a second
    fast = Buckets(slots=8)
    fast.take("k", 1_000_000, 60, now=10.0)
    assert fast.take("k", 1_000_000, 60, now=9.996).allowed  # an earlier clock reading arriving later
    # more keys than slots: the least recently used slot is reused, the rest keep their state
    many = Buckets(slots=4)
    for i in range(10):
        assert many.take(f"key{i}", 60, 1, now=float(i)).allowed
