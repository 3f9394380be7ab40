"""Every error as JSON: {"error": {"code", "message", "details": [{"field", "problem"}]}}."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from models.schemas import InvalidInput
from models.store import ConflictError, NotFoundError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: list[dict] | None = None, headers=None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    response.headers.extend(headers or {})
    return response


def invalid(field: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{field}: {problem}", [{"field": field, "problem": problem}])


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput):
        message = exc.message
        if exc.details and message == "the request is not valid":
            first = exc.details[0]
            message = f"{first['field']}: {first['problem']}"
        return error_response(400, "invalid_request", message, exc.details)

    @app.errorhandler(NotFoundError)
    def _not_found(exc: NotFoundError):
        details = [{"field": exc.field, "problem": "not found"}] if exc.field else []
        return error_response(404, "not_found", str(exc), details)

    @app.errorhandler(ConflictError)
    def _conflict(exc: ConflictError):
        return error_response(409, "conflict", str(exc), [{"field": "id", "problem": "exists already"}])

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
