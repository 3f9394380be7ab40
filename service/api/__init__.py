"""The HTTP API's blueprints: thin layers that validate, call the engine and serialise."""
from __future__ import annotations

from flask import current_app, g, request

from service.errors import invalid


def engine():
    """The matching engine of the request's tenant (service/auth.py set g.tenant); the process's default one on
    the open endpoints."""
    root = current_app.extensions["matcher.engine"]
    return root.for_tenant(g.tenant) if "tenant" in g else root


def scopes() -> tuple[str, ...]:
    """The request's scopes (every scope on the open endpoints, which touch no tenant's data)."""
    return g.get("scopes", ())


def json_body():
    """The request body as parsed JSON, or a 400 naming the body."""
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise invalid("body", "not valid JSON" if request.get_data() else "missing: send a JSON body")
    return data
