"""The web console (/console/): journeys in headless Chromium against a real gunicorn on loopback, with the demo
data and MATCHER_AUTH on; and, without a browser, what needs no server (MATCHER_AUTH=off, error pages).

Every journey fails if a page shows an error it did not provoke, a script fails, or a page asks another host for
anything (tests/service/console_fixtures.py). Screenshots of every page at 390 and 1280 px go to
$MATCHER_SCREENSHOTS (default var/screenshots/).
"""
from __future__ import annotations

import csv
import io
import re
import time

import pytest
import requests

from tests.service import console_fixtures

# The browser journeys' fixtures (module-scoped gunicorn and Chromium, a Journey per browser session)
browser, console_server, journey = console_fixtures.browser, console_fixtures.console_server, console_fixtures.journey

ORG = "org-lichtveld"  # a demo organisation with e-mail digests on and a contact address


def api(server, method: str, path: str, key: str = "admin", **kwargs):
    return requests.request(method, f"{server.base}{path}", headers={"Authorization": f"Bearer {server.keys[key]}"},
                            timeout=120, **kwargs)


@pytest.mark.slow
def test_sign_in_and_out_with_the_keyboard(journey, console_server):
    queries = [{"text": "adaptive street lighting pilot"}, {"organisation_id": ORG}]
    job = api(console_server, "POST", "/v1/jobs/batch-match", json={"queries": queries, "k": 5}).json()  # for home
    assert f"web console: {console_server.base}/console/ (sign in with an API key)" in console_server.init_output
    j = journey(key=None)
    j.goto("/console/")  # not signed in: the sign-in page, which returns here afterwards
    page = j.page
    assert re.search(r"/console/login\?next=/console/$", page.url)
    j.shoot("login")
    # A wrong key: the problem is shown beside the field, and the field keeps nothing
    j.expected.add(400)
    page.get_by_label("API key").fill("mk_000000000000_" + "x" * 43)
    page.keyboard.press("Enter")
    page.wait_for_selector("#f-key-error")
    assert "not an active API key" in page.locator("#f-key-error").inner_text()
    assert page.get_by_label("API key").input_value() == ""
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"
    j.shoot("login-error")
    # The keyboard alone: the key field has the focus, Tab reaches the button with a visible focus ring, Enter
    page.goto("/console/login")
    # autofocus is applied at a rendering update, which may come after the load event on a busy machine
    page.wait_for_function("document.activeElement && document.activeElement.id === 'f-key'", timeout=10_000)
    page.keyboard.type(console_server.keys["admin"])
    page.keyboard.press("Tab")
    focused = page.evaluate("() => [document.activeElement.textContent, getComputedStyle(document.activeElement).outlineStyle]")
    assert focused == ["Sign in", "solid"], focused
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/$"))
    j.assert_no_error_shown()
    assert page.get_by_role("heading", level=1).inner_text() == "Tenant demo"
    counts = page.locator(".counts").inner_text()
    assert "165\norganisations" in counts and "41\nchallenges" in counts, counts
    assert page.locator("section", has_text="Open challenges closing soon").locator("li").count() == 5
    deadline = time.time() + 180  # the job worker loads the model first
    while api(console_server, "GET", f"/v1/jobs/{job['id']}").json()["status"] != "done":
        assert time.time() < deadline, "the batch job did not finish"
        time.sleep(1)
    page.reload()
    jobs = page.locator("section", has_text="Recent batch jobs")
    assert job["id"] in jobs.inner_text() and jobs.locator(".state-done").count() == 1
    j.shoot("home")
    # The key is nowhere: not in a page, a URL or the cookie (which holds its id and tenant, signed), nor in a log line
    secret = console_server.keys["admin"]
    assert secret not in page.content()
    cookie = next(c for c in j.context.cookies() if c["name"] == "matcher_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert secret not in cookie["value"] and secret.split("_")[2] not in cookie["value"]
    # Sign out: the button in the header (a POST with the CSRF token); the console then asks for a key again
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/console/login$"))
    assert "You are signed out" in page.locator(".flash").inner_text()
    page.goto("/console/organisations")
    assert "/console/login?next=/console/organisations" in page.url
    assert secret not in console_server.log_path.read_text()


@pytest.mark.slow
def test_a_read_key_sees_no_write_or_match_action_and_forged_posts_are_refused(journey, console_server):
    j = journey(key="read")
    page = j.page
    assert [a.inner_text() for a in page.locator("nav .nav a").all()] == ["Home", "Organisations", "Challenges"]
    assert page.get_by_text("Recent batch jobs").count() == 0  # jobs are the admin scope's, as in the API
    j.goto(f"/console/organisations/{ORG}")
    assert page.locator("main form").count() == 0  # no write button (the sign-out form is in the header)
    assert page.get_by_role("link", name="Preview its digest").count() == 0 and page.locator("[data-fragment]").count() == 0
    assert "match scope" in page.locator(".note").inner_text()
    assert "@" not in page.locator("main").inner_text()  # no contact address for a read key
    j.goto("/console/match", expect=403)
    assert "needs the 'match' scope" in page.locator("[data-error-page]").inner_text()
    j.shoot("forbidden")
    # A forged POST, with the session's own token but no write scope: 403, and nothing changes
    token = j.csrf_token()
    j.expected.add(403)
    r = j.context.request.post(f"/console/organisations/{ORG}/digests", form={"email_opt_in": "off", "csrf_token": token})
    assert r.status == 403 and "needs the &#39;write&#39; scope" in r.text()
    # A forged POST without the token (from another site, or a replayed form): 403 whatever the key may do
    admin = journey(key="admin")
    for session in (j, admin):
        r = session.context.request.post(f"/console/organisations/{ORG}/digests", form={"email_opt_in": "off"})
        assert r.status == 403 and "cannot be accepted" in r.text() and "Traceback" not in r.text()
    r = admin.context.request.post(f"/console/organisations/{ORG}/digests",
                                   form={"email_opt_in": "off", "csrf_token": token})  # another session's token
    assert r.status == 403
    assert api(console_server, "GET", f"/v1/organisations/{ORG}").json()["email_opt_in"] is True
    # The same action from a page of a write key's session is done
    writer = journey(key="write")
    writer.goto(f"/console/organisations/{ORG}")
    writer.page.get_by_role("button", name="Turn e-mail digests off").click()
    writer.page.wait_for_selector(".flash")
    assert "now off" in writer.page.locator(".flash").inner_text()
    assert api(console_server, "GET", f"/v1/organisations/{ORG}").json()["email_opt_in"] is False
    writer.page.get_by_role("button", name="Turn e-mail digests on").click()
    writer.page.wait_for_selector(".flash")
    assert api(console_server, "GET", f"/v1/organisations/{ORG}").json()["email_opt_in"] is True
    # A revoked key signs its sessions out at the next page
    read_id = console_server.keys["read"].split("_")[1]
    assert api(console_server, "DELETE", f"/v1/keys/{read_id}").status_code == 204
    page.goto("/console/organisations")
    assert "/console/login" in page.url and "no longer valid" in page.locator(".flash").inner_text()


@pytest.mark.slow
def test_search_and_open_an_organisation(journey, console_server):
    j = journey(key="admin")
    page = j.page
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Organisations").click()
    page.wait_for_url(re.compile(r"/console/organisations$"))
    j.assert_no_error_shown()
    # Pages follow the API's cursors: the console's next page is the API's next_cursor for the same page size
    next_link = page.get_by_role("link", name="Next page")
    cursor = re.search(r"cursor=([\w-]+)", next_link.get_attribute("href")).group(1)
    assert cursor == api(console_server, "GET", "/v1/organisations?limit=25").json()["next_cursor"]
    j.shoot("organisations")
    next_link.click()
    page.wait_for_url(re.compile(r"cursor="))
    first = page.locator(".results .row-title").first.inner_text()
    assert first == api(console_server, "GET", f"/v1/organisations?limit=1&cursor={cursor}").json()["items"][0]["name"]
    # Search by text and type
    page.get_by_label("Search names and descriptions").fill("street light")
    page.get_by_label("Type").select_option("startup")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"q=street\+light"))
    j.assert_no_error_shown()
    names = [n.inner_text() for n in page.locator(".results .row-title").all()]
    assert "Lichtveld Labs" in names and all("Startup" in m.inner_text() for m in page.locator(".results .meta").all())
    j.shoot("organisations-search")
    # A country that is no country: the problem beside the field
    page.get_by_label("Country").fill("ZZ")
    j.expected.add(400)
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("#f-country-error")
    assert "not an ISO 3166-1 alpha-2 country code" in page.locator("#f-country-error").inner_text()
    j.expected.discard(400)
    page.get_by_label("Country").fill("")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"country=$"))
    # Open it: the profile, then its best matches both ways, each with its score in words and why
    page.get_by_role("link", name="Lichtveld Labs").click()
    page.wait_for_url(re.compile(rf"/console/organisations/{ORG}$"))
    assert page.get_by_role("heading", level=1).inner_text() == "Lichtveld Labs"
    j.wait_for_fragments()
    for section in ("Partners that fit", "Open challenges that fit"):
        matches = page.locator("section", has_text=section).locator(".match")
        assert matches.count() == 10, section
        top = matches.first
        assert re.match(r"(Very strong|Strong|Good|Possible|Weak) match \d\.\d\d", top.locator(".score").inner_text())
        assert top.locator(".why").inner_text().strip()
        assert top.locator("dt", has_text="Closest sentence").count() == 1
    assert page.locator("section", has_text="Open challenges that fit").locator("dt", has_text="Type fit").count() > 0
    j.shoot("organisation")
    # A challenge of its list: its page, the organisations that fit it and similar challenges
    page.locator("section", has_text="Open challenges that fit").locator(".match-name").first.click()
    page.wait_for_url(re.compile(r"/console/challenges/"))
    j.wait_for_fragments()
    assert page.locator("section", has_text="Organisations that fit").locator(".match").count() == 10
    j.shoot("challenge")
    j.goto("/console/challenges?status=open")
    j.shoot("challenges")
    j.goto("/console/organisations/no-such-organisation", expect=404)
    assert "no organisation with id" in page.locator("[data-error-page]").inner_text()
    j.shoot("not-found")


