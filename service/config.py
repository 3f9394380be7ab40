"""The service's configuration: the one ``Settings`` object, mapped onto Flask's config and kept in
``app.extensions["matcher.settings"]`` (``create_app`` puts it there)."""
from __future__ import annotations

from flask import current_app

from matcher.settings import Settings

__all__ = ["Settings", "current_settings", "flask_config"]


def flask_config(settings: Settings) -> dict:
    return {"MAX_CONTENT_LENGTH": settings.max_body_bytes}


def current_settings() -> Settings:
    """The settings of the app serving this request."""
    return current_app.extensions["matcher.settings"]
