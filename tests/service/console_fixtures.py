"""Fixtures of the console's browser journeys: one real gunicorn on loopback (the demo data, MATCHER_AUTH on, an
API key per scope set) and one headless Chromium (the Debian package, driven by Playwright) for a whole test
module; a ``Journey`` per browser session that fails its test when a page shows an error, a script fails, or
the page asks another host for anything.

    from tests.service.console_fixtures import browser, console_server, journey  # noqa: F401 (fixtures)

    def test_something(journey):
        j = journey(key="admin")           # a new browser session, signed in with that key (None: not signed in)
        j.goto("/console/organisations")   # fails on an error page, unless expect=<status>
        j.shoot("organisations")           # PNGs at 390 and 1280 px; fails on sideways scrolling at 390 px
        j.page.get_by_role("link", name="...").click()   # the Playwright page itself

Screenshots go to $MATCHER_SCREENSHOTS (default var/screenshots/, not committed).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.digest_render import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import ROOT, empty_db_url
from tests.service.test_gunicorn import free_port, service_env, start_gunicorn, stop_gunicorn

SCREENSHOTS = Path(os.environ.get("MATCHER_SCREENSHOTS") or ROOT / "var" / "screenshots")
WIDTHS = (390, 1280)  # a phone and a laptop, in CSS pixels
KEY = re.compile(r"mk_[a-z0-9]{12}_[A-Za-z0-9_-]{43}")
# Keys made for the journeys, by name: the scopes each has.
KEY_SCOPES = {"read": "read", "match": "read,match", "write": "read,write"}


@dataclass
class ConsoleServer:
    base: str
    keys: dict[str, str]  # "admin" (the demo key, every scope), "read", "match", "write"
    log_path: Path
    init_output: str  # what `python -m matcher init` (what `make run` runs first) printed
    env: dict = field(repr=False)

    def matcher(self, *args: str) -> subprocess.CompletedProcess:
        """``python -m matcher ...`` on the server's store."""
        return subprocess.run([sys.executable, "-m", "matcher", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=300)


@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    """gunicorn (2 workers and the job worker) on the demo data, as `make run` starts it, with API keys."""
    data = tmp_path_factory.mktemp("console")
    env = service_env(data, free_port(), db_url=empty_db_url(data), workers=2, auth="on", load_demo=1, rate_limit=0)
    server = ConsoleServer("", {}, data / "gunicorn.log", "", env)
    init = server.matcher("-q", "init")
    assert init.returncode == 0, init.stderr
    server.init_output = init.stdout
    server.keys["admin"] = KEY.search(init.stdout).group(0)
    for name, scopes in KEY_SCOPES.items():
        made = server.matcher("keys", "create", "--tenant", "demo", "--scopes", scopes, "--label", f"console {name}")
        server.keys[name] = KEY.search(made.stdout).group(0)
    proc, server.base, log = start_gunicorn(env, server.log_path)
    try:
        yield server
    finally:
        stop_gunicorn(proc, log)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: make test installs the Debian package chromium where apt-get can")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# What a page's layout must hold at every width: no sideways scrolling, no element past the right edge.
MEASURE = """() => ({
  inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
  wide: Array.from(document.querySelectorAll('body *')).filter(e => {
    const r = e.getBoundingClientRect(); return r.width > 0 && r.right > window.innerWidth + 0.5;
  }).map(e => e.tagName + '.' + e.className).slice(0, 5)})"""


class Journey:
    """One browser session on the console: records every request, and collects what should fail the test."""

    def __init__(self, browser, server: ConsoleServer, width: int = 1280):
        self.server, self.origin = server, _origin(server.base)
        self.context = browser.new_context(viewport={"width": width, "height": 900}, base_url=server.base,
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.problems: list[str] = []
        self.expected: set[int] = set()  # statuses the journey provokes on purpose
        self.context.route("**/*", self._route)
        self.page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        self.page.on("console", self._console)
        self.page.on("response", self._response)

    def _route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if _origin(url) != self.origin:
            self.foreign.append(url)
            route.abort()
        else:
            route.continue_()

    def _console(self, message) -> None:
        # A page answered with an error status is reported by the response check (which knows what is expected).
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console error: {message.text}")

    def _response(self, response) -> None:
        if response.status >= 400 and response.status not in self.expected:
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")

    def goto(self, path: str, expect: int | None = None):
        """Open a console page; it must answer 200 (or ``expect``) and show no error unless one is expected."""
        if expect is not None:
            self.expected.add(expect)
        response = self.page.goto(path)
        assert response is not None and response.status == (expect or 200), (path, response and response.status)
        if expect is None:
            self.assert_no_error_shown()
        return response

    def assert_no_error_shown(self) -> None:
        errors = self.page.locator("[data-error-page]")
        assert errors.count() == 0, errors.first.inner_text()

    def sign_in(self, key: str) -> None:
        self.goto("/console/login")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r"/console/$"))
        self.assert_no_error_shown()

    def wait_for_fragments(self) -> None:
        """Wait until every part of the page loaded in its own request (matches) is there."""
        self.page.wait_for_function("() => !document.querySelector('[data-fragment][aria-busy=\"true\"]')", timeout=120_000)
        self.assert_no_error_shown()

    def shoot(self, name: str) -> None:
        """Full-page PNGs at each width (SCREENSHOTS/<name>-<width>.png); none may scroll sideways."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size
        try:
            for width in WIDTHS:
                self.page.set_viewport_size({"width": width, "height": 900})
                self.page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
                m = self.page.evaluate(MEASURE)
                assert m["inner"] == width and m["scroll"] <= width and not m["wide"], (name, m)
        finally:
            self.page.set_viewport_size(size)

    def csrf_token(self) -> str:
        """The CSRF token of the page's forms (the sign-out form carries it on every page)."""
        return self.page.locator("input[name=csrf_token]").first.get_attribute("value")

    def check(self) -> None:
        assert not self.foreign, f"requests to another host: {self.foreign}"
        assert not self.problems, self.problems
        assert all(not KEY.search(url) for url in self.requests), "an API key in a URL"

    def close(self) -> None:
        self.context.close()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@pytest.fixture
def journey(browser, console_server):
    """Start browser sessions: journey(key="admin" | "read" | "match" | "write" | None, width=1280). Each fails
    the test at its end when it met an error or asked another host for anything."""
    started: list[Journey] = []

    def start(key: str | None = "admin", width: int = 1280) -> Journey:
        j = Journey(browser, console_server, width)
        started.append(j)
        if key is not None:
            j.sign_in(console_server.keys[key])
        return j

    yield start
    try:
        for j in started:
            j.check()
    finally:
        for j in started:
            j.close()
