"""/v1/match and /v1/match/batch: ranked, explained partner matches."""
from __future__ import annotations

import time

from flask import Blueprint

from models.schemas import BatchMatchRequest, MatchRequest, parse
from service import budget
from service.api import engine, json_body

bp = Blueprint("match", __name__, url_prefix="/v1/match")


@bp.post("")
def match():
    started = time.perf_counter()  # took_ms: the server time of the whole request, parsing included
    return engine().match(parse(MatchRequest, json_body()), started=started)


@bp.post("/batch")
def match_batch():
    started = time.perf_counter()
    batch = parse(BatchMatchRequest, json_body())
    budget.check("requests", sum(len(r.query.text or "") for r in batch.requests))
    return {"results": engine().match_many(batch.requests, started=started)}
