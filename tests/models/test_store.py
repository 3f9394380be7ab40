import json

import pytest

from models.enums import EntityKind
from models.schemas import validate_entity
from models.store import ConflictError, EmbeddingRecord, Store

ORG = EntityKind.organisations


@pytest.fixture
def store(db_url):
    store = Store(db_url)
    store.create_all()
    return store


def doc(i, **extra):
    return validate_entity(ORG, {"id": f"o{i:03d}", "name": f"Org {i}", "type": "sme", "description": "d", **extra})


def emb(i):
    return EmbeddingRecord(bytes(8), "model-x", f"h{i}")


def test_upsert_get_list_and_pages(store):
    store.upsert(ORG, [(doc(i, country="DE" if i % 2 else "FR"), emb(i)) for i in range(5)])
    got = store.get(ORG, "o003")
    assert got["name"] == "Org 3" and got["created_at"].endswith("Z")
    first = store.list(ORG, limit=2)
    assert [d["id"] for d in first] == ["o000", "o001"]
    assert [d["id"] for d in store.list(ORG, limit=2, after_id="o001")] == ["o002", "o003"]
    assert [d["id"] for d in store.list(ORG, country="DE")] == ["o001", "o003"]
    assert store.count(ORG) == 5


def test_update_keeps_num_and_created_at_and_logs_changes(store):
    store.upsert(ORG, [(doc(1), emb(1))])
    before = store.get(ORG, "o001")
    num = next(store.vectors(ORG)).num
    store.upsert(ORG, [(doc(1, city="Graz"), emb(1))])
    after = store.get(ORG, "o001")
    assert after["city"] == "Graz" and after["created_at"] == before["created_at"]
    assert next(store.vectors(ORG)).num == num
    assert [(c.seq, c.entity_id, c.op) for c in store.changes_since(0)] == [(1, "o001", "upsert"), (2, "o001", "upsert")]
    assert store.current_seq() == 2


def test_a_failed_bulk_write_leaves_the_store_as_it_was(store):
    store.upsert(ORG, [(doc(1), emb(1))])
    seq = store.current_seq()

    def explode(conn, kind, docs):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.upsert(ORG, [(doc(i, city="X"), emb(i)) for i in range(1, 50)], on_write=explode)
    assert store.count(ORG) == 1 and store.get(ORG, "o001")["city"] is None
    assert store.current_seq() == seq and len(store.changes_since(0)) == 1


def test_create_only_conflicts_without_writing(store):
    store.upsert(ORG, [(doc(1), emb(1))])
    with pytest.raises(ConflictError):
        store.upsert(ORG, [(doc(2), emb(2)), (doc(1), emb(1))], create_only=True)
    assert store.count(ORG) == 1


def test_delete_logs_and_reports_missing(store):
    store.upsert(ORG, [(doc(1), emb(1))])
    assert store.delete(ORG, "o001") is True
    assert store.delete(ORG, "o001") is False
    assert store.get(ORG, "o001") is None
    assert store.changes_since(1)[0].op == "delete"


def test_create_all_is_idempotent_and_store_uid_stable(store):
    uid = store.store_uid()
    store.create_all()
    assert store.store_uid() == uid and store.current_seq() == 0


def test_a_large_bulk_round_trips_in_one_transaction(store):
    """More ids than one IN (...) chunk, and more rows than one multi-row INSERT ... RETURNING sends."""
    docs = [(doc(i), emb(i)) for i in range(1200)]
    stored = store.upsert(ORG, docs)
    assert [d["id"] for d in stored] == [d["id"] for d, _ in docs]
    nums = {v.id: v.num for v in store.vectors(ORG)}
    assert len(set(nums.values())) == 1200 and len(store.get_many(ORG, nums)) == 1200
    assert len(store.embeddings_of(ORG, nums)) == 1200 and store.current_seq() == 1
    store.upsert(ORG, [(doc(i, city="Graz"), emb(i)) for i in range(1200)])
    assert {v.id: v.num for v in store.vectors(ORG)} == nums
    assert {c.num for c in store.changes_since(1)} == set(nums.values())


