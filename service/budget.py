"""The work budget of a request: the characters of text it may have embedded (MATCHER_MAX_EMBED_CHARS).

Embedding is what makes a request long: a 2-core machine embeds 2,000-14,000 characters a second, however busy,
so the default 200,000 keeps the heaviest request allowed well inside MATCHER_TIMEOUT (300 s). A request over it
gets 413 ``over_budget`` naming its field and the limit, before any work: the client sends its items in several
requests (each one transaction), or a batch of matches as a job (POST /v1/jobs), outside the request workers.
"""
from __future__ import annotations

from service.config import current_settings
from service.errors import ApiError

EMBEDDED = ("name", "title", "description", "offers", "needs", "sectors")  # besides past project titles


def _chars(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, str))
    return 0


def profile_chars(doc) -> int:
    """The characters a write of this (not yet validated) organisation or challenge embeds: its profile text and
    its past project titles."""
    if not isinstance(doc, dict):
        return 0
    projects = doc.get("past_projects")
    titles = sum(_chars(p.get("title")) for p in projects if isinstance(p, dict)) if isinstance(projects, list) else 0
    return titles + sum(_chars(doc.get(key)) for key in EMBEDDED)


def check(field: str, chars: int) -> None:
    """413 when ``chars`` characters to embed are over the budget."""
    limit = current_settings().max_embed_chars
    if chars > limit:
        problem = f"holds {chars:,} characters to embed; one request may hold at most {limit:,} (MATCHER_MAX_EMBED_CHARS)"
        raise ApiError(413, "over_budget", f"{field} {problem}: send it in smaller requests",
                       [{"field": field, "problem": problem}])
