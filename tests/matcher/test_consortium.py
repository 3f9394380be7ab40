"""The consortium builder: constraints honoured, alternatives with little overlap, roles and reasons, errors."""
import json

import numpy as np
import pytest

from matcher import cli
from matcher.consortium import build, parse_request
from models.enums import EntityKind
from models.schemas import InvalidInput
from tests.conftest import ORGS, org

MORE = [
    org("gridlab", "GridLab Research", "Research institute modelling battery storage and district heating networks.",
        "research_institute", country="DE"),
    org("solarcoop", "Solar Citizens Cooperative", "Citizen energy cooperative that runs shared rooftop solar and batteries.",
        "citizen_group", country="NL"),
    org("eindhoven", "Eindhoven Energy Transition Office", "City office piloting local energy communities and grid storage.",
        "public_authority", country="NL"),
    org("heatflow", "HeatFlow", "Heat pump control software for district heating networks.", "sme", country="DK"),
    org("lyon-energy", "Lyon Metropole Energy Department", "Metropolitan energy department planning battery storage for "
        "its district heating and solar rooftops.", "public_authority", country="FR"),
    org("bigbatt", "BigBatt Industries", "Manufacturer of large stationary batteries for utilities.", "large_company", country="SE"),
]
CHALLENGE = {"id": "ch-storage", "title": "Battery storage for a district energy system",
             "description": "Ghent wants to balance solar peaks in its district energy system with battery storage. "
                            "The pilot needs controllers for microgrids and research on battery ageing. "
                            "Citizens should take part through an energy community.",
             "needs": ["battery management systems", "energy community software"], "owner_id": "ghent-energy"}


@pytest.fixture
def stocked(engine):
    engine.upsert_many(EntityKind.organisations, ORGS + MORE)
    engine.create(EntityKind.challenges, CHALLENGE)
    return engine


def test_consortia_cover_the_challenge_under_constraints(stocked):
    request = parse_request({"challenge_id": "ch-storage", "size": 4, "alternatives": 2,
                             "required_types": [["public_authority"], ["university", "research_institute"]],
                             "must_include": ["recyclo"], "exclude": ["bigbatt"]})
    result = build(stocked, request)
    assert result["challenge"]["id"] == "ch-storage" and result["aspects"] == 5  # 3 sentences + 2 needs
    first, second = result["consortia"]
    for team in (first, second):
        ids = [m["id"] for m in team["members"]]
        types = [m["type"] for m in team["members"]]
        assert len(ids) == 4 and len(set(ids)) == 4 and "recyclo" in ids and "bigbatt" not in ids
        assert "ghent-energy" not in ids  # the challenge's owner is not its own partner
        assert "public_authority" in types and {"university", "research_institute"} & set(types)
        assert team["missing_types"] == []
        assert all(m["role"] and m["why"].endswith(".") for m in team["members"])
        assert sum(m["role"].startswith("coordinator") for m in team["members"]) == 1
    assert "voltgrid" in [m["id"] for m in first["members"]]  # the closest fit for microgrid controllers
    overlap = {m["id"] for m in first["members"]} & {m["id"] for m in second["members"]}
    assert overlap == {"recyclo"}  # alternatives share only the must-include member
    recyclo = next(m for m in first["members"] if m["id"] == "recyclo")
    assert "must be included" in recyclo["why"]


def test_each_members_coverage_of_each_aspect_makes_the_heat_map(stocked):
    result = build(stocked, parse_request({"challenge_id": "ch-storage", "size": 3, "alternatives": 1}))
    aspects = result["challenge_aspects"]
    assert len(aspects) == result["aspects"] == 5 and abs(sum(a["weight"] for a in aspects) - 1) < 1e-3
    assert [a["text"] for a in aspects[-2:]] == CHALLENGE["needs"]  # the sentences, then the needs
    team = result["consortia"][0]
    grid = np.array([m["aspect_coverage"] for m in team["members"]])  # members x aspects
    assert grid.shape == (3, 5) and (grid >= 0).all() and (grid <= 1).all() and grid.std() > 0.01
    weights = np.array([a["weight"] for a in aspects])
    assert abs(float((grid.max(axis=0) * weights).sum()) - team["coverage"]) < 1e-3  # the team's best cover, weighted
    texts = [a["text"] for a in aspects]
    for pos, member in enumerate(team["members"]):  # what a member "covers" is where it is the team's best
        assert all(grid[pos, texts.index(c)] == grid[:, texts.index(c)].max() for c in member["covers"])


def test_a_required_type_with_no_candidate_left_is_reported(stocked):
    result = build(stocked, parse_request({"challenge_id": "ch-storage", "size": 3, "alternatives": 3,
                                           "required_types": [["public_authority"]]}))
    teams = result["consortia"]
    assert [len(t["members"]) for t in teams] == [3, 3, 3]
    assert [t["missing_types"] for t in teams] == [[], [], [["public_authority"]]]  # only two are stored besides the owner


def test_free_text_and_countries(stocked):
    result = build(stocked, parse_request({"text": "Leak detection for drinking-water pipes. Street lighting that dims.",
                                           "size": 2, "alternatives": 1, "countries": ["BE", "FR"]}))
    team = result["consortia"][0]
    assert {m["id"] for m in team["members"]} == {"aquasense", "lumen"}  # one per aspect, not two of a kind
    assert result["challenge"] is None and team["countries"] == ["BE", "FR"]


@pytest.mark.parametrize("body, field", [
    ({"size": 3}, "body"),
    ({"text": "x", "challenge_id": "ch-storage"}, "body"),
    ({"text": "x", "size": 1}, "size"),
    ({"text": "x", "required_types": [["wizard"]]}, "required_types[0][0]"),
    ({"text": "x", "countries": ["XX"]}, "countries[0]"),
    ({"text": "x", "size": 2, "must_include": ["a", "b", "c"]}, "body"),
    ({"text": "x", "alternatives": 9}, "alternatives"),
    ({"text": "x", "colour": "red"}, "colour"),
])
def test_bad_requests_name_the_field(body, field):
    with pytest.raises(InvalidInput) as exc:
        parse_request(body)
    assert field in [d["field"] for d in exc.value.details]


def test_http_endpoint_and_errors(client, stocked):
    r = client.post("/v1/consortia", json={"challenge_id": "ch-storage", "size": 3, "alternatives": 1})
    assert r.status_code == 200 and len(r.get_json()["consortia"][0]["members"]) == 3
    r = client.post("/v1/consortia", json={"challenge_id": "ch-nope"})
    assert r.status_code == 404 and r.get_json()["error"]["details"][0]["field"] == "challenge_id"
    r = client.post("/v1/consortia", json={"text": "storage", "must_include": ["ghost"], "exclude": []})
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "must_include[0]"
    r = client.post("/v1/consortia", json={"text": "storage", "size": "four"})
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "size"


def test_cli(stocked, monkeypatch, capsys):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(stocked.settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", stocked.settings.db_url)
    assert cli.main(["consortium", "--challenge-id", "ch-storage", "--size", "3", "--require", "university,research_institute",
                     "--alternatives", "1", "--json"]) == 0
    team = json.loads(capsys.readouterr().out)["consortia"][0]
    assert len(team["members"]) == 3 and {"university", "research_institute"} & set(team["types"])
    assert cli.main(["consortium", "--text", "storage", "--require", "wizard"]) == 2
    assert "required_types[0][0]" in capsys.readouterr().err