@pytest.mark.slow
def test_match_pasted_text_with_a_type_filter_and_export_csv(journey, console_server):
    j = journey(key="match")
    page = j.page
    j.goto("/console/match")
    # Nothing pasted: the engine's problem with query.text, beside the text field
    j.expected.add(400)
    page.get_by_role("button", name="Find matches").click()
    page.wait_for_selector("#f-text-error")
    assert "at least 1 character" in page.locator("#f-text-error").inner_text()
    page.wait_for_function("document.activeElement.hasAttribute('data-error-summary')", timeout=5_000)  # focused
    j.shoot("match-error")
    j.expected.discard(400)
    text = ("Adaptive street lighting pilot\nThe city wants street lights that dim when streets are empty, "
            "with radar presence detection and a central lighting management system.")
    page.get_by_label("Need or call text").fill(text)
    page.get_by_label("University").check()
    page.get_by_label("Research institute").check()
    page.get_by_role("button", name="Find matches").click()
    page.wait_for_selector("#h-results")
    j.assert_no_error_shown()
    matches = page.locator(".match")
    assert matches.count() == 10
    types = [m.locator(".meta").inner_text().split(" · ")[0] for m in matches.all()]
    assert set(types) <= {"University", "Research institute"}, types
    shown = [m.locator(".match-name").inner_text() for m in matches.all()]
    j.shoot("match")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(open(path, encoding="utf-8").read())))
    assert [r["name"] for r in rows] == shown and [r["rank"] for r in rows] == [str(i) for i in range(1, 11)]
    assert {r["type"] for r in rows} <= {"university", "research_institute"}
    assert all(r["score_in_words"].endswith("match") and r["why"] for r in rows)
    with page.expect_download() as download:
        page.get_by_role("button", name="Export XLSX").click()
    from openpyxl import load_workbook

    assert download.value.suggested_filename.endswith(".xlsx")
    sheet = load_workbook(io.BytesIO(download.value.path().read_bytes()), read_only=True).worksheets[0]
    assert [row[2] for row in sheet.iter_rows(min_row=2, values_only=True)] == shown


