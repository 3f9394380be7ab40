"""The web console under /console/: server-rendered pages (Jinja2) over the same engine as the API.

A person signs in with an API key of the tenant (session.py) and sees only what its scopes allow; every form
carries a CSRF token. Each page module adds its routes to ``bp`` and is imported below; ``NAV`` is the menu (an
entry shows once its endpoint exists and the key has its scope). A page declares its scope with
``session.needs``, renders a template that extends ``console/base.html`` with the macros of
``console/_macros.html``, and shows the engine's errors beside their fields with ``errors.field_errors``;
pages.py does all of these. The browser journeys' fixtures: tests/service/console_fixtures.py.
"""
from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")

# The menu: (endpoint, label, scope the key needs to see it).
NAV = [
    ("console.home", "Home", "read"),
    ("console.organisations", "Organisations", "read"),
    ("console.challenges", "Challenges", "read"),
    ("console.match", "Match", "match"),
    ("console.batch", "Batch", "admin"),  # batch jobs are the admin scope's, as /v1/jobs is
    ("console.consortia", "Consortia", "match"),
    ("console.events", "Events", "match"),
]

# The hooks (sign-in, CSRF, scopes, error pages), then the page modules: each adds its routes to bp on import.
from service.console import (  # noqa: E402
    batch,  # noqa: E402, F401
    consortia,  # noqa: E402, F401
    errors,
    events,  # noqa: E402, F401
    pages,  # noqa: E402, F401
    session,
)


def init_app(app: Flask) -> None:
    """Register the console on the app: its session cookie and signing key, then its pages."""
    session.configure(app)
    app.register_blueprint(bp)


__all__ = ["NAV", "bp", "errors", "init_app"]
