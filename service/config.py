"""The service's configuration: the one ``Settings`` object of the engine, mapped onto Flask's config."""
from __future__ import annotations

from matcher.settings import Settings

__all__ = ["Settings", "flask_config"]


def flask_config(settings: Settings) -> dict:
    return {"MAX_CONTENT_LENGTH": settings.max_body_bytes}
