"""/v1/unsubscribe?token=...: the link in every digest. Turns the organisation's ``email_opt_in`` off and
confirms in a page. GET is the footer link; POST is the one-click unsubscribe of mail clients (RFC 8058,
``List-Unsubscribe-Post``). A tampered, malformed or expired token changes nothing: 400, as a page for a
browser (one that prefers text/html) and as the usual JSON error otherwise."""
from __future__ import annotations

import logging

from flask import Blueprint, render_template, request

from matcher.tokens import TokenError, read_unsubscribe_token
from models.enums import EntityKind
from service.api import engine
from service.config import current_settings
from service.errors import error_response

log = logging.getLogger(__name__)
bp = Blueprint("unsubscribe", __name__)


def _refuse(code: str, message: str):
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":  # a browser
        return render_template("unsubscribe.html", ok=False, message=message), 400
    return error_response(400, code, f"token: {message}", [{"field": "token", "problem": message}])


@bp.route("/v1/unsubscribe", methods=["GET", "POST"])
def unsubscribe():
    token = request.args.get("token", "").strip()
    if not token:
        return _refuse("invalid_request", "missing: use the link from the e-mail")
    try:
        tenant, org_id = read_unsubscribe_token(current_settings(), token)
    except TokenError as exc:
        return _refuse("expired_token" if exc.expired else "invalid_token", str(exc))
    eng = engine().for_tenant(tenant)
    org = eng.store.get(EntityKind.organisations, org_id)
    if org is not None and org.get("email_opt_in"):
        eng.patch(EntityKind.organisations, org_id, {"email_opt_in": False})
        log.info("organisation %s unsubscribed from digests", org_id)
    # A deleted organisation, or one that opted out already, is not mailed either: the same confirmation.
    return render_template("unsubscribe.html", ok=True, name=(org or {}).get("name")), 200
