"""API keys: ``mk_<id>_<secret>``. The id is public (it names the key in lists and logs); only a SHA-256 of the
secret is stored, so the database never holds a usable key. A key is shown once, when it is created.

The secret is 32 random bytes, so a plain SHA-256 (not a slow password hash) is the right tool: nobody can
guess it, and checking a key costs one indexed read and one hash per request.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from models.store import Store, check_tenant
from models.tables import api_keys
from models.times import iso, utcnow

SCOPES = ("read", "match", "write", "admin")
_KEY = re.compile(r"^mk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


class KeyRequestError(ValueError):
    """A key request that cannot be honoured (an unknown scope, a bad tenant name)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    scopes: tuple[str, ...]
    rate_limit: int | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> list[str]:
    scopes = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise KeyRequestError(f"scopes must be a comma-separated subset of {','.join(SCOPES)}"
                        + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return [s for s in SCOPES if s in scopes]


class KeyStore:
    def __init__(self, store: Store):
        self.store = store

    def create(self, tenant: str, scopes: str | list[str], *, label: str | None = None,
               rate_limit: int | None = None, on_write=None) -> tuple[str, dict]:
        """A new key for ``tenant`` (recorded if new): returns the key itself (shown once) and its record.
        ``on_write(conn, record)`` runs in the transaction that stores it (a failure there stores nothing)."""
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise KeyRequestError(str(exc)) from None
        scopes = parse_scopes(scopes)
        if rate_limit is not None and rate_limit < 1:
            raise KeyRequestError("rate_limit must be a positive number of requests a minute")
        self.store.ensure_tenant(tenant)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.store.engine.begin() as conn:
            conn.execute(insert(api_keys).values(id=key_id, tenant=tenant, scopes=scopes, secret_hash=_hash(secret),
                                                 label=label, rate_limit=rate_limit, created_at=utcnow()))
            if on_write is not None:
                on_write(conn, _public(conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()))
        return f"mk_{key_id}_{secret}", self.get(key_id)

    def verify(self, key: str) -> ApiKey | None:
        """The key's identity when it is well-formed, known, not revoked and its secret matches; else None."""
        m = _KEY.match(key or "")
        if m is None:
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == m.group(1))).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, _hash(m.group(2))):
            return None
        return ApiKey(row.id, row.tenant, tuple(row.scopes), row.rate_limit)

    def revoke(self, key_id: str, tenant: str | None = None) -> bool:
        """Revoke a key (by its id, or the whole key); with ``tenant``, only a key of that tenant. False if unknown."""
        m = _KEY.match(key_id)
        key_id = m.group(1) if m else key_id
        where = [api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)]
        if tenant is not None:
            where.append(api_keys.c.tenant == tenant)
        with self.store.engine.begin() as conn:
            return conn.execute(update(api_keys).where(*where).values(revoked_at=utcnow())).rowcount > 0

    def get(self, key_id: str) -> dict | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _public(row) if row is not None else None

    def list(self, tenant: str | None = None) -> list[dict]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.store.engine.connect() as conn:
            return [_public(row) for row in conn.execute(query)]


def _public(row) -> dict:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "scopes": list(row.scopes),
        "label": row.label,
        "rate_limit": row.rate_limit,
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at) if row.revoked_at is not None else None,
    }
