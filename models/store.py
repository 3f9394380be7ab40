"""Persistence: one ``Store`` over any SQLAlchemy URL (SQLite by default, PostgreSQL in production).

Every write is one transaction: it takes the next sequence number, writes the entities with their
embeddings, and logs the change. A failing write leaves the store as it was.

A ``Store`` is bound to one tenant (``Store.scoped`` gives the same database seen as another): every read,
write and change-log query it makes names that tenant, so one tenant's rows are never read, matched or
overwritten through another's store. Ids are unique within a tenant.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import String, bindparam, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from models.enums import EntityKind
from models.errors import ConflictError, NotFoundError, PreconditionFailed  # noqa: F401 (NotFoundError: re-exported)
from models.files import private_sqlite
from models.idempotency import forget_entity
from models.jobs import erase_from_jobs, jobs_naming
from models.tables import (
    DEFAULT_TENANT,
    ENTITY_TABLES,
    challenges,
    changes,
    digest_messages,
    job_results,
    jobs,
    metadata,
    organisations,
    sync_state,
    tenants,
)
from models.times import aware, iso, utcnow

_CHUNK = 500  # ids per IN (...) clause, well under SQLite's variable limit
ERASED = ""  # what the change log keeps of a deleted entity's id


@dataclass(frozen=True)
class EmbeddingRecord:
    """An embedding as stored beside its entity."""

    vector: bytes  # float32, little-endian
    model: str
    text_hash: str
    sentences: list[str] | None = None  # the description's sentences ...
    sentence_vectors: bytes | None = None  # ... and their vectors, float16, one row each
    project_vectors: bytes | None = None  # titles embedded alone, float16: past projects' (organisations), its own (challenges)


@dataclass(frozen=True)
class Change:
    seq: int
    kind: EntityKind
    entity_id: str
    num: int
    op: str  # "upsert" | "delete"


@dataclass(frozen=True)
class StoredVector:
    """What a vector index needs of one entity: its row number, id, filter fields and embedding."""

    num: int
    id: str
    meta: dict
    vector: bytes | None
    model: str | None
    text_hash: str | None
    data: dict | None = None  # the document itself
    project_vectors: bytes | None = None  # see EmbeddingRecord
    sentence_vectors: bytes | None = None  # ... likewise


TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_tenant(tenant: str) -> str:
    """A tenant name: 1-64 letters, digits, '.', '_' or '-' (it names a folder of index snapshots too)."""
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant) or tenant in (".", ".."):
        raise ValueError(f"tenant {tenant!r}: a tenant is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return tenant


def index_meta(kind: EntityKind, doc: dict) -> dict:
    """The fields a vector index filters on and a match result shows, without another query."""
    if kind is EntityKind.organisations:
        return {"name": doc["name"], "type": doc["type"], "country": doc.get("country")}
    return {
        "name": doc["title"],
        "status": doc.get("status", "open"),
        "country": doc.get("country"),
        "owner_id": doc.get("owner_id"),
        "preferred_partner_types": doc.get("preferred_partner_types") or [],
    }


def entity_tag(doc: dict) -> str:
    """An entity's ETag (quoted, strong): a hash of its stored document, times included, so every write changes
    it. The same for every key's view of the entity (a view without personal fields included)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def check_precondition(kind: EntityKind, entity_id: str, doc: dict | None, if_match: Collection[str] | None) -> None:
    """PreconditionFailed unless the stored entity ``doc`` (None: there is none) has one of the ETags ``if_match``
    lists ("*": any); nothing to check when ``if_match`` is None."""
    if if_match is not None and (doc is None or ("*" not in if_match and entity_tag(doc) not in if_match)):
        raise PreconditionFailed(kind, entity_id)


def _columns(kind: EntityKind, doc: dict) -> dict:
    """The filter columns of an entity row, derived from its document."""
    cols = {"country": doc.get("country")}
    if kind is EntityKind.organisations:
        cols.update(type=doc["type"], email_opt_in=bool(doc.get("email_opt_in")))
    else:
        deadline = doc.get("deadline")
        cols.update(
            status=doc.get("status", "open"),
            owner_id=doc.get("owner_id"),
            deadline=dt.date.fromisoformat(deadline) if deadline else None,
        )
    return cols