@pytest.mark.slow
def test_preview_a_digest(journey, console_server):
    j = journey(key="admin")
    page = j.page
    j.goto(f"/console/organisations/{ORG}")
    page.get_by_role("link", name="Preview its digest").click()
    page.wait_for_url(re.compile(rf"/console/digests/{ORG}$"))
    j.assert_no_error_shown()
    assert page.locator(".headers").inner_text().count("new match") == 1
    assert "hello@lichtveld.example" in page.locator(".headers").inner_text()  # an admin key sees the address
    email = page.frame_locator("iframe.email")
    assert email.locator(".match").count() >= 2
    assert "Unsubscribe" in email.locator("body").inner_text()
    j.shoot("digest")
    # Composing it sent and recorded nothing: the next preview is the same
    page.reload()
    assert page.frame_locator("iframe.email").locator(".match").count() == email.locator(".match").count()


# --- without a browser ---------------------------------------------------------------------------


@pytest.fixture
def open_console(settings):
    """The app with MATCHER_AUTH=off (loopback), on an empty store; the model is never needed."""
    from matcher.engine import Engine
    from service import create_app

    app = create_app(settings, Engine(settings).open())
    app.config.update(TESTING=True)
    return app


def test_auth_off_opens_straight_into_the_default_tenant(open_console):
    client = open_console.test_client()
    r = client.get("/console/")
    assert r.status_code == 200 and "Tenant demo" in r.get_data(as_text=True)
    assert client.get("/console/login").headers["Location"].endswith("/console/")
    # CSRF still holds
    assert client.post("/console/challenges/x/status", data={"status": "closed"}).status_code == 403


def test_errors_are_pages_never_traces(open_console, monkeypatch):
    from models.store import Store

    client = open_console.test_client()
    r = client.get("/console/no/such/page")
    assert r.status_code == 404 and r.mimetype == "text/html" and "Page not found" in r.get_data(as_text=True)
    monkeypatch.setattr(Store, "count", lambda self, kind: 1 / 0)
    r = client.get("/console/")
    body = r.get_data(as_text=True)
    assert r.status_code == 500 and "went wrong on our side" in body and "ZeroDivisionError" not in body
    assert "Traceback" not in body and re.search(r"reference: [0-9a-f]{12}", body)
    assert client.get("/v1/organisations").mimetype == "application/json"  # the API keeps answering in JSON
