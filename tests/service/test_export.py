"""Everything stored about one organisation (GET /v1/organisations/{id}/export), and deleting a whole tenant
(python -m matcher tenant delete T), which leaves every other tenant's rows and snapshots byte-identical."""
from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from matcher import cli
from matcher.engine import Engine
from matcher.jobs import JobWorker
from models.enums import EntityKind
from models.keys import KeyStore
from models.tables import changes, job_results, jobs, metadata, tenants
from tests.conftest import ORGS

ORG = EntityKind.organisations


@pytest.fixture
def stocked(settings, encoder):
    """Tenants a and b (the same ecosystem, each with contact addresses, a challenge, digests and batch jobs that
    name voltgrid) and c (one organisation); a key with every scope per tenant."""
    from service import create_app

    settings = dataclasses.replace(settings, auth=True, rate_limit=0)
    engine = Engine(settings, encoder=encoder).open()
    client = create_app(settings, engine).test_client()
    headers = {t: {"Authorization": f"Bearer {KeyStore(engine.store).create(t, 'read,match,write,admin')[0]}"} for t in "abc"}
    for tenant in "ab":
        h = headers[tenant]
        items = [{**o, "contact_email": f"team@{o['id']}.{tenant}.example.org", "email_opt_in": True} for o in ORGS]
        assert client.post("/v1/organisations/bulk", json={"items": items}, headers=h).status_code == 200
        assert client.post("/v1/challenges", json={"id": "microgrid-pilot", "title": "Microgrid pilot", "owner_id": "voltgrid",
                                                   "description": "A municipal microgrid with battery storage."},
                           headers=h).status_code == 201
        store = engine.for_tenant(tenant).store
        store.record_digest_attempt(store.add_digest("voltgrid", f"<{tenant}1@x>", [{"kind": "organisations", "id": "lumen"}],
                                                     b"message"), "sent")
        store.add_digest("aquasense", f"<{tenant}2@x>", [{"kind": "organisations", "id": "voltgrid"}], b"message")
        assert client.post("/v1/jobs/batch-match", json={"queries": [{"organisation_id": "voltgrid"},
                                                                     {"text": "battery storage for microgrids"}], "k": 5},
                           headers=h).status_code == 202
        assert client.post("/v1/match", json={"query": {"text": "battery storage"}, "k": 3}, headers=h).status_code == 200
    JobWorker(engine).run_forever(once=True)
    assert client.post("/v1/organisations", json=ORGS[1], headers=headers["c"]).status_code == 201
    for tenant in "abc":
        engine.for_tenant(tenant).save_snapshots()
    return client, engine, headers


def test_export_holds_everything_stored_about_the_organisation(stocked):
    client, engine, headers = stocked
    r = client.get("/v1/organisations/voltgrid/export", headers=headers["a"])
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    export = r.get_json()
    assert export["tenant"] == "a" and export["organisation"]["contact_email"] == "team@voltgrid.a.example.org"
    assert export["organisation"]["description"] == ORGS[0]["description"]
    assert [c["id"] for c in export["challenges_owned"]] == ["microgrid-pilot"]
    [digest] = export["digests"]  # its own digest; aquasense's, which names it, is aquasense's
    assert digest["organisation_id"] == "voltgrid" and digest["status"] == "sent" and digest["sent_at"]
    assert digest["matches"] == [{"kind": "organisations", "id": "lumen"}] and "message" not in digest
    [job] = export["jobs"]
    assert job["status"] == "done" and [q["request"]["query"]["organisation_id"] for q in job["queries"]] == ["voltgrid"]
    lines = {r["line"]: r["result"] for r in job["results"]}
    assert lines[1] and all(row[1] == "voltgrid" for row in lines[1])  # its own query's result rows
    assert all(row[3] == "voltgrid" for row in lines.get(2, []))  # another query's rows: only those matching it
    assert "b.example.org" not in r.get_data(as_text=True)  # nothing of tenant b's voltgrid
    assert client.get("/v1/organisations/voltgrid/export", headers=headers["b"]).get_json()["organisation"]["contact_email"] \
        == "team@voltgrid.b.example.org"
    assert client.get("/v1/organisations/voltgrid/export", headers=headers["c"]).status_code == 404
    write_only = {"Authorization": f"Bearer {KeyStore(engine.store).create('a', 'read,match,write')[0]}"}
    r = client.get("/v1/organisations/voltgrid/export", headers=write_only)
    assert r.status_code == 403 and "admin" in r.get_json()["error"]["message"]
    spec = client.get("/openapi.json").get_json()["paths"]["/v1/organisations/{id}/export"]["get"]
    assert spec["x-required-scope"] == "admin" and "404" in spec["responses"]


def _others(engine, gone: str) -> dict:
    """Every row of every table that is not tenant ``gone``'s (sync_state's sequence number aside), as stored."""
    dump = {}
    with engine.store.engine.connect() as conn:
        their_jobs = select(jobs.c.id).where(jobs.c.tenant == gone)
        for table in metadata.sorted_tables:
            query = select(table)
            if "tenant" in table.c:
                query = query.where(table.c.tenant != gone)
            elif table is job_results:
                query = query.where(job_results.c.job_id.not_in(their_jobs))
            elif table is tenants:
                query = query.where(tenants.c.id != gone)
            else:
                continue
            dump[table.name] = sorted(tuple(row) for row in conn.execute(query.order_by(*table.primary_key.columns)))
    return dump


def test_tenant_delete_removes_everything_of_it_and_nothing_else(stocked, monkeypatch, capsys):
    client, engine, headers = stocked
    before = _others(engine, "a")
    index = engine.settings.index_dir
    snapshots = {p.relative_to(index): p.read_bytes() for p in index.rglob("*.npz") if p.parent.name != "a"}
    assert (index / "a").is_dir() and before["organisations"] and before["api_keys"] and before["job_results"]
    assert len(engine.for_tenant("a").indexes[ORG]) == len(ORGS)

    monkeypatch.setenv("MATCHER_DATA_DIR", str(engine.settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", engine.settings.db_url)
    assert cli.main(["tenant", "delete", "a"]) == 0
    assert "deleted tenant a" in capsys.readouterr().out

    assert _others(engine, "a") == before
    assert {p.relative_to(index): p.read_bytes() for p in index.rglob("*.npz")} == snapshots and not (index / "a").exists()
    with engine.store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            if "tenant" in table.c and table is not changes:
                assert conn.execute(select(table).where(table.c.tenant == "a")).first() is None, table.name
        assert conn.execute(select(tenants).where(tenants.c.id == "a")).first() is None
        left = conn.execute(select(changes.c.entity_id, changes.c.op).where(changes.c.tenant == "a")).all()
    assert left and set(left) == {("", "delete")}  # a row number per deleted row for running processes, no id
    assert client.get("/v1/organisations", headers=headers["a"]).status_code == 401  # its keys are gone
    assert len(engine.for_tenant("a").indexes[ORG]) == len(ORGS)
    engine.for_tenant("a").sync()  # a process that held its indexes drops its rows at the next sync
    assert len(engine.for_tenant("a").indexes[ORG]) == 0
    r = client.post("/v1/match", json={"query": {"text": "battery storage"}, "k": 3}, headers=headers["b"])
    assert r.status_code == 200 and "voltgrid" in {m["id"] for m in r.get_json()["matches"]}
    assert cli.main(["tenant", "delete", "a"]) == 1 and "no tenant" in capsys.readouterr().err