class Store:
    def __init__(self, url: str, echo: bool = False, tenant: str = DEFAULT_TENANT):
        self.url = url
        self.tenant = check_tenant(tenant)
        kwargs: dict = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
            private_sqlite(url)  # 0600 before SQLite makes it (its -wal and -shm take the same mode)
        else:
            kwargs.update(pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def scoped(self, tenant: str) -> Store:
        """The same database (and connection pool), seen as ``tenant``."""
        if tenant == self.tenant:
            return self
        check_tenant(tenant)
        other = object.__new__(Store)
        other.__dict__.update(self.__dict__, tenant=tenant)
        return other

    # --- set-up ---------------------------------------------------------------------------------

    def create_all(self) -> None:
        """Create the tables if missing (idempotent, safe to run from several processes)."""
        metadata.create_all(self.engine)
        self._add_missing_columns()
        self._key_entities_by_tenant()
        self._insert_once(sync_state, sync_state.c.id == 1, id=1, seq=0, store_uid=uuid.uuid4().hex)
        self.ensure_tenant(self.tenant)

    def _insert_once(self, table, present, **values) -> None:
        """Insert a row unless ``present`` finds it (safe when several processes start at once)."""
        with self.engine.begin() as conn:
            if conn.execute(select(table).where(present)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(**values))
                except Exception:  # another process inserted it first
                    pass

    def ensure_tenant(self, tenant: str) -> None:
        """Record a tenant (idempotent)."""
        check_tenant(tenant)
        self._insert_once(tenants, tenants.c.id == tenant, id=tenant, created_at=utcnow())

    def tenant_ids(self) -> list[str]:
        """Every tenant recorded in this database."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(tenants.c.id).order_by(tenants.c.id)).scalars())

    def _add_missing_columns(self) -> None:
        """Bring a store made by an older version up to date: add the (nullable) columns it lacks."""
        from sqlalchemy import inspect, text

        inspector = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name in present:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    if column.nullable:
                        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
                    elif column.server_default is not None:  # e.g. tenant: existing rows get the default
                        default = column.server_default.arg
                        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} NOT NULL DEFAULT '{default}'"))

    def _key_entities_by_tenant(self) -> None:
        """A store made before tenants had ids unique on their own; make them unique per tenant, keeping every
        row and its ``num`` (the indexes' row id). SQLite cannot drop a column's UNIQUE, so its tables are rebuilt."""
        from sqlalchemy import inspect

        sqlite = self.engine.dialect.name == "sqlite"
        for table in ENTITY_TABLES.values():
            inspector = inspect(self.engine)
            if sqlite:  # PRAGMA sees a column's inline UNIQUE too (an automatic index)
                with self.engine.connect() as conn:
                    unique = [row[1] for row in conn.exec_driver_sql(f"PRAGMA index_list({table.name})") if row[2]]
                    if not any([r[2] for r in conn.exec_driver_sql(f'PRAGMA index_info("{name}")')] == ["id"] for name in unique):
                        continue
            else:
                old = [u for u in inspector.get_unique_constraints(table.name) if u["column_names"] == ["id"]]
                old_indexes = [i for i in inspector.get_indexes(table.name) if i["unique"] and i["column_names"] == ["id"]]
                if not old and not old_indexes:
                    continue
            with self.engine.begin() as conn:
                if not sqlite:
                    for u in old:
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} DROP CONSTRAINT "{u["name"]}"')
                    for i in old_indexes:
                        conn.exec_driver_sql(f'DROP INDEX "{i["name"]}"')
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD CONSTRAINT uq_{table.name}_tenant_id UNIQUE (tenant, id)")
                    continue
                legacy = f"{table.name}_before_tenants"
                for i in inspector.get_indexes(table.name):
                    conn.exec_driver_sql(f'DROP INDEX "{i["name"]}"')
                last = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)).scalar()
                conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {legacy}")
                table.create(conn)
                columns = ", ".join(c.name for c in table.columns)
                conn.exec_driver_sql(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {legacy}")
                conn.exec_driver_sql(f"DROP TABLE {legacy}")
                if last is not None:  # numbers of deleted rows are never given again
                    conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (last, table.name))

    def dispose(self) -> None:
        """Drop pooled connections (call in a child process after fork)."""
        self.engine.dispose(close=False)

    def _mine(self, table) -> tuple:
        """The WHERE clause that keeps a query to this store's tenant."""
        return (table.c.tenant == self.tenant,)

    # --- reads ----------------------------------------------------------------------------------

    def current_seq(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(sync_state.c.seq).where(sync_state.c.id == 1)).scalar_one()

    def store_uid(self) -> str:
        """A random id made when the store was created: tells one database from another."""
        with self.engine.connect() as conn:
            return conn.execute(select(sync_state.c.store_uid).where(sync_state.c.id == 1)).scalar_one()

    def get(self, kind: EntityKind, entity_id: str) -> dict | None:
        return self.get_many(kind, [entity_id]).get(entity_id)

    def get_many(self, kind: EntityKind, ids: Iterable[str]) -> dict[str, dict]:
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            rows = _rows_where_in(conn, table.c.id, list(dict.fromkeys(ids)),
                                  table.c.id, table.c.data, table.c.created_at, table.c.updated_at, where=self._mine(table))
            return {row.id: _document(row) for row in rows}

    def get_by_nums(self, kind: EntityKind, nums: Iterable[int]) -> dict[int, dict]:
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            rows = _rows_where_in(conn, table.c.num, [int(n) for n in nums],
                                  table.c.num, table.c.id, table.c.data, table.c.created_at, table.c.updated_at,
                                  where=self._mine(table))
            return {row.num: _document(row) for row in rows}

    def list(
        self,
        kind: EntityKind,
        *,
        limit: int = 50,
        after_id: str | None = None,
        type: str | None = None,
        country: str | None = None,
        status: str | None = None,
        text: str | None = None,
    ) -> list[dict]:
        """A page of entities in id order, after ``after_id`` (keyset pagination); ``text``: only those whose
        name (a challenge's title) or description contains it, case-insensitively (a scan of the tenant's rows)."""
        table = ENTITY_TABLES[kind]
        query = self._documents(table).order_by(table.c.id)
        if after_id is not None:
            query = query.where(table.c.id > after_id)
        if text:
            needle, title = text.lower(), "name" if kind is EntityKind.organisations else "title"
            query = query.where(or_(func.lower(table.c.data[title].as_string()).contains(needle, autoescape=True),
                                    func.lower(table.c.data["description"].as_string()).contains(needle, autoescape=True)))
        if type is not None and kind is EntityKind.organisations:
            query = query.where(table.c.type == type)
        if status is not None and kind is EntityKind.challenges:
            query = query.where(table.c.status == status)
        if country is not None:
            query = query.where(table.c.country == country)
        with self.engine.connect() as conn:
            return [_document(row) for row in conn.execute(query.limit(limit))]

    def _documents(self, table):
        return select(table.c.id, table.c.data, table.c.created_at, table.c.updated_at).where(*self._mine(table))

    def newest(self, kind: EntityKind, limit: int = 5) -> list[dict]:
        """The entities added last (rows are numbered as they are added, and keep their number when edited)."""
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            return [_document(row) for row in conn.execute(self._documents(table).order_by(table.c.num.desc()).limit(limit))]

    def closing_soon(self, today: dt.date, limit: int = 5) -> list[dict]:
        """Open challenges whose deadline is ``today`` or later, the nearest first."""
        table = ENTITY_TABLES[EntityKind.challenges]
        query = self._documents(table).where(table.c.status == "open", table.c.deadline >= today)
        with self.engine.connect() as conn:
            return [_document(row) for row in conn.execute(query.order_by(table.c.deadline, table.c.id).limit(limit))]

    def count(self, kind: EntityKind) -> int:
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*self._mine(table))).scalar_one()

    def existing_ids(self, kind: EntityKind, ids: Iterable[str]) -> set[str]:
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            return {row.id for row in _rows_where_in(conn, table.c.id, list(dict.fromkeys(ids)), table.c.id, where=self._mine(table))}

    def embeddings_of(self, kind: EntityKind, ids: Iterable[str]) -> dict[str, EmbeddingRecord]:
        """The stored embeddings of these ids (those that have one)."""
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            rows = _rows_where_in(conn, table.c.id, list(dict.fromkeys(ids)),
                                  table.c.id, table.c.embedding, table.c.embedding_model, table.c.text_hash,
                                  table.c.sentences, table.c.sentence_vectors, table.c.project_vectors,
                                  where=(table.c.embedding.is_not(None), *self._mine(table)))
            return {
                row.id: EmbeddingRecord(
                    bytes(row.embedding), row.embedding_model, row.text_hash, row.sentences,
                    _bytes(row.sentence_vectors), _bytes(row.project_vectors),
                )
                for row in rows
            }

    def sentence_vectors(self, kind: EntityKind, nums: Iterable[int]) -> dict[int, tuple[list[str], bytes, str]]:
        """num -> (sentences, their float16 vectors, model) for the rows that have them."""
        table = ENTITY_TABLES[kind]
        with self.engine.connect() as conn:
            rows = _rows_where_in(conn, table.c.num, [int(n) for n in nums],
                                  table.c.num, table.c.sentences, table.c.sentence_vectors, table.c.embedding_model,
                                  where=(table.c.sentence_vectors.is_not(None), *self._mine(table)))
            return {row.num: (row.sentences, bytes(row.sentence_vectors), row.embedding_model) for row in rows}

    def vectors(self, kind: EntityKind, nums: Iterable[int] | None = None) -> Iterator[StoredVector]:
        """Every entity's (or the given rows') embedding and index fields."""
        table = ENTITY_TABLES[kind]
        cols = (table.c.num, table.c.id, table.c.data, table.c.embedding, table.c.embedding_model, table.c.text_hash,
                table.c.project_vectors, table.c.sentence_vectors)
        with self.engine.connect() as conn:
            if nums is None:
                rows = conn.execution_options(yield_per=2000).execute(select(*cols).where(*self._mine(table)).order_by(table.c.num))
            else:
                rows = _rows_where_in(conn, table.c.num, [int(n) for n in nums], *cols, where=self._mine(table))
            for row in rows:
                yield StoredVector(
                    row.num,
                    row.id,
                    index_meta(kind, row.data),
                    bytes(row.embedding) if row.embedding is not None else None,
                    row.embedding_model,
                    row.text_hash,
                    row.data,
                    _bytes(row.project_vectors),
                    _bytes(row.sentence_vectors),
                )

    def changes_since(self, seq: int) -> list[Change]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(changes).where(changes.c.seq > seq, changes.c.tenant == self.tenant).order_by(changes.c.change_id))
            return [Change(r.seq, EntityKind(r.kind), r.entity_id, r.num, r.op) for r in rows]

    # --- writes ---------------------------------------------------------------------------------

    def _next_seq(self, conn: Connection) -> int:
        # Taking the row lock first serialises writers, so sequence numbers commit in order
        # (and SQLite takes its write lock at the start instead of failing on a lock upgrade).
        conn.execute(update(sync_state).where(sync_state.c.id == 1).values(seq=sync_state.c.seq + 1))
        return conn.execute(select(sync_state.c.seq).where(sync_state.c.id == 1)).scalar_one()

    def upsert(
        self,
        kind: EntityKind,
        items: list[tuple[dict, EmbeddingRecord | None]],
        *,
        create_only: bool = False,
        on_write=None,
        if_match: Collection[str] | None = None,
    ) -> list[dict]:
        """Insert or replace entities (each a validated document and its embedding) in one transaction.

        ``create_only`` raises ConflictError when an id exists. ``on_write(conn, kind, docs)`` runs inside
        the transaction before commit (a failure there rolls everything back). ``if_match`` (a write of one
        entity): the ETags it must still have, checked under the write lock (PreconditionFailed otherwise).
        Returns the stored documents.
        """
        table = ENTITY_TABLES[kind]
        now = utcnow()
        ids = [doc["id"] for doc, _ in items]
        with self.engine.begin() as conn:
            seq = self._next_seq(conn)
            existing = {
                row.id: (row.num, row.created_at)
                for row in _rows_where_in(conn, table.c.id, ids, table.c.id, table.c.num, table.c.created_at, where=self._mine(table))
            }
            if create_only and existing:
                raise ConflictError(kind, next(iter(existing)))
            if if_match is not None:
                check_precondition(kind, ids[0], self._current(conn, table, ids[0]), if_match)
            inserts, updates, stored = [], [], []
            for doc, emb in items:
                row = {"data": doc, **_columns(kind, doc), "updated_at": now}
                row.update(_embedding_columns(emb))
                if doc["id"] in existing:
                    num, created = existing[doc["id"]]
                    updates.append({**row, "b_num": num})
                    stored.append((num, {**doc, "created_at": iso(created), "updated_at": iso(now)}))
                else:
                    inserts.append({**row, "id": doc["id"], "tenant": self.tenant, "created_at": now})
            if updates:
                conn.execute(update(table).where(table.c.num == bindparam("b_num")), updates)
            nums: dict[str, int] = {}
            if inserts:
                for row in conn.execute(insert(table).returning(table.c.num, table.c.id, sort_by_parameter_order=True), inserts):
                    nums[row.id] = row.num
                for ins in inserts:
                    stored.append((nums[ins["id"]], {**ins["data"], "created_at": iso(now), "updated_at": iso(now)}))
            conn.execute(
                insert(changes),
                [{"seq": seq, "tenant": self.tenant, "kind": kind.value, "entity_id": d["id"], "num": num, "op": "upsert"}
                 for num, d in stored],
            )
            by_id = {d["id"]: d for _, d in stored}
            if on_write is not None:
                on_write(conn, kind, [by_id[i] for i in ids])
        return [by_id[i] for i in ids]

    def set_embeddings(self, kind: EntityKind, records: dict[str, EmbeddingRecord]) -> int:
        """Store new embeddings for existing entities (a reindex), logged as changes. Returns rows updated."""
        if not records:
            return 0
        table = ENTITY_TABLES[kind]
        with self.engine.begin() as conn:
            seq = self._next_seq(conn)
            nums = {row.id: row.num for row in _rows_where_in(conn, table.c.id, list(records), table.c.id, table.c.num, where=self._mine(table))}
            params = [{"b_num": nums[i], **_embedding_columns(r)} for i, r in records.items() if i in nums]
            if params:
                conn.execute(update(table).where(table.c.num == bindparam("b_num")), params)
                conn.execute(
                    insert(changes),
                    [{"seq": seq, "tenant": self.tenant, "kind": kind.value, "entity_id": i, "num": nums[i], "op": "upsert"}
                     for i in records if i in nums],
                )
        return len(params)

    def delete(self, kind: EntityKind, entity_id: str, on_delete=None, if_match: Collection[str] | None = None) -> bool:
        """Delete one entity and erase what the store keeps of it elsewhere, in one transaction; False when it
        did not exist. ``on_delete(conn, seq)`` runs in the same transaction; ``if_match``: see ``upsert``.

        Erasure: the change log keeps the row number (which replays need) but no longer the id; an organisation's
        own digest log goes, and it is struck from other organisations' digest logs, from batch jobs and from the
        answers kept for idempotent retries."""
        table = ENTITY_TABLES[kind]
        if not self.existing_ids(kind, [entity_id]):
            return False
        with self.engine.begin() as conn:
            seq = self._next_seq(conn)
            num = conn.execute(select(table.c.num).where(table.c.id == entity_id, *self._mine(table))).scalar()
            if num is not None:
                check_precondition(kind, entity_id, self._current(conn, table, entity_id), if_match)
                conn.execute(delete(table).where(table.c.num == num))
                conn.execute(update(changes).where(changes.c.kind == kind.value, changes.c.num == num).values(entity_id=ERASED))
                conn.execute(insert(changes).values(seq=seq, tenant=self.tenant, kind=kind.value, entity_id=ERASED, num=num, op="delete"))
                if kind is EntityKind.organisations:
                    self._erase_from_digests(conn, entity_id)
                erase_from_jobs(conn, self.tenant, kind, entity_id)
                forget_entity(conn, self.tenant, entity_id)
                if on_delete is not None:
                    on_delete(conn, seq)
        return num is not None

    def _current(self, conn: Connection, table, entity_id: str) -> dict | None:
        """Inside a write: the entity's stored document, or None."""
        row = conn.execute(select(table.c.data, table.c.created_at, table.c.updated_at)
                           .where(table.c.id == entity_id, *self._mine(table))).first()
        return _document(row) if row is not None else None

    def _erase_from_digests(self, conn: Connection, organisation_id: str) -> None:
        """An organisation's digest log goes (it is never mailed again); other organisations' logs lose it as a
        match: a message not yet sent that names it is cancelled (the next run composes a new one without it),
        and no stored message body keeps it."""
        mine = digest_messages.c.tenant == self.tenant
        conn.execute(delete(digest_messages).where(digest_messages.c.organisation_id == organisation_id, mine))
        rows = conn.execute(select(digest_messages.c.num, digest_messages.c.status, digest_messages.c.matches).where(
            mine, digest_messages.c.matches.cast(String).contains(json.dumps(organisation_id)))).all()
        for row in rows:
            kept = [m for m in row.matches if not (m["kind"] == EntityKind.organisations.value and m["id"] == organisation_id)]
            if len(kept) == len(row.matches):
                continue
            values: dict = {"matches": kept, "message": b""}
            if row.status == "pending":
                values["status"] = "cancelled"
            conn.execute(update(digest_messages).where(digest_messages.c.num == row.num).values(**values))

    def detach_owner(self, conn: Connection, seq: int, owner_id: str) -> None:
        """Inside a delete of an organisation: its challenges stay, without an owner."""
        rows = conn.execute(select(challenges.c.num, challenges.c.id, challenges.c.data)
                            .where(challenges.c.owner_id == owner_id, *self._mine(challenges))).all()
        for row in rows:
            data = {**row.data, "owner_id": None}
            conn.execute(update(challenges).where(challenges.c.num == row.num).values(data=data, owner_id=None, updated_at=utcnow()))
            conn.execute(insert(changes).values(seq=seq, tenant=self.tenant, kind=EntityKind.challenges.value,
                                                entity_id=row.id, num=row.num, op="upsert"))

    # --- e-mail digests (matcher/digest.py) -------------------------------------------------------

    def digest_recipient(self, organisation_id: str) -> dict | None:
        """The organisation's document if it exists, opted in to e-mail and has a contact address."""
        with self.engine.connect() as conn:
            row = conn.execute(select(organisations.c.id, organisations.c.data, organisations.c.created_at,
                                      organisations.c.updated_at)
                               .where(organisations.c.id == organisation_id, organisations.c.email_opt_in.is_(True),
                                      *self._mine(organisations))).first()
        doc = _document(row) if row is not None else None
        return doc if doc is not None and doc.get("contact_email") else None

    def digest_recipient_ids(self) -> list[str]:
        """Ids of the organisations that opted in to e-mail and have a contact address (in id order)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(organisations.c.id).where(
                organisations.c.email_opt_in.is_(True), organisations.c.data["contact_email"].as_string().is_not(None),
                *self._mine(organisations))
                .order_by(organisations.c.id)).scalars())

    def digest_history(self, organisation_id: str) -> tuple[set[tuple[str, str]], dt.datetime | None]:
        """What was mailed (or is pending) to an organisation as {(kind, id)}, and when its last digest was sent."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(digest_messages.c.matches, digest_messages.c.status, digest_messages.c.sent_at)
                                .where(digest_messages.c.organisation_id == organisation_id, *self._mine(digest_messages),
                                       digest_messages.c.status.in_(("sent", "pending")))).all()
        items = {(i["kind"], i["id"]) for row in rows for i in row.matches}
        sent = [aware(row.sent_at) for row in rows if row.status == "sent" and row.sent_at is not None]
        return items, max(sent, default=None)

    def add_digest(self, organisation_id: str, message_id: str, items: list[dict], message: bytes) -> int | None:
        """Record a composed message as pending, in one transaction with a check that the organisation is still
        stored; None (and nothing written) when it is not."""
        with self.engine.begin() as conn:
            if conn.execute(select(organisations.c.num).where(organisations.c.id == organisation_id,
                                                              *self._mine(organisations))).first() is None:
                return None
            return conn.execute(insert(digest_messages).values(
                tenant=self.tenant, message_id=message_id, organisation_id=organisation_id, status="pending", matches=items,
                message=message, attempts=0, errors=[], created_at=utcnow()).returning(digest_messages.c.num)).scalar_one()

    def pending_digests(self, organisation_id: str | None = None) -> list[dict]:
        """Messages composed but not yet sent (an interrupted run), oldest first."""
        query = select(digest_messages.c.num, digest_messages.c.organisation_id, digest_messages.c.message_id,
                       digest_messages.c.message, digest_messages.c.matches).where(digest_messages.c.status == "pending",
                                                                                   *self._mine(digest_messages))
        if organisation_id is not None:
            query = query.where(digest_messages.c.organisation_id == organisation_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping, message=bytes(row.message)) for row in conn.execute(query.order_by(digest_messages.c.num))]

    def record_digest_attempt(self, num: int, status: str, error: dict | None = None) -> None:
        """After an attempt to send a message: its new status, and the error of a failed attempt."""
        with self.engine.begin() as conn:
            row = conn.execute(select(digest_messages.c.attempts, digest_messages.c.errors)
                               .where(digest_messages.c.num == num, *self._mine(digest_messages))).first()
            if row is None:  # its organisation was deleted meanwhile
                return
            values: dict = {"status": status, "attempts": row.attempts + (error is not None or status == "sent")}
            if error is not None:
                values["errors"] = [*row.errors, {**error, "at": iso(utcnow())}]
            if status in ("sent", "cancelled"):
                values["message"] = b""  # kept only to resend the same bytes after an interruption; no copy lingers
            if status == "sent":
                values["sent_at"] = utcnow()
            conn.execute(update(digest_messages).where(digest_messages.c.num == num).values(**values))

    def digest_log(self, organisation_id: str | None = None) -> list[dict]:
        """The digest log (every message's status, items, attempts and errors), oldest first."""
        cols = [c for c in digest_messages.c if c.name != "message"]
        query = select(*cols).where(*self._mine(digest_messages)).order_by(digest_messages.c.num)
        if organisation_id is not None:
            query = query.where(digest_messages.c.organisation_id == organisation_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- everything of one organisation, of one tenant --------------------------------------------

    def export_organisation(self, organisation_id: str) -> dict | None:
        """Everything stored about an organisation (GDPR Art. 15 and 20), read in one transaction, or None when
        it is not stored: its profile with every field, the challenges it owns, its digest log (what each message
        carried, when and how it went; not the message bytes) and what batch jobs hold of it."""
        org = EntityKind.organisations
        digest_cols = [c for c in digest_messages.c if c.name not in ("num", "tenant", "message")]
        with self.engine.connect() as conn:
            row = conn.execute(self._documents(organisations).where(organisations.c.id == organisation_id)).first()
            if row is None:
                return None
            owned = conn.execute(self._documents(challenges).where(challenges.c.owner_id == organisation_id)
                                 .order_by(challenges.c.id))
            digests = conn.execute(select(*digest_cols).where(digest_messages.c.organisation_id == organisation_id,
                                                              *self._mine(digest_messages)).order_by(digest_messages.c.num))
            return {
                "organisation": _document(row),
                "challenges_owned": [_document(r) for r in owned],
                "digests": [{k: iso(aware(v)) if isinstance(v, dt.datetime) else v for k, v in r._mapping.items()}
                            for r in digests],
                "jobs": jobs_naming(conn, self.tenant, org, organisation_id),
            }

    def delete_tenant(self) -> dict[str, int]:
        """Delete everything of this store's tenant in one transaction, and nothing of any other: its entities,
        change log, digests, jobs and their results, API keys and every other row that names it; rows deleted
        per table. Processes that hold its indexes drop the rows at their next sync: the change log keeps one
        "delete" per row (its number, no id), as after any erasure."""
        tenant = self.tenant
        with self.engine.begin() as conn:
            seq = self._next_seq(conn)
            erased = [(kind, num) for kind, table in ENTITY_TABLES.items()
                      for num in conn.execute(select(table.c.num).where(*self._mine(table))).scalars()]
            counts = {"job_results": conn.execute(delete(job_results).where(
                job_results.c.job_id.in_(select(jobs.c.id).where(jobs.c.tenant == tenant)))).rowcount}
            for table in metadata.sorted_tables:
                if "tenant" in table.c:
                    counts[table.name] = conn.execute(delete(table).where(table.c.tenant == tenant)).rowcount
            counts["tenants"] = conn.execute(delete(tenants).where(tenants.c.id == tenant)).rowcount
            if erased:
                conn.execute(insert(changes), [{"seq": seq, "tenant": tenant, "kind": kind.value, "entity_id": ERASED,
                                                "num": num, "op": "delete"} for kind, num in erased])
        return {name: n for name, n in counts.items() if n}


def _embedding_columns(record: EmbeddingRecord | None) -> dict:
    if record is None:
        return dict(embedding=None, embedding_model=None, text_hash=None, sentences=None, sentence_vectors=None,
                    project_vectors=None)
    return dict(embedding=record.vector, embedding_model=record.model, text_hash=record.text_hash,
                sentences=record.sentences, sentence_vectors=record.sentence_vectors,
                project_vectors=record.project_vectors)


def _bytes(blob) -> bytes | None:
    return bytes(blob) if blob is not None else None


def _rows_where_in(conn: Connection, column, keys: list, *columns, where=()) -> Iterator:
    """Rows whose ``column`` is one of ``keys``, queried in chunks small enough for any database."""
    for start in range(0, len(keys), _CHUNK):
        yield from conn.execute(select(*columns).where(column.in_(keys[start : start + _CHUNK]), *where))


def _document(row) -> dict:
    return {**row.data, "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
