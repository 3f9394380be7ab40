"""JSON bodies are strictly typed: booleans are true or false, numbers are numbers, and a 400 names the field.
The rows of a file (CSV and XLSX cells are text) stay lax, as the README documents."""
from __future__ import annotations

import pytest

from matcher.records import import_file
from models.enums import EntityKind
from tests.conftest import ORGS

ORG = {"name": "HydroLoop", "type": "startup", "description": "Greywater recycling for apartment blocks."}
QUERY = {"query": {"text": "battery storage"}}


@pytest.mark.parametrize("path, body, field", [
    ("/v1/match", {**QUERY, "explain": "yes"}, "explain"),
    ("/v1/match", {**QUERY, "explain": "off"}, "explain"),
    ("/v1/match", {**QUERY, "explain": 1}, "explain"),
    ("/v1/match", {**QUERY, "k": "10"}, "k"),
    ("/v1/match", {**QUERY, "k": 10.0}, "k"),
    ("/v1/match/batch", {"requests": [{**QUERY, "explain": "no"}]}, "requests[0].explain"),
    ("/v1/organisations", {**ORG, "email_opt_in": "yes"}, "email_opt_in"),
    ("/v1/organisations", {**ORG, "n_past_projects": "12"}, "n_past_projects"),
    ("/v1/organisations", {**ORG, "past_projects": [{"title": "Heat pumps", "year": "2023"}]}, "past_projects[0].year"),
    ("/v1/organisations", {**ORG, "past_projects": [{"title": "Heat pumps", "year": 2023.0}]}, "past_projects[0].year"),
    ("/v1/organisations/bulk", {"items": [{**ORG, "email_opt_in": "true"}]}, "items[0].email_opt_in"),
    ("/v1/jobs/batch-match", {"queries": [{"text": "leaks"}], "explain": "yes"}, "explain"),
    ("/v1/jobs/batch-match", {"queries": [{"text": "leaks"}], "k": "5"}, "k"),
    ("/v1/consortia", {"text": "battery storage", "size": "3"}, "size"),
])
def test_lax_values_in_json_bodies_are_400_naming_the_field(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.get_json()
    assert field in {d["field"] for d in r.get_json()["error"]["details"]}


def test_patch_and_put_are_strict_and_true_false_are_accepted(client, engine):
    assert client.post("/v1/organisations/bulk", json={"items": ORGS[:2]}).status_code == 200
    for method, body in [("patch", {"email_opt_in": "yes"}), ("put", {**ORGS[0], "email_opt_in": "no"})]:
        r = getattr(client, method)("/v1/organisations/voltgrid", json=body)
        assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "email_opt_in"
    assert engine.store.get(EntityKind.organisations, "voltgrid")["email_opt_in"] is False
    r = client.patch("/v1/organisations/voltgrid", json={"email_opt_in": True, "past_projects": [{"title": "Grids", "year": 2021}]})
    assert r.status_code == 200 and r.get_json()["email_opt_in"] is True and r.get_json()["past_projects"][0]["year"] == 2021
    assert client.post("/v1/match", json={**QUERY, "explain": False, "k": 2}).status_code == 200


def test_a_jobs_profile_queries_are_strict_too(client):
    r = client.post("/v1/jobs/batch-match", json={"queries": [{"text": "leaks"}, {**ORG, "email_opt_in": "yes"}]})
    assert r.status_code == 202
    assert [(e["field"], e["line"]) for e in r.get_json()["errors"]] == [("queries[1].email_opt_in", 2)]


def test_csv_cells_stay_lax(engine, tmp_path):
    path = tmp_path / "orgs.csv"
    path.write_text("id,name,type,description,email_opt_in,n_past_projects\n"
                    "hydro,HydroLoop,startup,Greywater recycling for apartment blocks.,yes,12\n"
                    "lumen,Lumen,sme,Adaptive street lighting.,false,0\n", encoding="utf-8")
    report = import_file(engine, EntityKind.organisations, path, progress=False)
    assert report.errors == [] and report.written == 2
    hydro = engine.store.get(EntityKind.organisations, "hydro")
    assert hydro["email_opt_in"] is True and hydro["n_past_projects"] == 12
    assert engine.store.get(EntityKind.organisations, "lumen")["email_opt_in"] is False