def test_a_store_from_an_older_version_gets_the_new_columns(db_url):
    from sqlalchemy import create_engine, inspect, text

    url = db_url
    store = Store(url)
    store.create_all()
    with store.engine.begin() as conn:  # as the first release made it, before sentence vectors
        conn.execute(text("ALTER TABLE organisations DROP COLUMN sentence_vectors"))
        conn.execute(text("ALTER TABLE organisations DROP COLUMN sentences"))
    reopened = Store(url)
    reopened.create_all()
    inspector_engine = create_engine(url)
    columns = {c["name"] for c in inspect(inspector_engine).get_columns("organisations")}
    inspector_engine.dispose()
    assert {"sentences", "sentence_vectors"} <= columns
    reopened.upsert(ORG, [(doc(1), emb(1))])
    assert reopened.embeddings_of(ORG, ["o001"])["o001"].sentences is None


def test_a_store_from_before_tenants_keeps_its_rows_and_numbers_and_keys_ids_by_tenant(tmp_path):
    """The first releases made ids unique on their own, without a tenant column: an upgrade puts every row in
    the default tenant, keeps each row's num (and never gives a deleted row's num again), and lets another
    tenant hold the same id."""
    import sqlite3

    from models.tables import DEFAULT_TENANT

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE organisations (num INTEGER PRIMARY KEY AUTOINCREMENT, id VARCHAR(128) NOT NULL UNIQUE, data JSON NOT NULL,
            country VARCHAR(2), created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, text_hash VARCHAR(64),
            embedding BLOB, embedding_model VARCHAR(500), type VARCHAR(32) NOT NULL, email_opt_in BOOLEAN NOT NULL);
        CREATE INDEX ix_organisations_type ON organisations (type);
        CREATE TABLE challenges (num INTEGER PRIMARY KEY AUTOINCREMENT, id VARCHAR(128) NOT NULL UNIQUE, data JSON NOT NULL,
            country VARCHAR(2), created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, text_hash VARCHAR(64),
            embedding BLOB, embedding_model VARCHAR(500), status VARCHAR(16) NOT NULL, owner_id VARCHAR(128), deadline DATE);
        CREATE TABLE sync_state (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, store_uid VARCHAR(36) NOT NULL);
        INSERT INTO sync_state VALUES (1, 3, 'abc');
        CREATE TABLE changes (change_id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, kind VARCHAR(16) NOT NULL,
            entity_id VARCHAR(128) NOT NULL, num INTEGER NOT NULL, op VARCHAR(8) NOT NULL);
    """)
    for num in (1, 2, 3):
        db.execute("INSERT INTO organisations (num, id, data, created_at, updated_at, type, email_opt_in) VALUES (?, ?, ?, "
                   "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 'sme', 0)", (num, f"o00{num}", json.dumps({**doc(num)})))
    db.execute("DELETE FROM organisations WHERE num = 3")
    db.commit()
    db.close()
    store = Store(f"sqlite:///{path}")
    store.create_all()
    assert {d["id"] for d in store.list(ORG)} == {"o001", "o002"} and store.tenant == DEFAULT_TENANT
    assert sorted(store.get_by_nums(ORG, [1, 2])) == [1, 2]
    other = store.scoped("other")
    other.upsert(ORG, [(doc(1), emb(1))])  # the same id in another tenant
    assert other.get(ORG, "o001") is not None and other.count(ORG) == 1 and store.count(ORG) == 2
    new = store.upsert(ORG, [(doc(4), emb(4))])
    assert max(store.get_by_nums(ORG, range(1, 10))) >= 5  # 3 was deleted, o001 of 'other' took 4: never reused
    assert new[0]["id"] == "o004"
    Store(f"sqlite:///{path}").create_all()  # a second start changes nothing
    assert store.count(ORG) == 3


def test_concurrent_writers_commit_in_sequence_order(db_url):
    """Writers on their own connections: every write gets its own sequence number, and the change log read in
    order never goes back in sequence (a reader that replays it misses nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    Store(db_url).create_all()

    def writer(w):
        store = Store(db_url)  # a process of its own, as far as the database can tell
        for i in range(10):
            store.upsert(ORG, [(doc(w * 100 + i), emb(i))])
            if i % 3 == 0:
                store.upsert(ORG, [(doc(i), emb(i))])  # the same ids from every writer
        store.engine.dispose()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(writer, range(1, 7)))
    store = Store(db_url)
    seqs = [c.seq for c in store.changes_since(0)]
    assert seqs == sorted(seqs) and sorted(set(seqs)) == list(range(1, 6 * 14 + 1)) == list(range(1, store.current_seq() + 1))
    assert store.count(ORG) == 6 * 10 + 4
