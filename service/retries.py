"""Safe retries over HTTP: ``Idempotency-Key`` on every POST that creates, ``ETag`` and ``If-Match`` on entities.

- A POST that creates (an entity, a bulk, a batch job, an API key) sent with ``Idempotency-Key`` is done once: the
  same key with the same request (method, path, body) within 24 hours gets the first answer again, with
  ``Idempotent-Replayed: true``, and writes nothing; the same key with another request is a 409
  (models/idempotency.py). Keys are the tenant's: any of its API keys may retry; each sees the answer through its
  own view (no contact e-mail without write scope). An API key's secret is never stored, so a replayed key
  creation answers the key's record without it.
- Every entity answer carries its ``ETag`` (models.store.entity_tag). ``If-Match`` on PUT, PATCH and DELETE makes the
  write conditional: 412 when the entity changed since (compared in the write's transaction); ``*`` matches any
  stored entity. ``If-None-Match`` on a GET answers 304 when the entity is unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, make_response, request
from sqlalchemy.exc import IntegrityError

from models.idempotency import MAX_KEY, IdempotencyKeys, fingerprint
from models.store import entity_tag
from service.api import engine, json_body
from service.errors import invalid

IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def idempotency_key() -> str | None:
    """The request's Idempotency-Key (None without one); 400 for one no client would make."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not (1 <= len(key) <= MAX_KEY and all("!" <= c <= "~" for c in key)):
        raise invalid(IDEMPOTENCY_KEY, f"must be 1 to {MAX_KEY} visible ASCII characters, e.g. a UUID")
    return key


def create_once(create: Callable[[Callable | None], Any], respond: Callable[[Any], Any], status: int) -> Response:
    """Answer a POST that creates, at most once per Idempotency-Key.

    ``create(save)`` does the work and returns what was created (JSON); with a key, ``save`` is not None and
    ``create`` calls ``save(conn, kept)`` in its write transaction with what a replay answers from: what it
    returns, less any secret. ``respond(created or kept)`` makes the answer's body (with ``status``)."""
    key = idempotency_key()
    if key is None:
        return _with_status(make_response(respond(create(None))), status)
    records = IdempotencyKeys(engine().store)
    request_fingerprint = fingerprint(request.method, request.path, json_body())
    answer = records.find(key, request_fingerprint)
    if answer is None:
        try:
            result = create(lambda conn, kept: records.record(conn, key, request_fingerprint, status, kept))
            return _with_status(make_response(respond(result)), status)
        except IntegrityError:  # a request with the same key committed first: this one wrote nothing
            answer = records.find(key, request_fingerprint)
            if answer is None:
                raise
    response = _with_status(make_response(respond(answer.body)), answer.status)
    response.headers[REPLAYED] = "true"
    return response


def _with_status(response: Response, status: int) -> Response:
    response.status_code = status
    return response


def if_match() -> frozenset[str] | None:
    """The ETags an If-Match header accepts (quoted; "*" for any), None without one. A weak tag never matches
    (RFC 9110 compares strongly)."""
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    return frozenset({"*"}) if tags.star_tag else frozenset(f'"{t}"' for t in tags.as_set())


def with_etag(body: Any, doc: dict) -> Response:
    """``body`` (a view of the stored entity ``doc``) as a response with the entity's ETag."""
    response = make_response(body)
    response.headers["ETag"] = entity_tag(doc)
    return response


def not_modified(doc: dict) -> Response | None:
    """304 for a GET whose If-None-Match names the entity's current ETag (or "*"), else None."""
    tag = entity_tag(doc)
    tags = request.if_none_match
    if tags and (tags.star_tag or tags.contains_weak(tag.strip('"'))):
        return _with_status(with_etag("", doc), 304)
    return None
