"""/v1/match and /v1/match/batch: ranked, explained partner matches."""
from __future__ import annotations

from flask import Blueprint

from models.schemas import BatchMatchRequest, MatchRequest, parse
from service.api import engine, json_body

bp = Blueprint("match", __name__, url_prefix="/v1/match")


@bp.post("")
def match():
    return engine().match(parse(MatchRequest, json_body()))


@bp.post("/batch")
def match_batch():
    batch = parse(BatchMatchRequest, json_body())
    return {"results": engine().match_many(batch.requests)}
