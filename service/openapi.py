"""The OpenAPI 3.1 description of the HTTP API, with schemas generated from the domain models."""
from __future__ import annotations

from functools import lru_cache

from pydantic.json_schema import models_json_schema

from models.keys import SCOPES
from models.schemas import (
    MAX_BULK_ITEMS,
    BatchJobRequest,
    BatchMatchRequest,
    ChallengeIn,
    ConsortiumRequest,
    ConsortiumResponse,
    Job,
    MatchRequest,
    MatchResponse,
    OrganisationIn,
)
from service.auth import required_scope

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "problem"],
                        "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
                    },
                },
            },
        }
    },
}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid input; details name each field", 401: "Missing, unknown or revoked API key",
            403: "The API key lacks the scope this endpoint needs", 404: "Unknown id (in this key's tenant)",
            409: "The id exists already, or the Idempotency-Key was used for another request (nothing was written)",
            412: "If-Match names an ETag the entity no longer has: it changed since it was read, and nothing was written",
            413: "Body too large",
            429: "Over the key's rate limit; Retry-After says when to try again", 503: "Not ready"}
    return {str(c): {"description": text[c], **_json(_ref("Error"))} for c in codes}


def _stored(name: str) -> dict:
    return {"allOf": [_ref(name), {"type": "object", "required": ["id", "created_at", "updated_at"]}]}


def _entity_paths(kind: str, model: str, filters: list[dict]) -> dict:
    stored = _stored(model)
    page = {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": stored}, "next_cursor": {"type": ["string", "null"]}}}
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        f"/v1/{kind}": {
            "post": {"summary": f"Create one of {kind}", "requestBody": {"required": True, **_json(_ref(model))},
                     "responses": {"201": {"description": "Stored", **_json(stored)}, **_errors(400, 409, 413)}},
            "get": {"summary": f"List {kind} (keyset pages)",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "country", "in": "query", "schema": {"type": "string"}},
                        *filters,
                    ],
                    "responses": {"200": {"description": "A page", **_json(page)}, **_errors(400)}},
        },
        f"/v1/{kind}/bulk": {
            "post": {"summary": f"Upsert up to {MAX_BULK_ITEMS} {kind}, all or nothing",
                     "requestBody": {"required": True, **_json({
                         "type": "object", "required": ["items"], "additionalProperties": False,
                         "properties": {"items": {"type": "array", "minItems": 1, "maxItems": MAX_BULK_ITEMS,
                                                  "items": _ref(model)}}})},
                     "responses": {"200": {"description": "Stored", **_json({
                         "type": "object",
                         "properties": {"items": {"type": "array", "items": stored}, "count": {"type": "integer"}}})},
                                   **_errors(400, 413)}},
        },
        f"/v1/{kind}/{{id}}": {
            "parameters": [id_param],
            "get": {"summary": "Read one", "responses": {"200": {"description": "Found", **_json(stored)}, **_errors(404)}},
            "put": {"summary": "Replace one", "requestBody": {"required": True, **_json(_ref(model))},
                    "responses": {"200": {"description": "Stored", **_json(stored)}, **_errors(400, 404)}},
            "patch": {"summary": "Change some fields (null removes an optional one)",
                      "requestBody": {"required": True, **_json({"type": "object"})},
                      "responses": {"200": {"description": "Stored", **_json(stored)}, **_errors(400, 404)}},
            "delete": {"summary": "Delete one", "responses": {"204": {"description": "Deleted"}, **_errors(404)}},
        },
    }


def _job_and_consortium_paths() -> dict:
    """Batch-match jobs and consortia."""
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    row = {"type": "object", "properties": {c: {} for c in ("query_line", "query_id", "rank", "match_id", "match_name",
                                                             "match_type", "match_country", "score", "explanation")}}
    detail = {"type": "object", "properties": {"field": {"type": "string"}, "problem": {"type": "string"}}}
    return {
        "/v1/jobs/batch-match": {"post": {
            "summary": "Queue a batch-match job (up to 10,000 queries); bad queries are listed in the job's errors",
            "requestBody": {"required": True, **_json(_ref("BatchJobRequest"))},
            "responses": {"202": {"description": "Queued; Location names the job", **_json(_ref("Job"))}, **_errors(400, 413)}}},
        "/v1/jobs/{id}": {"parameters": [job_id], "get": {
            "summary": "A job's status and progress",
            "responses": {"200": {"description": "The job", **_json(_ref("Job"))}, **_errors(404)}}},
        "/v1/jobs/{id}/result": {"parameters": [job_id], "get": {
            "summary": "A finished job's rows, one per (query, match), in query order",
            "responses": {"200": {"description": "Rows and per-query errors", **_json({"type": "object", "properties": {
                "job": _ref("Job"), "rows": {"type": "array", "items": row}, "errors": {"type": "array", "items": detail}}})},
                **_errors(404), "409": {"description": "The job has not finished", **_json(_ref("Error"))}}}},
        "/v1/consortia": {"post": {
            "summary": "Alternative consortia for a challenge (id or text) under size, type, country and member constraints",
            "requestBody": {"required": True, **_json(_ref("ConsortiumRequest"))},
            "responses": {"200": {"description": "Consortia, best first", **_json(_ref("ConsortiumResponse"))}, **_errors(400, 404)}}},
    }


