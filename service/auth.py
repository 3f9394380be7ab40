"""Who is asking, and may they: API keys, scopes, tenants and rate limits, checked before every request.

``Authorization: Bearer mk_...``: the key names its tenant and scopes (models/keys.py). Every endpoint needs a
scope, from its blueprint and method (``REQUIRED``); /healthz, /readyz, /openapi.json and the unsubscribe link
(which carries a signed token of its own) are open, and so is the console's blueprint: it signs a person in with
a key and checks the same scopes itself (service/console/session.py). A missing or unknown key is 401, a key
without the scope 403, a key over its rate 429 with Retry-After; all in the API's JSON error shape. The request's tenant is then
``g.tenant``, and the blueprints only ever reach that tenant's engine.

``MATCHER_AUTH=off`` serves ``MATCHER_DEFAULT_TENANT`` with every scope and no key, for local development and
tests; ``check_bind`` refuses to serve that way on anything but a loopback address.
"""
from __future__ import annotations

import ipaddress
import logging

from flask import Flask, current_app, g, request

from models.keys import SCOPES, KeyStore
from service import ratelimit
from service.config import current_settings
from service.errors import ApiError

log = logging.getLogger(__name__)

OPEN = {"health", "unsubscribe", "static", "console"}  # the console signs its users in with a key itself
READ_WRITE = {"GET": "read", "HEAD": "read"}  # anything else on an entity is a write
REQUIRED = {
    "organisations": READ_WRITE,
    "challenges": READ_WRITE,
    "match": "match",
    "consortia": "match",
    "jobs": "admin",
    "keys": "admin",
    "exports": "admin",  # everything stored about an organisation: personal data and job rows
}


def required_scope(blueprint: str | None, method: str) -> str | None:
    """The scope an endpoint needs (None: open). An endpoint nobody listed needs admin."""
    if blueprint in OPEN:
        return None
    need = REQUIRED.get(blueprint or "", "admin")
    return need.get(method, "write") if isinstance(need, dict) else need


def can_see_contact(scopes) -> bool:
    """contact_email is personal data: shown to keys that may write the profile (write or admin) only."""
    return bool({"write", "admin"} & set(scopes))


def _unauthorized(problem: str) -> ApiError:
    return ApiError(401, "unauthorized", f"Authorization: {problem}", [{"field": "Authorization", "problem": problem}],
                    {"WWW-Authenticate": 'Bearer realm="matcher"'})


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticate() -> None:
    """before_request: set g.tenant, g.scopes and g.key_id, or raise the 401/403/429."""
    settings = current_settings()
    need = required_scope(request.blueprint, request.method)
    if request.endpoint is None or need is None:  # no such route (404/405), or an open one
        return
    if not settings.auth:
        g.tenant, g.scopes, g.key_id = settings.default_tenant, SCOPES, None
        return
    if "Authorization" not in request.headers:
        raise _unauthorized("missing: send Authorization: Bearer <API key>")
    secret = _bearer()
    if secret is None:
        raise _unauthorized("must be 'Bearer <API key>'")
    key = KeyStore(current_app.extensions["matcher.engine"].store).verify(secret)
    if key is None:
        raise _unauthorized("unknown or revoked API key")
    if need not in key.scopes:
        raise ApiError(403, "forbidden", f"this API key lacks the '{need}' scope",
                       [{"field": "Authorization", "problem": f"lacks the '{need}' scope (has: {', '.join(key.scopes)})"}])
    rate = key.rate_limit or settings.rate_limit
    if rate > 0:
        decision = current_app.extensions["matcher.rate_buckets"].take(key.id, rate, settings.rate_burst)  # at most `rate` at once
        if not decision.allowed:
            raise ApiError(429, "rate_limited", f"this API key is over its limit of {rate} requests a minute",
                           [{"field": "Authorization", "problem": f"over {rate} requests a minute; retry after "
                                                                  f"{decision.retry_after} s"}],
                           {"Retry-After": str(decision.retry_after)})
        g.rate = (rate, decision.remaining)
    g.tenant, g.scopes, g.key_id = key.tenant, key.scopes, key.id


def _rate_headers(response):
    if "rate" in g:
        response.headers["X-RateLimit-Limit"] = str(g.rate[0])
        response.headers["X-RateLimit-Remaining"] = str(g.rate[1])
    return response


def init_app(app: Flask) -> None:
    app.extensions["matcher.rate_buckets"] = ratelimit.buckets()
    app.before_request(authenticate)
    app.after_request(_rate_headers)


def is_loopback(host: str) -> bool:
    host = host.strip()
    if host.startswith("unix:"):  # a socket file: only this machine reaches it
        return True
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings, binds: list[str]) -> None:
    """Refuse MATCHER_AUTH=off on any address but loopback: without keys, anyone who reaches it has everything."""
    if settings.auth:
        return
    exposed = [b for b in binds if not is_loopback(b)]
    if exposed:
        raise SystemExit(f"MATCHER_AUTH=off serves every request without a key, so it only binds loopback "
                         f"addresses (127.0.0.1, ::1, localhost); refusing to listen on {', '.join(exposed)}. "
                         f"Create an API key (python -m matcher keys create) and leave MATCHER_AUTH on.")
