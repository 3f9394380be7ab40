"""The errors of the domain, one family: each says what went wrong (``message``), which fields are at fault
(``details``, each {"field", "problem"}), and how the API (``http_status``, ``code``) and the command line
(``exit_code``) report it. service/errors.py and matcher/cli.py each map the family in one place.
"""
from __future__ import annotations

from models.enums import EntityKind


class MatcherError(Exception):
    http_status = 500
    code = "internal_error"
    exit_code = 1

    def __init__(self, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.message, self.details = message, details or []

    def lines(self) -> list[str]:
        """The error as lines of text (what the command line prints)."""
        return [self.message]


class InvalidInput(MatcherError):
    """Input that fails validation; ``details`` lists each problem. The message defaults to the first one."""

    http_status, code, exit_code = 400, "invalid_request", 2

    def __init__(self, details: list[dict], message: str | None = None):
        first = f"{details[0]['field']}: {details[0]['problem']}" if details else "the request is not valid"
        super().__init__(message or first, details)

    def lines(self) -> list[str]:
        problems = [f"{d['field']}: {d['problem']}" for d in self.details]
        return list(dict.fromkeys([self.message, *problems]))  # the message, then each problem it does not say


def _named(what: EntityKind | str) -> str:
    return what.value[:-1] if isinstance(what, EntityKind) else what


class NotFoundError(MatcherError):
    """No ``what`` (an entity kind, or e.g. "job") with that id; ``field`` names where the id was given."""

    http_status, code = 404, "not_found"

    def __init__(self, what: EntityKind | str, entity_id: str, field: str | None = None, problem: str = "not found"):
        details = [{"field": field, "problem": problem}] if field else []
        super().__init__(f"no {_named(what)} with id '{entity_id}'", details)


class ConflictError(MatcherError):
    """An entity with that id exists already."""

    http_status, code = 409, "conflict"

    def __init__(self, what: EntityKind | str, entity_id: str):
        super().__init__(f"{_named(what)} '{entity_id}' exists already", [{"field": "id", "problem": "exists already"}])


class NotFinished(MatcherError):
    """A result asked for before its job is done."""

    http_status, code = 409, "not_finished"

    def __init__(self, what: str, entity_id: str, status: str):
        super().__init__(f"{what} '{entity_id}' is {status}; its result is not ready",
                         [{"field": "id", "problem": f"status is {status}"}])


class PreconditionFailed(MatcherError):
    """A conditional write (If-Match) whose entity changed since the caller read it: nothing was written."""

    http_status, code = 412, "precondition_failed"

    def __init__(self, what: EntityKind | str, entity_id: str):
        super().__init__(f"{_named(what)} '{entity_id}' changed since it was read; read it again and retry",
                         [{"field": "If-Match", "problem": "does not match the current ETag"}])


class IdempotencyConflict(MatcherError):
    """An Idempotency-Key used before (within its lifetime) for another request: nothing was written."""

    http_status, code = 409, "idempotency_conflict"

    def __init__(self):
        super().__init__("this Idempotency-Key was used for another request; use a new key for a new request",
                         [{"field": "Idempotency-Key", "problem": "used before with another method, path or body"}])
