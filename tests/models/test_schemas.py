import pytest

from models.enums import EntityKind
from models.schemas import MAX_DESCRIPTION, InvalidInput, validate_entities, validate_entity

ORG = EntityKind.organisations
CH = EntityKind.challenges


def fields_of(exc: InvalidInput) -> set[str]:
    return {d["field"] for d in exc.details}


def test_organisation_minimal_gets_an_id_and_defaults():
    doc = validate_entity(ORG, {"name": " VoltGrid ", "type": "startup", "description": "Batteries."})
    assert doc["id"].startswith("org-") and len(doc["id"]) > 10
    assert doc["name"] == "VoltGrid"
    assert doc["email_opt_in"] is False and doc["offers"] == [] and doc["past_projects"] == []


@pytest.mark.parametrize("given,stored", [("EL", "GR"), ("UK", "GB"), ("de", "DE"), ("gr", "GR")])
def test_eu_country_codes_are_stored_as_iso(given, stored):
    assert validate_entity(ORG, {"name": "x", "type": "sme", "description": "y", "country": given})["country"] == stored


def test_each_bad_field_is_named():
    with pytest.raises(InvalidInput) as info:
        validate_entity(ORG, {"name": "", "type": "spaceship", "description": "y", "country": "ZZ",
                              "website": "ftp://x", "contact_email": "nobody", "partnership_forms": ["marriage"],
                              "unknown_field": 1})
    assert fields_of(info.value) == {"name", "type", "country", "website", "contact_email",
                                     "partnership_forms[0]", "unknown_field"}


def test_over_limit_description_is_rejected_not_truncated():
    with pytest.raises(InvalidInput) as info:
        validate_entity(ORG, {"name": "x", "type": "sme", "description": "a" * (MAX_DESCRIPTION + 1)})
    assert fields_of(info.value) == {"description"}
    assert len(validate_entity(ORG, {"name": "x", "type": "sme", "description": "a" * MAX_DESCRIPTION})["description"]) == MAX_DESCRIPTION


def test_past_projects_may_name_unknown_partners_but_must_be_well_formed():
    doc = validate_entity(ORG, {"name": "x", "type": "sme", "description": "y",
                                "past_projects": [{"title": "GRIDS", "year": 2022, "role": "coordinator", "partner_ids": ["nobody-stored"]}]})
    assert doc["past_projects"][0]["partner_ids"] == ["nobody-stored"]
    with pytest.raises(InvalidInput) as info:
        validate_entity(ORG, {"name": "x", "type": "sme", "description": "y", "past_projects": [{"year": "soon"}]})
    assert fields_of(info.value) == {"past_projects[0].title", "past_projects[0].year"}


def test_url_id_wins_only_when_it_agrees():
    assert validate_entity(ORG, {"name": "x", "type": "sme", "description": "y"}, entity_id="abc")["id"] == "abc"
    with pytest.raises(InvalidInput) as info:
        validate_entity(ORG, {"id": "other", "name": "x", "type": "sme", "description": "y"}, entity_id="abc")
    assert fields_of(info.value) == {"id"}


def test_challenge_fields():
    doc = validate_entity(CH, {"title": "Cool roofs", "description": "Heat.", "deadline": "2027-03-01",
                               "preferred_partner_types": ["startup"]})
    assert doc["status"] == "open" and doc["deadline"] == "2027-03-01" and doc["id"].startswith("ch-")
    with pytest.raises(InvalidInput) as info:
        validate_entity(CH, {"title": "x", "description": "y", "deadline": "someday", "status": "pending",
                             "preferred_partner_types": ["wizard"]})
    assert fields_of(info.value) == {"deadline", "status", "preferred_partner_types[0]"}


def test_bulk_reports_every_bad_item_and_duplicates():
    items = [
        {"id": "a", "name": "A", "type": "sme", "description": "y"},
        {"id": "b", "name": "B", "type": "nope", "description": "y"},
        {"id": "a", "name": "A again", "type": "sme", "description": "y"},
        "not an object",
    ]
    with pytest.raises(InvalidInput) as info:
        validate_entities(ORG, items)
    assert fields_of(info.value) == {"items[1].type", "items[2].id", "items[3]"}
    assert "nothing was written" in info.value.message
