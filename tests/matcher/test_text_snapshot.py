"""The text indexes' snapshot: the arrays file, and an engine loaded from it ranking exactly as one built from the store."""
import numpy as np
import pytest

from matcher import arrays_file
from matcher.engine import Engine
from matcher.hybrid import gather
from matcher.index import Filter
from matcher.sentence_index import SentenceIndex
from models.enums import EntityKind
from tests.conftest import ORGS, org

ORG = EntityKind.organisations


def test_arrays_file_round_trip_maps_read_only_and_refuses_damage(tmp_path):
    path = tmp_path / "x.arrays"
    arrays = {"a": np.arange(10, dtype=np.int64), "m": np.ones((3, 4), np.float32), "empty": np.zeros(0, np.int32),
              "words": arrays_file.strings(["näive", "two\0words", ""])}
    arrays_file.write(path, {"seq": 7}, arrays)
    header, loaded = arrays_file.read(path, writable=("m",))
    assert header == {"seq": 7} and loaded["a"].tolist() == list(range(10)) and loaded["empty"].shape == (0,)
    assert arrays_file.from_strings(loaded["words"]) == ["näive", "two\0words", ""]
    with pytest.raises(ValueError):
        loaded["a"][0] = 1  # read-only map
    loaded["m"][0, 0] = 5.0  # copy-on-write: this process only
    assert arrays_file.read(path)[1]["m"][0, 0] == 1.0
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(arrays_file.ArraysFileError, match="checksum"):
        arrays_file.read(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(arrays_file.ArraysFileError):
        arrays_file.read(path)


def test_sentence_index_gathers_base_and_overlay_rows_in_order():
    index = SentenceIndex(2)
    index.upsert([5, 2, 9], [np.array([[1, 0], [0, 1]]), np.array([[1, 1]]), None])
    nums, counts, vectors = index.arrays()  # folded into the base
    assert nums.tolist() == [2, 5] and counts.tolist() == [1, 2] and vectors.tolist() == [[1, 1], [1, 0], [0, 1]]
    index.upsert([2], [np.array([[3, 3], [4, 4]])])  # overlay over the base
    index.remove([5])
    got, owner = index.gather(np.array([5, 2, 7]))
    assert got.tolist() == [[3, 3], [4, 4]] and owner.tolist() == [1, 1]
    index.upsert([9], [np.array([[0, 2]])])  # overlay and base rows together: similarities in gather's order
    nums, queries = np.array([9, 2, 5, 7]), [np.array([1, 0], np.float32), np.array([0, 1], np.float32)]
    (first, second), owner = index.similarities(nums, queries)
    vectors, gathered_owner = index.gather(nums)
    assert owner.tolist() == gathered_owner.tolist() == [0, 1, 1]
    assert first.tolist() == (vectors @ queries[0]).tolist() == [0, 3, 4] and second.tolist() == [2, 3, 4]
    index.remove([9])
    loaded = SentenceIndex.from_arrays(2, *index.arrays())
    assert [a.tolist() for a in loaded.gather(np.array([2, 5]))] == [[[3, 3], [4, 4]], [0, 0]]


def _with_records(engine):
    engine.upsert_many(ORG, ORGS + [
        org("nordic-h2", "Nordic Hydrogen Institute", "Research on electrolysers and hydrogen valleys for ports.",
            "research_institute", country="DK", past_projects=[
                {"title": "Hydrogen for harbour cranes", "year": 2022, "role": "coordinator", "partner_ids": ["port-consult"]},
                {"title": "Green ammonia bunkering", "year": 2021, "partner_ids": ["port-consult", "not-stored"]}]),
        org("port-consult", "Port Logistics Consult", "Advisory on terminal operations and port logistics.",
            "large_company", country="NL", past_projects=[{"title": "Smart terminal scheduling", "year": 2019,
                                                           "partner_ids": ["nordic-h2"]}]),
    ])
    return engine


def _signals(engine, text: str):
    engine.live.sync()  # the engines share one store: each applies the others' writes
    vector = engine.encoder.encode([text])[0]
    found = gather(engine.live.corpus(ORG), vector, text, Filter(), 50, 5, engine.encoder.encode_sentences([text])[0])
    return dict(zip(found.nums, found.X.tolist())), found.seeds


def _same(got, expected) -> bool:
    """The same candidates and seeds, and the same signals up to float32 rounding (BLAS sums in another order
    over matrices of another shape)."""
    (rows, seeds), (want, want_seeds) = got, expected
    return seeds == want_seeds and rows.keys() == want.keys() and all(
        np.allclose(rows[n], want[n], rtol=1e-6, atol=1e-6) for n in rows)


def _reload(settings, encoder) -> Engine:
    engine = Engine(settings, encoder=encoder)
    engine.load_indexes()
    return engine


def test_an_engine_loaded_from_the_snapshot_ranks_and_changes_as_one_built_from_the_store(settings, encoder, engine):
    _with_records(engine)
    engine.live.save_snapshots()
    queries = ["hydrogen cranes in ports", "leak detection for water pipes", "terminal scheduling"]
    built = [_signals(engine, q) for q in queries]
    loaded = _reload(settings, encoder)
    assert loaded.live.text_snapshot_path().exists()
    assert isinstance(loaded.live.past_work._matrix.base, np.memmap)  # mapped, not read from the store
    assert all(_same(_signals(loaded, q), b) for q, b in zip(queries, built))
    # Writes change the loaded indexes (made from the arrays on the first write) as they change built ones
    # (which replay them).
    loaded.upsert_many(ORG, [org("not-stored", "Ammonia Shipping", "Ammonia fuel for ships and bunkering in ports.",
                                 past_projects=[{"title": "Green ammonia bunkering", "year": 2023, "partner_ids": ["nordic-h2"]}])])
    loaded.delete(ORG, "port-consult")
    fresh = _reload(settings, encoder)  # replays the changes over the snapshot
    fresh.live.text_snapshot_path().unlink()
    from_store = _reload(settings, encoder)  # no text snapshot: built from the store
    for q in queries:
        expected = _signals(from_store, q)
        assert _same(_signals(engine, q), expected) and _same(_signals(loaded, q), expected)
        assert _same(_signals(fresh, q), expected)
    num = from_store.indexes[ORG].num_of["nordic-h2"]
    assert loaded.live.records.neighbours(num) == from_store.live.records.neighbours(num) != set()


def test_a_damaged_or_stale_text_snapshot_is_rebuilt_from_the_store(settings, encoder, engine):
    _with_records(engine)
    engine.live.save_snapshots()
    path = engine.live.text_snapshot_path()
    path.write_bytes(path.read_bytes()[:-100])
    expected = _signals(engine, "hydrogen cranes in ports")
    rebuilt = _reload(settings, encoder)
    assert _same(_signals(rebuilt, "hydrogen cranes in ports"), expected)
    assert arrays_file.read(path)[0]["seq"] == rebuilt.live.synced_seq  # rewritten whole
