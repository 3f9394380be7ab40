"""Similar past work: the kernel over past project titles, kept in sync with the store, erased with the row."""
import numpy as np
import pytest
from sqlalchemy import update

from matcher.engine import Engine
from matcher.past_work import TAU, PastWork, distinct_titles
from matcher.text import query_title
from models.enums import EntityKind
from models.schemas import MatchRequest
from models.tables import organisations
from tests.conftest import org

ORG = EntityKind.organisations


def unit(*values) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def doc(id: str, *titles: str) -> dict:
    return {"id": id, "past_projects": [{"title": t, "year": 2022} for t in titles]}


def test_mass_grows_with_how_close_and_how_much_past_work():
    work = PastWork()
    near, far = unit(1, 0.05, 0), unit(0, 1, 0)
    work.upsert([1, 2, 3], [doc("a", "near"), doc("b", "near", "near", "far"), doc("c", "far")],
                [np.vstack([near]), np.vstack([near, far]), np.vstack([far])])
    nums, mass, best = work.mass(unit(1, 0, 0))
    got = dict(zip(nums.tolist(), mass.tolist()))
    assert best == pytest.approx(float(near @ unit(1, 0, 0)))
    assert got[1] == pytest.approx(1.0)  # the best title counts 1
    assert got[2] == pytest.approx(2.0 + np.exp((float(far @ unit(1, 0, 0)) - best) / TAU))  # twice the near project
    assert got[3] < 1e-3  # nothing near the query
    assert work.titles() == 2  # a title several organisations share is held once


def test_titles_go_with_the_last_row_naming_them_and_unknown_titles_need_vectors():
    work = PastWork()
    work.upsert([1, 2], [doc("a", "shared", "only a"), doc("b", "shared")],
                [np.vstack([unit(1, 0), unit(0, 1)]), np.vstack([unit(1, 0)])])
    work.remove([1])
    assert work.titles() == 1  # "only a" is forgotten, vector included
    work.upsert([3], [doc("c", "only a", "shared")])  # no vectors given: only the known title counts
    assert work.closest_titles(3, unit(0, 1)) == [("shared", pytest.approx(0.0, abs=1e-6))]
    work.remove([2, 3])
    assert work.titles() == 0 and len(work) == 0
    assert len(work.mass(unit(1, 0))[0]) == 0


@pytest.fixture
def engine_with_work(engine):
    engine.upsert_many(ORG, [
        org("tram", "Tram Lab", "Urban mobility research.", type="research_institute",
            past_projects=[{"title": "Electric trams for small cities", "year": 2022},
                           {"title": "Battery buses in winter", "year": 2021}]),
        org("farm", "Farm Co", "Agritech.", past_projects=[{"title": "Precision irrigation sensors", "year": 2022}]),
        org("fresh", "Fresh Start", "No projects yet."),
    ])
    return engine


def test_written_organisations_bring_their_titles_and_a_delete_erases_them(engine_with_work):
    engine = engine_with_work
    stored = {r.id: r for r in engine.store.vectors(ORG)}
    assert stored["fresh"].project_vectors is None
    matrix = np.frombuffer(stored["tram"].project_vectors, np.float16).reshape(-1, engine.encoder.dim)
    assert matrix.shape[0] == len(distinct_titles(stored["tram"].data)) == 2
    tram = engine.indexes[ORG].num_of["tram"]
    query = engine.encoder.encode(["trams for a small city"])[0]
    assert engine.live.past_work.closest_titles(tram, query)[0][0] == "Electric trams for small cities"
    engine.delete(ORG, "tram")
    assert engine.live.past_work.titles() == 1  # only the farm's title is left in memory


def test_a_store_from_before_past_work_is_embedded_on_load(engine_with_work, settings, encoder):
    engine_with_work.store.dispose()
    from models.store import Store

    store = Store(settings.db_url)
    with store.engine.begin() as conn:  # as an older version left it
        conn.execute(update(organisations).values(project_vectors=None))
    store.dispose()
    engine_with_work.live.text_snapshot_path().unlink()  # an older version wrote no text indexes' snapshot
    reopened = Engine(settings, encoder=encoder).open()
    reopened.load_indexes()
    assert reopened.live.past_work.titles() == 3
    assert all(r.project_vectors is not None for r in reopened.store.vectors(ORG) if r.id != "fresh")


def test_match_explains_with_the_past_work_that_ranked_it(engine_with_work):
    result = engine_with_work.match(MatchRequest.model_validate({"query": {"text": "electric trams in small cities"}, "k": 3}))
    top = result["matches"][0]
    assert top["id"] == "tram"
    related = top["explanation"]["related_projects"]
    assert related[0]["title"] == "Electric trams for small cities" and related[0]["similarity"] > 0.6


def test_the_title_of_a_query_is_its_first_line_when_more_follows():
    assert query_title("Electric trams for small cities.\nThe call asks for pilots in two cities.") == "Electric trams for small cities."
    assert query_title("\n  Cultural tourism in rural areas \n\nScope: ...") == "Cultural tourism in rural areas"
    assert query_title("sensors that detect ice on cycle paths") is None  # one line: all of it is the title
    assert query_title("") is None


def test_a_call_texts_title_line_is_compared_with_past_project_titles(engine_with_work):
    """Past work is matched title to title: a call's title line against past project titles, not the whole call."""
    text = ("Electric trams for small cities\n"
            "Expected outcome: regions get cleaner air and quieter streets, and the farms around them save water "
            "with irrigation planned from sensors in the fields; results are shared with other regions.")
    result = engine_with_work.match(MatchRequest.model_validate({"query": {"text": text}, "k": 3}))
    tram = next(m for m in result["matches"] if m["id"] == "tram")
    related = tram["explanation"]["related_projects"][0]
    assert related["title"] == "Electric trams for small cities"
    assert related["similarity"] > 0.95  # the title line embedded alone is (almost) the same text as the title
    whole = engine_with_work.encoder.encode([text])[0]
    num = engine_with_work.indexes[ORG].num_of["tram"]
    assert dict(engine_with_work.live.past_work.closest_titles(num, whole))["Electric trams for small cities"] < 0.9
