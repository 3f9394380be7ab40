"""Times as the store keeps them (UTC) and as the API shows them (ISO 8601 with a Z)."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """A stored time in UTC: SQLite gives it back naive, PostgreSQL in the session's time zone."""
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def iso(value: dt.datetime) -> str:
    return aware(value).isoformat().replace("+00:00", "Z")
