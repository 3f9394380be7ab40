"""Reading console forms: the values a person typed, checked, with each problem kept for its field.

The engine validates what it is given (pydantic, models/schemas.py) and says which field is at fault; these
helpers only turn form inputs into the values the engine takes (a comma-separated list, a number, one of a few
choices) and report an input that cannot be turned, in the same {"field", "problem"} words.
"""
from __future__ import annotations

from models.countries import normalise_country

MAX_SEARCH = 200  # characters of a list page's search text


def words(text: str | None) -> list[str]:
    """A comma-separated input as a list of its non-empty parts."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def choice(value: str | None, allowed, name: str, errors: dict[str, str]) -> str | None:
    """One of ``allowed`` (an Enum or values), or None for empty; anything else is a problem of ``name``."""
    values = [getattr(a, "value", a) for a in allowed]
    if not value:
        return None
    if value not in values:
        errors[name] = f"must be one of {', '.join(values)}"
        return None
    return value


def country(value: str | None, name: str, errors: dict[str, str]) -> str | None:
    """An ISO country code or name as its two-letter code, or None for empty."""
    if not (value or "").strip():
        return None
    try:
        return normalise_country(value.strip())
    except ValueError as exc:
        errors[name] = str(exc)
        return None


def number(value: str | None, name: str, errors: dict[str, str], *, default: int, low: int, high: int) -> int:
    """A whole number between low and high (the default when empty)."""
    if not (value or "").strip():
        return default
    try:
        n = int(value.strip())
    except ValueError:
        errors[name] = "must be a whole number"
        return default
    if not low <= n <= high:
        errors[name] = f"must be between {low} and {high}"
        return default
    return n
