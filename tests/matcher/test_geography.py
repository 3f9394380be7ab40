"""Place in matching: coordinates in the index, distances and their wording, the near filter, locality "local",
and the consortium builder's local seats and countries (on the shipped demo data's Tampere challenge)."""
import numpy as np
import pytest

from matcher import places
from matcher.consortium import build, parse_request
from matcher.demo import load_demo
from matcher.engine import Engine
from matcher.index import VectorIndex
from matcher.settings import Settings
from models.enums import EntityKind
from models.errors import InvalidInput, NotFoundError
from models.schemas import MatchRequest, parse
from tests.conftest import ORGS, empty_db_url, org

ORG, CH = EntityKind.organisations, EntityKind.challenges
NOWHERE = org("nowhere", "Nowhere Batteries", "Battery storage for microgrids and district energy.", "sme",
              country="BE", city="Atlantis")
GHENT = (51.05, 3.71667)


def req(**body) -> MatchRequest:
    return parse(MatchRequest, body)


def by_id(result) -> dict[str, dict]:
    return {m["id"]: m for m in result["matches"]}


@pytest.fixture
def placed(engine):
    engine.upsert_many(ORG, ORGS + [NOWHERE])
    return engine


def test_the_index_holds_each_entitys_coordinates(placed):
    meta = placed.indexes[ORG].meta
    rows = {m["id"]: m for m in meta.values()}
    assert places.point_of(rows["aquasense"]) == places.locate("Ghent", "BE")
    assert places.point_of(rows["recyclo"]) == places.locate("Thessaloniki", "GR")  # stored as GR (sent as EL)
    assert rows["nowhere"]["lat"] is None and rows["nowhere"]["lon"] is None  # stored and matched all the same


def test_a_stored_query_gives_each_match_its_distance_and_says_it(placed):
    result = placed.match(req(query={"organisation_id": "ghent-energy"}, k=7))
    matches = by_id(result)
    assert matches["aquasense"]["distance_km"] == 0.0
    assert matches["aquasense"]["explanation"]["distance"] == "same city"
    assert matches["aquasense"]["explanation"]["summary"].endswith("; same city.")
    assert matches["voltgrid"]["distance_km"] == pytest.approx(130.1, abs=0.2)  # Eindhoven
    assert matches["voltgrid"]["explanation"]["distance"] == "130 km away"
    assert "130 km away" in matches["voltgrid"]["explanation"]["summary"]
    assert matches["nowhere"]["distance_km"] is None  # its place is not known: said, never guessed
    assert matches["nowhere"]["explanation"]["distance"] == "place not known"
    assert "place not known" not in matches["nowhere"]["explanation"]["summary"]


def test_a_text_query_has_no_place_and_no_distance(placed):
    for match in placed.match(req(query={"text": "battery storage"}, k=5))["matches"]:
        assert "distance_km" not in match and "distance" not in match["explanation"]


def test_the_near_filter_keeps_the_matches_within_its_radius(placed):
    def near(k=7, **where):
        return placed.match(req(query={"text": "battery storage and water pipes"}, k=k, filters={"near": where}))

    ghent = near(lat=GHENT[0], lon=GHENT[1], km=20)
    assert set(by_id(ghent)) == {"aquasense", "ghent-energy"}  # not the unknown place, though it says BE
    assert all(m["distance_km"] < 1 for m in ghent["matches"])
    assert set(by_id(near(organisation="ghent-energy", km=150))) == {"aquasense", "ghent-energy", "voltgrid"}
    assert set(by_id(near(organisation="voltgrid"))) == {"voltgrid"}  # 50 km by default: nobody else near Eindhoven
    assert set(by_id(near(lat=GHENT[0], lon=GHENT[1], km=620))) == {"aquasense", "ghent-energy", "voltgrid", "lumen"}  # Lyon 595 km, Munich 652
    assert len(near(k=1, lat=GHENT[0], lon=GHENT[1], km=620)["matches"]) == 1


def test_the_near_filter_does_not_change_a_score(placed):
    free = by_id(placed.match(req(query={"organisation_id": "ghent-energy"}, k=7)))
    near = by_id(placed.match(req(query={"organisation_id": "ghent-energy"}, k=7, filters={"near": {"lat": GHENT[0], "lon": GHENT[1], "km": 150}})))
    assert near and all(near[i]["score"] == free[i]["score"] for i in near)


