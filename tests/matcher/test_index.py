import numpy as np
import pytest

from matcher.index import Filter, SnapshotError, VectorIndex


def unit(rows, dim=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def index():
    idx = VectorIndex(16)
    vectors = unit(200)
    metas = [{"id": f"o{i}", "name": f"O{i}", "type": "sme" if i % 20 == 0 else "university",
              "country": "DE" if i % 2 else "FR"} for i in range(200)]
    idx.upsert(list(range(1000, 1200)), vectors, metas)
    return idx, vectors


def test_search_ranks_by_inner_product(index):
    idx, vectors = index
    hits = idx.search(vectors[5], 3)[0]
    assert hits[0][0] == 1005 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_filters_return_k_whenever_k_exist(index):
    idx, vectors = index
    # 10 of 200 rows are SMEs; a post-filter over the global top 10 would find about none.
    hits = idx.search(vectors[1], 10, Filter(types=("sme",)))[0]
    assert len(hits) == 10
    assert all(idx.meta[n]["type"] == "sme" for n, _ in hits)
    hits = idx.search(vectors[1], 50, Filter(types=("sme",), countries=("FR",)))[0]
    assert len(hits) == 10  # only 10 exist
    excluded = idx.search(vectors[0], 5, Filter(exclude_nums=(1000,)))[0]
    assert 1000 not in [n for n, _ in excluded] and len(excluded) == 5


def test_remove_and_replace(index):
    idx, vectors = index
    idx.remove([1005])
    assert 1005 not in [n for n, _ in idx.search(vectors[5], 10)[0]] and len(idx) == 199
    idx.upsert([1006], vectors[7:8], [{"id": "o6", "name": "moved", "type": "sme", "country": "DE"}])
    assert len(idx) == 199 and idx.search(vectors[7], 2)[0][0][1] == pytest.approx(1.0, abs=1e-5)


def test_snapshot_round_trip_and_corruption_detected(index, tmp_path):
    idx, vectors = index
    path = tmp_path / "organisations.snapshot.npz"
    idx.save(path, seq=42, model="m")
    loaded, seq = VectorIndex.load(path, model="m", dim=16)
    assert seq == 42 and len(loaded) == 200 and loaded.meta == idx.meta
    assert loaded.search(vectors[3], 5) == idx.search(vectors[3], 5)
    with pytest.raises(SnapshotError):
        VectorIndex.load(path, model="another-model", dim=16)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        VectorIndex.load(path, model="m", dim=16)
    path.write_bytes(b"garbage")
    with pytest.raises(SnapshotError):
        VectorIndex.load(path, model="m", dim=16)


def test_lexical_index_forgets_a_removed_rows_words():
    from matcher.lexical import LexicalIndex

    lex = LexicalIndex()
    lex.upsert([1, 2, 3], ["battery storage for microgrids", "leak detection in water pipes", "battery recycling Zyxwvut"])
    before = dict(zip(*lex.scores("battery")))
    lex.remove([3])
    nums, scores = lex.scores("battery zyxwvut")
    assert "zyxwvut" not in lex.vocab and set(nums.tolist()) == {1, 2}
    assert dict(zip(nums.tolist(), scores.tolist()))[1] > 0 and before[1] > 0
    lex.upsert([4], ["water pipes and batteries"])
    assert dict(zip(*lex.scores("water")))[4] > 0 and dict(zip(*lex.scores("pipes")))[2] > 0
