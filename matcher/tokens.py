"""Signed, expiring unsubscribe tokens (itsdangerous): the digest puts one in every message, the service's
``GET /v1/unsubscribe?token=...`` reads it back. A token names one organisation (its tenant and id) and
nothing else (no address)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from matcher.settings import Settings
from models.files import open_private, private_dir

_SALT = "matcher.unsubscribe.v1"


class TokenError(ValueError):
    """A token that is tampered with, malformed or expired; ``expired`` tells which."""

    def __init__(self, message: str, expired: bool = False):
        super().__init__(message)
        self.expired = expired


def secret_key(settings: Settings) -> str:
    """MATCHER_SECRET_KEY, or a random key made once and kept in <data_dir>/secret_key (readable by its owner only)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    if not path.exists():
        private_dir(path.parent)
        try:
            fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it or set MATCHER_SECRET_KEY")
    return key


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key(settings), salt=_SALT)


def make_unsubscribe_token(settings: Settings, organisation_id: str, tenant: str | None = None) -> str:
    return _serializer(settings).dumps({"org": organisation_id, "tenant": tenant or settings.default_tenant})


def read_unsubscribe_token(settings: Settings, token: str) -> tuple[str, str]:
    """The (tenant, organisation id) a valid token names; raises TokenError for a tampered, malformed or expired
    one. A token made before tenants existed names the default tenant."""
    try:
        data = _serializer(settings).loads(token, max_age=settings.unsubscribe_days * 86400)
    except SignatureExpired:
        raise TokenError("this unsubscribe link has expired", expired=True) from None
    except BadSignature:
        raise TokenError("this unsubscribe link is not valid") from None
    if not isinstance(data, dict) or not isinstance(data.get("org"), str) or not isinstance(data.get("tenant", ""), str):
        raise TokenError("this unsubscribe link is not valid")
    return data.get("tenant") or settings.default_tenant, data["org"]
