"""/healthz (the process answers), /readyz (model loaded, indexes in sync), /openapi.json."""
from __future__ import annotations

from flask import Blueprint

from service.api import engine
from service.openapi import openapi_spec

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    eng = engine()
    try:
        for tenant_engine in eng.all_tenants():
            tenant_engine.sync()
        status = eng.status_all()
    except Exception as exc:  # the store is unreachable, say
        return {"ready": False, "error": str(exc)}, 503
    return status, 200 if status["ready"] else 503


@bp.get("/openapi.json")
def openapi():
    return openapi_spec()
