"""The HTTP API's blueprints: thin layers that validate, call the engine and serialise."""
from __future__ import annotations

from flask import current_app, g, request

from service.errors import ApiError, invalid


def engine():
    """The matching engine of the request's tenant (service/auth.py set g.tenant); the process's default one on
    the open endpoints."""
    root = current_app.extensions["matcher.engine"]
    return root.for_tenant(g.tenant) if "tenant" in g else root


def scopes() -> tuple[str, ...]:
    """The request's scopes (every scope on the open endpoints, which touch no tenant's data)."""
    return g.get("scopes", ())


def json_body():
    """The request body as parsed JSON, or a 400 naming the body (or the field whose text no store can keep)."""
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # json.loads gives up on arrays/objects nested ~1000 deep
        raise invalid("body", f"nested more than {MAX_DEPTH} levels deep") from None
    if data is None:  # unparsable, empty, or the JSON value null
        raw = request.get_data().strip()
        raise invalid("body", "must be a JSON object, not null" if raw == b"null" else "not valid JSON" if raw
                      else "missing: send a JSON body")
    _check_text(data)
    return data


MAX_DEPTH = 32  # levels of arrays and objects in a body; a valid one needs 6 at most


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains half a surrogate pair (\\ud800-\\udfff), which is not Unicode text"
    return None


def _check_text(value, path: str = "", depth: int = 0) -> None:
    """400 for a string (a value or a key) that is not storable text: JSON may escape a NUL or half a surrogate
    pair, which PostgreSQL's text and UTF-8 cannot hold (a 500 there otherwise); and for a body nested deeper
    than any request needs."""
    if depth > MAX_DEPTH:
        raise invalid("body", f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            raise invalid(path or "body", problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            problem = _text_problem(key)
            if problem:
                raise invalid(path or "body", f"a field name {problem}")
            _check_text(item, name, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{path}[{i}]", depth + 1)


def reject_unstorable_path() -> None:
    """before_request (after the key check): a path id with a NUL or half a surrogate pair names nothing that can
    be stored, so it is a 404 here, before PostgreSQL refuses the lookup with a 500."""
    for value in (request.view_args or {}).values():
        if isinstance(value, str) and (problem := _text_problem(value)):
            raise ApiError(404, "not_found", f"id: {problem}", [{"field": "id", "problem": "not found"}])
