"""/v1/organisations and /v1/challenges: create, bulk upsert, list, read, replace, patch, delete."""
from __future__ import annotations

import base64
import binascii
import re

from flask import Blueprint, request

from models.countries import normalise_country
from models.enums import ChallengeStatus, EntityKind, OrgType
from models.schemas import ID_PATTERN, MAX_BULK_ITEMS
from service import budget
from service.api import engine, json_body, scopes
from service.auth import can_see_contact
from service.errors import invalid
from service.retries import create_once, if_match, not_modified, with_etag

MAX_PAGE = 200
DEFAULT_PAGE = 50

# Personal fields: stored (contact_email is where digests go) and returned only to keys that may write the
# profile (write or admin scope, of its own tenant: no key ever sees another tenant's rows). A PUT that omits
# one keeps the stored value; PATCH or PUT with null removes it.
PERSONAL = {EntityKind.organisations: ("contact_email",), EntityKind.challenges: ()}


def public(kind: EntityKind, doc: dict) -> dict:
    """An entity as the API returns it to this request's key: without personal fields unless it may write."""
    if can_see_contact(scopes()):
        return doc
    return {k: v for k, v in doc.items() if k not in PERSONAL[kind]}


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        last_id = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last_id = ""
    if not re.match(ID_PATTERN, last_id):
        raise invalid("cursor", "not a cursor this API returned")
    return last_id


def _list_params(kind: EntityKind) -> dict:
    args = request.args
    known = {"limit", "cursor", "country", "type" if kind is EntityKind.organisations else "status"}
    for name in args:
        if name not in known:
            raise invalid(name, f"unknown query parameter; use {', '.join(sorted(known))}")
    params: dict = {"limit": DEFAULT_PAGE}
    if "limit" in args:
        try:
            params["limit"] = int(args["limit"])
        except ValueError:
            raise invalid("limit", "must be an integer") from None
        if not 1 <= params["limit"] <= MAX_PAGE:
            raise invalid("limit", f"must be between 1 and {MAX_PAGE}")
    if args.get("cursor"):
        params["after_id"] = decode_cursor(args["cursor"])
    if args.get("country"):
        try:
            params["country"] = normalise_country(args["country"])
        except ValueError as exc:
            raise invalid("country", str(exc)) from None
    if "type" in args:  # present but empty is not one of the values either
        if args["type"] not in {t.value for t in OrgType}:
            raise invalid("type", f"must be one of {', '.join(t.value for t in OrgType)}")
        params["type"] = args["type"]
    if "status" in args:  # present but empty is not one of the values either
        if args["status"] not in {s.value for s in ChallengeStatus}:
            raise invalid("status", "must be open or closed")
        params["status"] = args["status"]
    return params


def _saving(save, kept):
    """A store write's ``on_write`` hook that hands ``kept(docs)`` to an idempotency record's ``save`` (or None)."""
    return None if save is None else (lambda conn, _kind, docs: save(conn, kept(docs)))


def make_blueprint(kind: EntityKind) -> Blueprint:
    bp = Blueprint(kind.value, __name__, url_prefix=f"/v1/{kind.value}")

    @bp.before_request
    def within_budget():  # 413 for a write that would embed more than one request may (service/budget.py)
        if request.method in ("POST", "PUT", "PATCH"):
            body = json_body()
            bulk = request.endpoint.endswith(".bulk") and isinstance(body, dict) and isinstance(body.get("items"), list)
            budget.check("items" if bulk else "body", sum(map(budget.profile_chars, body["items"] if bulk else [body])))

    def answer(doc: dict):
        return with_etag(public(kind, doc), doc)

    @bp.post("")
    def create():
        return create_once(lambda save: engine().create(kind, json_body(), on_write=_saving(save, lambda docs: docs[0])),
                           answer, 201)

    @bp.post("/bulk")
    def bulk():
        body = json_body()
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise invalid("items", 'send {"items": [...]}')
        items = body["items"]
        extra = set(body) - {"items"}
        if extra:
            raise invalid(sorted(extra)[0], "unknown field")
        if not 1 <= len(items) <= MAX_BULK_ITEMS:
            raise invalid("items", f"must hold between 1 and {MAX_BULK_ITEMS} items")
        return create_once(lambda save: engine().upsert_many(kind, items, on_write=_saving(save, list)),
                           lambda docs: {"items": [public(kind, d) for d in docs], "count": len(docs)}, 200)

    @bp.get("")
    def list_entities():
        params = _list_params(kind)
        limit = params.pop("limit")
        items = engine().store.list(kind, limit=limit + 1, **params)
        next_cursor = encode_cursor(items[limit - 1]["id"]) if len(items) > limit else None
        return {"items": [public(kind, d) for d in items[:limit]], "next_cursor": next_cursor}

    @bp.get("/<entity_id>")
    def read(entity_id):
        doc = engine().get(kind, entity_id)
        return not_modified(doc) or answer(doc)

    @bp.put("/<entity_id>")
    def replace(entity_id):
        body = json_body()
        if isinstance(body, dict) and any(f not in body for f in PERSONAL[kind]):
            stored = engine().get(kind, entity_id)
            body = {**{f: stored[f] for f in PERSONAL[kind] if stored.get(f) is not None}, **body}
        return answer(engine().replace(kind, entity_id, body, if_match=if_match()))

    @bp.patch("/<entity_id>")
    def patch(entity_id):
        return answer(engine().patch(kind, entity_id, json_body(), if_match=if_match()))

    @bp.delete("/<entity_id>")
    def remove(entity_id):
        engine().delete(kind, entity_id, if_match=if_match())
        return "", 204

    return bp