@lru_cache(maxsize=1)
def openapi_spec() -> dict:
    _, schemas = models_json_schema(
        [(m, "validation") for m in (OrganisationIn, ChallengeIn, MatchRequest, BatchMatchRequest, BatchJobRequest, ConsortiumRequest)]
        + [(m, "serialization") for m in (MatchResponse, Job, ConsortiumResponse)],
        ref_template=REF,
    )
    components = dict(schemas.get("$defs", {}))
    components["Error"] = ERROR
    # The models' "exactly one of" rules (model validators, which pydantic cannot put in a JSON Schema).
    for model, fields in (("MatchQuery", ("text", "challenge_id", "organisation_id")), ("ConsortiumRequest", ("challenge_id", "text"))):
        components[model]["oneOf"] = [{"required": [f], "properties": {f: {"type": "string"}}} for f in fields]
    # Personal data: returned to write/admin keys only (see service/api/entities.py).
    components["OrganisationIn"]["properties"]["contact_email"].update(
        description="Where digests go (with email_opt_in). Returned only to API keys with the write or admin scope.")
    paths = {}
    paths.update(_entity_paths("organisations", "OrganisationIn",
                               [{"name": "type", "in": "query", "schema": {"type": "string", "enum": components["OrgType"]["enum"]}}]))
    paths.update(_entity_paths("challenges", "ChallengeIn",
                               [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["open", "closed"]}}]))
    paths["/v1/match"] = {"post": {
        "summary": "Ranked, explained matches for a text, a challenge or an organisation",
        "requestBody": {"required": True, **_json(_ref("MatchRequest"))},
        "responses": {"200": {"description": "Matches, best first", **_json(_ref("MatchResponse"))}, **_errors(400, 404)}}}
    paths["/v1/match/batch"] = {"post": {
        "summary": "Several match requests at once (up to 100)",
        "requestBody": {"required": True, **_json(_ref("BatchMatchRequest"))},
        "responses": {"200": {"description": "One result per request, in order",
                              **_json({"type": "object", "properties": {"results": {"type": "array", "items": _ref("MatchResponse")}}})},
                      **_errors(400, 404)}}}
    paths["/v1/unsubscribe"] = {"parameters": [{"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}],
                                **{method: {"summary": "Turn an organisation's email_opt_in off with the signed token of a digest"
                                                       + (" (one-click, RFC 8058)" if method == "post" else ""),
                                            "responses": {"200": {"description": "Confirmation page", "content": {"text/html": {}}},
                                                          "400": {"description": "Missing, tampered or expired token (a page for browsers)",
                                                                  **_json(_ref("Error"))}}}
                                   for method in ("get", "post")}}
    paths.update(_job_and_consortium_paths())
    paths["/healthz"] = {"get": {"summary": "The process answers", "responses": {"200": {"description": "Alive"}}}}
    paths["/readyz"] = {"get": {"summary": "Model loaded and indexes in sync with the store",
                                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}}
    paths["/openapi.json"] = {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
    paths.update(_key_paths())
    paths["/v1/organisations/{id}/export"] = {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "Everything stored about one organisation (GDPR Art. 15 and 20): its profile with the contact "
                           "fields, the challenges it owns, its digest log and what batch jobs hold of it",
                "description": "Personal data: only API keys with the `admin` scope may export.",
                "responses": {"200": {"description": "The export (Content-Disposition: attachment)", **_json({
                    "type": "object", "required": ["tenant", "exported_at", "organisation", "challenges_owned", "digests", "jobs"],
                    "properties": {"tenant": {"type": "string"}, "exported_at": {"type": "string"},
                                   "organisation": _stored("OrganisationIn"),
                                   "challenges_owned": {"type": "array", "items": _stored("ChallengeIn")},
                                   "digests": {"type": "array", "items": {"type": "object"}},
                                   "jobs": {"type": "array", "items": {"type": "object"}}}})},
                              **_errors(404)}}}
    _retries(paths)
    _secure(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Partner matching for innovation ecosystems", "version": "1.0.0",
                 "description": "Stores organisation profiles and challenges, embeds them, and returns ranked, explained partner matches. "
                                "JSON bodies are strictly typed: booleans are true or false and numbers are JSON numbers "
                                "(\"yes\" or \"2023\" is a 400 naming the field). A POST that creates may be retried safely with an "
                                "Idempotency-Key; entities carry an ETag, and If-Match makes a PUT, PATCH or DELETE conditional."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (mk_...) from `python -m matcher keys create` or POST /v1/keys. It sees its tenant's data "
                           "only; scopes: read (GET), match (match and consortia), write (create, change, delete), admin (jobs, keys)."}}},
        "security": [{"bearerAuth": []}],
    }


