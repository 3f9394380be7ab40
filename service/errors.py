"""Every error as JSON: {"error": {"code", "message", "details": [{"field", "problem"}]}}.

The domain's errors (models/errors.py) answer with their own status and code; ``ApiError`` adds the refusals of
the HTTP layer (401, 403, 429, ...), with headers.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from models.errors import InvalidInput, MatcherError

log = logging.getLogger(__name__)


class ApiError(MatcherError):
    """A refusal of the HTTP layer: its status, code and headers are the caller's to give."""

    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None,
                 headers: dict | None = None):
        super().__init__(message, details)
        self.http_status, self.code, self.headers = status, code, headers or {}


def error_document(code: str, message: str, details: list[dict] | None = None) -> dict:
    """The JSON of every error (the HTTP edge, service/http_edge.py, writes it without Flask)."""
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(status: int, code: str, message: str, details: list[dict] | None = None, headers=None):
    response = jsonify(error_document(code, message, details))
    response.status_code = status
    response.headers.extend(headers or {})
    return response


def invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput([{"field": field, "problem": problem}])


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(MatcherError)
    def _matcher_error(exc: MatcherError):
        return error_response(exc.http_status, exc.code, exc.message, exc.details, getattr(exc, "headers", None))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        details = [{"field": "body", "problem": "larger than the server accepts"}] if exc.code == 413 else []
        # Keep the exception's own headers (a 405's Allow, RFC 9110), all but its HTML Content-Type.
        return error_response(exc.code or 500, code, exc.description or exc.name, details,
                              [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"])

    @app.errorhandler(OperationalError)
    def _store_unavailable(exc: OperationalError):
        # The database cannot be reached, or a lock was not granted within its busy timeout (60 s on SQLite):
        # nothing was written, and the same request may succeed shortly.
        log.error("store unavailable: %s", exc.orig)
        return error_response(503, "store_unavailable", "the store is busy or unreachable; nothing was written, try again",
                              headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed to answer this request")