@pytest.mark.parametrize("near, field", [
    ({"lat": 51.0}, "filters.near"),
    ({"lat": 51.0, "lon": 3.7, "challenge": "x"}, "filters.near"),
    ({}, "filters.near"),
    ({"lat": "51.0", "lon": 3.7}, "filters.near.lat"),
    ({"lat": 91, "lon": 3.7}, "filters.near.lat"),
    ({"lat": 51.0, "lon": 3.7, "km": 0}, "filters.near.km"),
    ({"lat": 51.0, "lon": 3.7, "km": True}, "filters.near.km"),
    ({"organisation": "ghent-energy", "radius": 5}, "filters.near.radius"),
])
def test_a_bad_near_filter_is_rejected_naming_the_field(near, field):
    with pytest.raises(InvalidInput) as exc:
        req(query={"text": "x"}, filters={"near": near})
    assert exc.value.details[0]["field"] == field


def test_a_near_entity_must_exist_and_have_a_known_place(placed):
    with pytest.raises(NotFoundError) as missing:
        placed.match(req(query={"text": "x"}, filters={"near": {"challenge": "no-such"}}))
    assert missing.value.details == [{"field": "filters.near.challenge", "problem": "not found"}]
    with pytest.raises(InvalidInput) as unknown:
        placed.match(req(query={"text": "x"}, filters={"near": {"organisation": "nowhere"}}))
    assert unknown.value.details == [{"field": "filters.near.organisation",
                                      "problem": "organisation 'nowhere' has no known place (Atlantis, BE)"}]


def test_locality_local_orders_nearer_first_and_keeps_every_score(placed):
    anywhere = by_id(placed.match(req(query={"organisation_id": "ghent-energy"}, k=7)))
    local = placed.match(req(query={"organisation_id": "ghent-energy"}, k=7, locality="local"))["matches"]
    assert {m["id"]: m["score"] for m in local} == {i: m["score"] for i, m in anywhere.items()}
    keys = [m["score"] * places.locality_weight(m["distance_km"]) for m in local]
    assert keys == sorted(keys, reverse=True)
    assert list(anywhere)[:2] == ["nowhere", "tu-tampere"]  # by score: an unknown place, then Tampere
    assert [m["id"] for m in local][:3] == ["voltgrid", "aquasense", "nowhere"]  # Eindhoven, then Ghent itself
    top = placed.match(req(query={"organisation_id": "ghent-energy"}, k=2, locality="local"))["matches"]
    assert [m["id"] for m in top] == [m["id"] for m in local[:2]]  # k cuts the local order, not the score order


def test_locality_local_needs_a_place(placed):
    for body in ({"query": {"text": "battery storage"}}, {"query": {"organisation_id": "nowhere"}}):
        with pytest.raises(InvalidInput) as exc:
            placed.match(req(locality="local", **body))
        assert exc.value.details[0]["field"] == "locality"
    near = {"lat": GHENT[0], "lon": GHENT[1], "km": 20_000}  # a text with a place to be near
    assert placed.match(req(query={"text": "battery storage"}, locality="local", filters={"near": near}))["matches"]
    with pytest.raises(InvalidInput) as exc:
        req(query={"text": "x"}, locality="nearby")
    assert exc.value.details[0]["field"] == "locality"


def test_http_near_and_locality(client, placed):
    ok = client.post("/v1/match", json={"query": {"organisation_id": "ghent-energy"}, "locality": "local",
                                        "filters": {"near": {"organisation": "ghent-energy", "km": 150}}})
    assert ok.status_code == 200 and [m["id"] for m in ok.get_json()["matches"]] == ["voltgrid", "aquasense"]
    bad = client.post("/v1/match", json={"query": {"text": "x"}, "filters": {"near": {"lat": 51, "lon": "3"}}})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["details"][0]["field"] == "filters.near.lon"


