"""/v1/keys: an admin key lists, creates and revokes the API keys of its own tenant. A new key is shown once."""
from __future__ import annotations

from flask import Blueprint, g

from models.errors import NotFoundError
from models.keys import KeyRequestError, KeyStore
from service.api import engine, json_body
from service.errors import invalid
from service.retries import create_once

bp = Blueprint("keys", __name__, url_prefix="/v1/keys")


def _keys() -> KeyStore:
    return KeyStore(engine().store)


@bp.get("")
def list_keys():
    return {"items": _keys().list(tenant=g.tenant)}


@bp.post("")
def create_key():
    # Idempotent; the key itself is shown once, so a replay answers its record without it (service/retries.py).
    return create_once(_create_key, lambda answer: answer, 201)


def _create_key(save) -> dict:
    body = json_body()
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    extra = set(body) - {"scopes", "label", "rate_limit"}
    if extra:
        raise invalid(sorted(extra)[0], "unknown field; use scopes, label, rate_limit")
    scopes, label, rate_limit = body.get("scopes"), body.get("label"), body.get("rate_limit")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise invalid("scopes", "must be a list of scopes: read, match, write, admin")
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise invalid("label", "must be a string of at most 200 characters")
    if rate_limit is not None and (not isinstance(rate_limit, int) or isinstance(rate_limit, bool)
                                   or not 1 <= rate_limit <= 1_000_000):
        raise invalid("rate_limit", "must be an integer between 1 and 1000000 (requests a minute)")
    try:
        key, record = _keys().create(g.tenant, scopes, label=label, rate_limit=rate_limit, on_write=save)
    except KeyRequestError as exc:
        raise invalid("scopes", str(exc)) from None
    return {**record, "key": key}


@bp.delete("/<key_id>")
def revoke_key(key_id):
    if not _keys().revoke(key_id, tenant=g.tenant):
        raise NotFoundError("active key", key_id, field="id", problem="unknown key id")
    return "", 204
