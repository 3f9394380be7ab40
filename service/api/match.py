"""/v1/match and /v1/match/batch: ranked, explained partner matches."""
from __future__ import annotations

from flask import Blueprint
from pydantic import ValidationError

from models.schemas import BatchMatchRequest, InvalidInput, MatchRequest, problems
from service.api import engine, json_body

bp = Blueprint("match", __name__, url_prefix="/v1/match")


def _validate(model, body):
    if not isinstance(body, dict):
        raise InvalidInput([{"field": "body", "problem": "must be a JSON object"}])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(problems(exc)) from None


@bp.post("")
def match():
    return engine().match(_validate(MatchRequest, json_body()))


@bp.post("/batch")
def match_batch():
    batch = _validate(BatchMatchRequest, json_body())
    return {"results": engine().match_many(batch.requests)}