def test_a_snapshot_made_before_places_gets_them_at_load(settings, encoder, placed):
    placed.save_snapshots()
    for index in placed.indexes.values():  # as an older version wrote them: no coordinates in the metadata
        for meta in index.meta.values():
            meta.pop("lat"), meta.pop("lon")
    placed.save_snapshots()
    reloaded = Engine(settings, encoder=encoder)
    reloaded.load_indexes()
    rows = {m["id"]: m for m in reloaded.indexes[ORG].meta.values()}
    assert places.point_of(rows["aquasense"]) == places.locate("Ghent", "BE") and rows["nowhere"]["lat"] is None
    snapshot, _ = VectorIndex.load(reloaded.live.snapshot_path(ORG), model=reloaded.live.snapshot_key(),
                                   dim=reloaded.indexes[ORG].dim)
    assert all("lat" in m for m in snapshot.meta.values())  # and the snapshot was rewritten with them


# --- the consortium builder on the demo data ---------------------------------------------------

TAMPERE_TEAM = {"challenge_id": "ch-tampere-winter-cycling", "size": 5, "alternatives": 2,
                "required_types": [["public_authority"], ["university", "research_institute"]]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, encoder):
    data = tmp_path_factory.mktemp("demo")
    settings = Settings.from_env(data_dir=data, db_url=empty_db_url(data), load_demo=False, auth=False)
    engine = Engine(settings, encoder=encoder).open()
    load_demo(engine, progress=False)
    return engine


def local_members(team: dict, km: float = 50) -> list[dict]:
    return [m for m in team["members"] if m["distance_km"] is not None and m["distance_km"] <= km]


def test_a_local_team_for_tampere_has_a_nearby_authority_and_university(demo):
    result = build(demo, parse_request({**TAMPERE_TEAM, "local_seats": 3, "local_km": 50}))
    for team in result["consortia"]:
        local = local_members(team)
        assert len(local) >= 3 and team["missing_local_seats"] == 0
        assert "public_authority" in {m["type"] for m in local}
        assert {"university", "research_institute"} & {m["type"] for m in local}
        assert all("local: " in m["why"] for m in local)
    first = [m["id"] for m in result["consortia"][0]["members"]]
    assert "org-kangasala-streets" in first  # Kangasala, 16 km away, looks after its own winter cycle paths
    assert "org-tampere-mobility" not in first  # the challenge's owner is not its own partner


def test_an_eu_consortium_spans_at_least_n_countries(demo):
    plain = build(demo, parse_request({**TAMPERE_TEAM, "alternatives": 1}))["consortia"][0]
    wide = build(demo, parse_request({**TAMPERE_TEAM, "alternatives": 1, "countries_min": len(plain["countries"]) + 2}))
    team = wide["consortia"][0]
    assert len(team["countries"]) >= len(plain["countries"]) + 2 and team["missing_countries"] == 0
    assert team["missing_types"] == []
    assert all(m["distance_km"] is not None for m in team["members"])  # every member says how far it is


def test_a_constraint_that_cannot_be_met_is_reported(demo):
    team = build(demo, parse_request({**TAMPERE_TEAM, "alternatives": 1, "local_seats": 2, "countries": ["EE"]}))["consortia"][0]
    assert {m["country"] for m in team["members"]} == {"EE"} and team["missing_local_seats"] == 2  # Tallinn: 160 km
    assert local_members(team) == [] and min(m["distance_km"] for m in team["members"]) > 150


@pytest.mark.parametrize("body, field", [
    ({"local_seats": 6}, "local_seats"),
    ({"countries_min": 6}, "countries_min"),
    ({"countries_min": 3, "countries": ["FI", "EE"]}, "countries_min"),
    ({"local_km": 20}, "local_km"),
    ({"local_seats": 2, "challenge_id": None, "text": "winter cycling sensors"}, "local_seats"),
])
def test_bad_place_constraints_name_the_field(demo, body, field):
    with pytest.raises(InvalidInput) as exc:
        build(demo, parse_request({k: v for k, v in {**TAMPERE_TEAM, **body}.items() if v is not None}))
    assert exc.value.details[0]["field"] == field


def test_distances_on_the_demo_are_real(demo):
    matches = by_id(demo.match(req(query={"challenge_id": "ch-tampere-winter-cycling"}, k=20)))
    assert matches["org-routa-sense"]["distance_km"] == 0.0
    kangasala = matches["org-kangasala-streets"]
    assert kangasala["distance_km"] == pytest.approx(15.8, abs=0.3) and kangasala["explanation"]["distance"] == "16 km away"
    assert np.isfinite([m["distance_km"] for m in matches.values()]).all()  # every demo city is in the gazetteer
