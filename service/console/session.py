"""Who is using the console, and may they: sign-in with an API key, the session cookie, CSRF and scopes.

Signing in checks a pasted API key once (models/keys.py) and keeps in Flask's signed session cookie the key's
id and tenant, never the key itself. The cookie is HttpOnly, SameSite=Strict, Secure when the request came over
HTTPS, and only sent to /console. Before every console request the key is read again by its id: a revoked key
signs the person out at once, and its scopes are the ones it has now. Then ``g.tenant``, ``g.scopes`` and
``g.key_id`` are set as service/auth.py sets them for the API, so ``service.api.engine()`` is the tenant's.

With MATCHER_AUTH=off (loopback only) the console opens straight into MATCHER_DEFAULT_TENANT with every scope.

Each view declares the scope it needs with ``@needs("read" | "match" | "write" | "admin" | None)`` (None: open,
the sign-in pages); a view that declares none needs admin. A key without the scope gets a 403 page; a template
asks ``can("write")`` to leave out what the key may not do. Every POST must carry the session's CSRF token
(``{{ csrf_field() }}`` in each form, or the X-CSRF-Token header): without it, 403.
"""
from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from matcher.tokens import secret_key
from models.keys import SCOPES, KeyStore
from service.config import current_settings
from service.console import bp
from service.console.errors import ConsoleError

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure whenever the request itself came over HTTPS."""

    def get_cookie_secure(self, app) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def configure(app: Flask) -> None:
    """The session cookie (signed with the service's secret key, as unsubscribe tokens are) of the console."""
    app.secret_key = secret_key(app.extensions["matcher.settings"])
    app.session_interface = _SessionInterface()
    app.config.update(SESSION_COOKIE_NAME="matcher_console", SESSION_COOKIE_PATH=bp.url_prefix,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")


def needs(scope: str | None):
    """Declare the scope a view needs (None: open to anyone); checked before the view runs."""

    def mark(view):
        view.console_scope = scope
        return view

    return mark


def can(scope: str) -> bool:
    """Whether the signed-in key has this scope (templates use it to leave out what it may not do)."""
    return scope in g.get("scopes", ())


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def _csrf_ok() -> bool:
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get(CSRF_FIELD, "")
    return bool(sent and expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _identify() -> bool:
    """Set g.tenant, g.scopes and g.key_id from the session's key (re-read now), or from MATCHER_AUTH=off."""
    s = current_settings()
    if not s.auth:
        g.tenant, g.scopes, g.key_id = s.default_tenant, SCOPES, None
        return True
    key_id = session.get("key_id")
    if not key_id:
        return False
    record = KeyStore(current_app.extensions["matcher.engine"].store).get(key_id)
    if record is None or record["revoked_at"] is not None or record["tenant"] != session.get("tenant"):
        session.clear()
        flash("This API key is no longer valid (revoked or removed): sign in with another one.", "error")
        return False
    g.tenant, g.scopes, g.key_id = record["tenant"], tuple(record["scopes"]), key_id
    return True


@bp.before_request
def _check() -> None:
    """Before every console request: the CSRF token of a POST, who is asking, and the view's scope."""
    if request.endpoint in (None, "console.static"):
        return None
    if request.method in UNSAFE and not _csrf_ok():
        raise ConsoleError(403, "This form cannot be accepted",
                           "It did not come from a page of this console, or the page is too old (a sign-out or a "
                           "server restart makes forms expire). Go back, reload the page and send it again.")
    view = current_app.view_functions[request.endpoint]
    scope = getattr(view, "console_scope", "admin")
    signed_in = _identify()
    if scope is None:
        return None
    if not signed_in:
        return redirect(url_for("console.login", next=_local(request.full_path)))
    if scope not in g.scopes:
        raise ConsoleError(403, "Your API key may not do this",
                           f"This needs the '{scope}' scope; the key you signed in with has: {', '.join(g.scopes)}. "
                           f"Sign in with a key that has it.")
    return None


def _local(path: str | None) -> str | None:
    """A path of this console to return to after signing in; anything else (another host, a URL) is dropped."""
    if not path:
        return None
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not parts.path.startswith(bp.url_prefix + "/") or "\\" in path:
        return None
    return path.rstrip("?")


@bp.route("/login", methods=["GET", "POST"])
@needs(None)
def login():
    if not current_settings().auth:
        return redirect(url_for("console.home"))
    error = None
    if request.method == "POST":
        key = KeyStore(current_app.extensions["matcher.engine"].store).verify(request.form.get("key", "").strip())
        if key is not None:
            session.clear()  # a new session: no token or state of the signed-out one carries over
            session.update(key_id=key.id, tenant=key.tenant)
            return redirect(_local(request.form.get("next")) or url_for("console.home"))
        error = "This is not an active API key: check that you pasted all of it (mk_…), and that it was not revoked."
    status = 400 if error else 200
    return render_template("console/login.html", errors={"key": error} if error else {},
                           next=_local(request.values.get("next"))), status


@bp.route("/logout", methods=["GET", "POST"])
@needs(None)
def logout():
    if request.method == "POST":
        session.clear()
        flash("You are signed out." if current_settings().auth else
              "Signed out; with MATCHER_AUTH=off the console opens without a key again.", "info")
        return redirect(url_for("console.login" if current_settings().auth else "console.home"))
    return render_template("console/logout.html")


@bp.context_processor
def _template_helpers() -> dict:
    return {"can": can, "csrf_token": csrf_token, "auth_on": current_settings().auth, "signed_in": "tenant" in g}
