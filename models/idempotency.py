"""Idempotency keys: a create sent again with the same ``Idempotency-Key`` gets its first answer and writes nothing.

A record (tenant, key, a fingerprint of the request, the answer's status and body) is written by the create's own
transaction (its ``on_write`` hook), so the create and its record are stored together or not at all: a retry after a
lost answer, or after a crash at any point, is exact. A second request racing the first with the same key fails on
the key's unique constraint, its create rolls back, and it is answered from the first one's record.

Records live ``TTL`` (24 hours); a key used again later starts afresh. Only creates that succeeded are recorded: a
refused request changes nothing and may be sent again. Deleting an entity forgets the answers that held it (they
may hold personal data: the right to erasure), so a retry after the delete creates it again.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, delete, insert, select
from sqlalchemy.engine import Connection

from models.errors import IdempotencyConflict
from models.tables import idempotency_keys
from models.times import aware, utcnow

TTL = dt.timedelta(hours=24)
MAX_KEY = 255


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def fingerprint(method: str, path: str, body: Any) -> str:
    """What makes two requests the same request: method, path and body (as JSON: key order and spacing aside)."""
    text = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyKeys:
    """The idempotency records of one store's tenant."""

    def __init__(self, store):
        self.store = store  # a models.store.Store

    def _mine(self, key: str) -> tuple:
        return (idempotency_keys.c.tenant == self.store.tenant, idempotency_keys.c.idempotency_key == key)

    def find(self, key: str, request_fingerprint: str) -> Answer | None:
        """The first answer to this request under ``key`` (None if the key is new or expired); IdempotencyConflict
        when the key was used for another request."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(idempotency_keys).where(*self._mine(key))).first()
        if row is None or aware(row.created_at) <= utcnow() - TTL:
            return None
        if row.fingerprint != request_fingerprint:
            raise IdempotencyConflict()
        return Answer(row.status, row.response)

    def record(self, conn: Connection, key: str, request_fingerprint: str, status: int, body: Any) -> None:
        """Inside a create's transaction: its answer under ``key``. The tenant's expired records go first; a record
        of the key that is still alive (a concurrent request committed first) fails the unique constraint."""
        now = utcnow()
        conn.execute(delete(idempotency_keys).where(idempotency_keys.c.tenant == self.store.tenant,
                                                    idempotency_keys.c.created_at <= now - TTL))
        conn.execute(insert(idempotency_keys).values(tenant=self.store.tenant, idempotency_key=key,
                                                     fingerprint=request_fingerprint, status=status, response=body,
                                                     created_at=now))


def forget_entity(conn: Connection, tenant: str, entity_id: str) -> None:
    """Inside a delete: the records whose answer holds the entity (a create's document, or one of a bulk's) go."""
    needle = json.dumps(entity_id)
    rows = conn.execute(select(idempotency_keys.c.num, idempotency_keys.c.response).where(
        idempotency_keys.c.tenant == tenant, idempotency_keys.c.response.cast(String).contains(needle))).all()
    held = [row.num for row in rows if any(isinstance(d, dict) and d.get("id") == entity_id for d in _documents(row.response))]
    if held:
        conn.execute(delete(idempotency_keys).where(idempotency_keys.c.num.in_(held)))


def _documents(body: Any) -> list:
    """The documents an answer holds: itself, or the items of a list."""
    return body if isinstance(body, list) else [body]