def _key_paths() -> dict:
    record = {"type": "object", "required": ["id", "tenant", "scopes"], "properties": {
        "id": {"type": "string"}, "tenant": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
        "label": {"type": ["string", "null"]}, "rate_limit": {"type": ["integer", "null"]},
        "created_at": {"type": "string"}, "revoked_at": {"type": ["string", "null"]}}}
    new = {"type": "object", "required": ["scopes"], "additionalProperties": False, "properties": {
        "scopes": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(SCOPES)}},
        "label": {"type": ["string", "null"], "maxLength": 200},
        "rate_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000,
                       "description": "requests a minute; null or absent: the server's MATCHER_RATE_LIMIT"}}}
    return {
        "/v1/keys": {
            "get": {"summary": "The API keys of this key's tenant (never the keys themselves)",
                    "responses": {"200": {"description": "Keys", **_json({"type": "object", "properties": {
                        "items": {"type": "array", "items": record}}})}}},
            "post": {"summary": "A new API key for this key's tenant; `key` is shown this once",
                     "requestBody": {"required": True, **_json(new)},
                     "responses": {"201": {"description": "Created", **_json({"allOf": [record, {
                         "type": "object", "properties": {"key": {"type": "string", "description":
                             "The key itself, shown this once: a replay (Idempotency-Key) answers without it"}}}]})},
                         **_errors(400, 413)}}},
        "/v1/keys/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "delete": {"summary": "Revoke a key of this tenant, at once", "responses": {"204": {"description": "Revoked"}, **_errors(404)}}},
    }


# Safe retries (service/retries.py).
_CREATES = ("/v1/organisations", "/v1/organisations/bulk", "/v1/challenges", "/v1/challenges/bulk", "/v1/jobs/batch-match", "/v1/keys")
_ENTITIES = ("/v1/organisations/{id}", "/v1/challenges/{id}")
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Makes the create safe to retry: the same key with the same method, path and body within 24 hours answers "
                   "the first answer again (with Idempotent-Replayed: true) and writes nothing; with another request, a 409. "
                   "Keys belong to the tenant. A replayed key creation answers the key's record without the key itself."}
_CONDITIONS = {
    "If-Match": "ETags (or *) the entity must still have; otherwise 412 and nothing is written (a weak tag never matches)",
    "If-None-Match": "ETags (or *): 304 without a body when the entity still has one of them",
}
_ETAG = {"ETag": {"description": "The entity's version: it changes with every write", "required": True, "schema": {"type": "string"}}}


def _retries(paths: dict) -> None:
    """Document Idempotency-Key on the POSTs that create, and ETag, If-Match and If-None-Match on entities."""
    for path in _CREATES:
        op = paths[path]["post"]
        op.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
        op["responses"].update(_errors(409))
        success = next(r for code, r in op["responses"].items() if code.startswith("2"))
        success.setdefault("headers", {})["Idempotent-Replayed"] = {
            "description": "true when this is the first answer to an earlier request with the same Idempotency-Key",
            "schema": {"type": "string", "enum": ["true"]}}
    for path in ("/v1/organisations", "/v1/challenges"):
        paths[path]["post"]["responses"]["201"].setdefault("headers", {}).update(_ETAG)
    for path in _ENTITIES:
        for method, op in paths[path].items():
            if method == "parameters":
                continue
            header = "If-None-Match" if method == "get" else "If-Match"
            op.setdefault("parameters", []).append(
                {"name": header, "in": "header", "required": False, "schema": {"type": "string"}, "description": _CONDITIONS[header]})
            if method == "get":
                op["responses"]["304"] = {"description": "Not modified", "headers": _ETAG}
            else:
                op["responses"].update(_errors(412))
            if "200" in op["responses"]:
                op["responses"]["200"].setdefault("headers", {}).update(_ETAG)


_BLUEPRINT_OF = {"/v1/organisations/{id}/export": "exports", "/v1/organisations": "organisations", "/v1/challenges": "challenges", "/v1/match": "match",
                 "/v1/consortia": "consortia", "/v1/jobs": "jobs", "/v1/keys": "keys", "/v1/unsubscribe": "unsubscribe"}


def _secure(paths: dict) -> None:
    """Mark each operation with the scope it needs (service/auth.py decides the same way) and the 401/403/429
    (and 413, with a body) it can answer; the open ones (health, spec, unsubscribe link) need no key."""
    for path, item in paths.items():
        blueprint = next((b for prefix, b in _BLUEPRINT_OF.items() if path == prefix or path.startswith(prefix + "/")), "health")
        for method, op in item.items():
            if method == "parameters":
                continue
            scope = required_scope(blueprint, method.upper())
            if scope is None:
                op["security"] = []
                continue
            op["x-required-scope"] = scope
            op["description"] = (op.get("description", "") + f" Needs an API key with the `{scope}` scope.").strip()
            op["responses"].update(_errors(401, 403, 429))
            if "requestBody" in op:  # any body over MATCHER_MAX_BODY_BYTES
                op["responses"].update(_errors(413))
