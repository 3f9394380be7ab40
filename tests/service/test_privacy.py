"""contact_email is write-only: stored for the digests, never returned by any API response."""
from models.enums import EntityKind
from tests.conftest import ORGS

ADDRESS = "hello@voltgrid.example.org"


def test_contact_email_is_never_returned(client, engine):
    voltgrid = {**ORGS[0], "contact_email": ADDRESS, "email_opt_in": True}
    responses = [client.post("/v1/organisations", json=voltgrid)]
    assert responses[0].status_code == 201
    responses.append(client.post("/v1/organisations/bulk", json={"items": [{**o, "contact_email": f"x@{o['id']}.example.org"}
                                                                              for o in ORGS[1:]]}))
    responses += [client.get("/v1/organisations"), client.get("/v1/organisations/voltgrid"),
                  client.patch("/v1/organisations/voltgrid", json={"city": "Delft"}),
                  client.post("/v1/match", json={"query": {"organisation_id": "aquasense"}}),
                  client.post("/v1/match", json={"query": {"text": ADDRESS}})]
    for r in responses:
        assert r.status_code in (200, 201) and "@" not in r.get_data(as_text=True), r.request.path
    assert client.get("/v1/organisations/voltgrid").get_json()["email_opt_in"] is True
    assert engine.store.get(EntityKind.organisations, "voltgrid")["contact_email"] == ADDRESS  # stored all the same
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["schemas"]["OrganisationIn"]["properties"]["contact_email"]["writeOnly"] is True


def test_read_edit_put_keeps_the_address_and_null_removes_it(client, engine):
    client.post("/v1/organisations", json={**ORGS[0], "contact_email": ADDRESS})
    doc = client.get("/v1/organisations/voltgrid").get_json()
    assert "contact_email" not in doc
    assert client.put("/v1/organisations/voltgrid", json={**doc, "name": "VoltGrid BV"}).status_code == 200
    assert engine.store.get(EntityKind.organisations, "voltgrid")["contact_email"] == ADDRESS
    assert client.put("/v1/organisations/voltgrid", json={**doc, "contact_email": "new@voltgrid.example.org"}).status_code == 200
    assert engine.store.get(EntityKind.organisations, "voltgrid")["contact_email"] == "new@voltgrid.example.org"
    assert client.patch("/v1/organisations/voltgrid", json={"contact_email": None}).status_code == 200
    assert engine.store.get(EntityKind.organisations, "voltgrid").get("contact_email") is None
