"""/v1/consortia: alternative consortia for a challenge (stored id or text) under constraints."""
from __future__ import annotations

from flask import Blueprint

from matcher.consortium import build, parse_request
from service.api import engine, json_body

bp = Blueprint("consortia", __name__, url_prefix="/v1/consortia")


@bp.post("")
def consortia():
    return build(engine(), parse_request(json_body()))
