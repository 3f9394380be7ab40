"""The HTTP API's blueprints: thin layers that validate, call the engine and serialise."""
from __future__ import annotations

from flask import current_app, request

from service.errors import invalid


def engine():
    """The process's matching engine."""
    return current_app.extensions["matcher.engine"]


def json_body():
    """The request body as parsed JSON, or a 400 naming the body."""
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise invalid("body", "not valid JSON" if request.get_data() else "missing: send a JSON body")
    return data
