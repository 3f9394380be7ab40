"""The console's error pages, its response headers, and how engine errors reach the fields of a form.

The API answers errors in JSON; the console answers them as pages (or, for a part of a page loaded by
console.js, as that part), never with a stack trace. A form keeps the engine's ``details`` and shows each
problem beside the field at fault: ``field_errors`` maps the API's field paths (``query.text``,
``filters.countries[0]``) to the form's input names.
"""
from __future__ import annotations

import logging
import uuid

from flask import g, render_template, request
from werkzeug.exceptions import HTTPException

from models.errors import MatcherError
from models.schemas import InvalidInput
from service.console import bp
from service.errors import ApiError

log = logging.getLogger(__name__)

FORM = "_form"  # the key of problems that belong to no one field (shown above the form)
# Content-Security-Policy: nothing from another host, no inline script; the digest preview allows inline
# styles (the e-mail's own) with g.inline_styles = True.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'{styles}; img-src 'self' data:; frame-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
FRAGMENT_HEADER = "X-Console-Fragment"
# What the engine and the API raise for a request they cannot serve: each carries a message and its details.
ENGINE_ERRORS = (MatcherError, InvalidInput, ApiError)


class ConsoleError(Exception):
    """An error shown to the person as a page: an HTTP status, a title, and what to do about it."""

    def __init__(self, status: int, title: str, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.status, self.title, self.message, self.details = status, title, message, details or []


def is_fragment() -> bool:
    """Whether console.js asked for a part of a page (e.g. a list of matches), not a whole page."""
    return request.headers.get(FRAGMENT_HEADER) == "1"


def details_of(exc: Exception) -> list[dict]:
    """The {"field", "problem"} list of an engine or API error (a message alone: one problem of the form)."""
    details = list(getattr(exc, "details", None) or [])
    return details or [{"field": FORM, "problem": getattr(exc, "message", None) or str(exc)}]


def field_errors(details: list[dict], fields: dict[str, str]) -> dict[str, str]:
    """Problems keyed by form input: ``fields`` maps an API field path (or the start of one) to an input name;
    a problem of any other field goes under FORM, with the field's name in front."""
    out: dict[str, str] = {}
    for d in details:
        path = d.get("field") or FORM
        name = next((fields[p] for p in sorted(fields, key=len, reverse=True)
                     if path == p or path.startswith((p + ".", p + "["))), None)
        problem = d.get("problem") or "not valid"
        if name is None:
            name, problem = FORM, (problem if path == FORM else f"{path}: {problem}")
        out[name] = f"{out[name]}; {problem}" if name in out else problem
    return out


def _page(status: int, title: str, message: str, details: list[dict] | None = None):
    template = "console/_error.html" if is_fragment() else "console/error.html"
    return render_template(template, status=status, title=title, message=message, details=details or []), status


@bp.errorhandler(ConsoleError)
def _console_error(exc: ConsoleError):
    return _page(exc.status, exc.title, exc.message, exc.details)


def _engine_error(exc):
    status = getattr(exc, "http_status", None) or getattr(exc, "status", 400)
    titles = {404: "Not found", 409: "Conflict", 429: "Too many requests"}
    return _page(status, titles.get(status, "This cannot be done"), getattr(exc, "message", None) or str(exc),
                 [d for d in details_of(exc) if d["field"] != FORM])


for _error in ENGINE_ERRORS:
    bp.register_error_handler(_error, _engine_error)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if exc.code == 404:
        return _page(404, "Page not found", "There is no console page at this address. Use the menu above.")
    return _page(exc.code or 500, exc.name, exc.description or exc.name)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    reference = uuid.uuid4().hex[:12]
    log.exception("console: unhandled error (reference %s)", reference)
    return _page(500, "Something went wrong on our side",
                 f"The server failed to answer this page; nothing you did caused it. If it happens again, give the "
                 f"operator this reference: {reference}.")


@bp.route("/<path:_unknown>", methods=["GET", "POST"])
def not_found(_unknown):
    """Any other /console/ address: the console's 404 page (the API answers its own 404s in JSON)."""
    raise ConsoleError(404, "Page not found", "There is no console page at this address. Use the menu above.")


not_found.console_scope = None


@bp.after_request
def _headers(response):
    """No page is framed, sniffed, cached or loads anything from another host."""
    response.headers["Content-Security-Policy"] = CSP.format(styles=" 'unsafe-inline'" if g.get("inline_styles") else "")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response
