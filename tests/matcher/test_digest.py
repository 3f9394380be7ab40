"""E-mail digests end to end: the real model and SQLite store, a real SMTP server (aiosmtpd on a free loopback
port) started here, the Flask app for the links, and headless Chromium for the phone-width rendering."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email
import email.policy
import json
import re
import shutil
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller

from bench.digest_render import CHROMIUM, render_to_png
from matcher import cli, digest
from matcher.engine import Engine
from matcher.tokens import make_unsubscribe_token
from models.enums import EntityKind
from tests.conftest import ORGS

EMAILS = {"voltgrid": "hello@voltgrid.example.org", "aquasense": "info@aquasense.example.org",
          "lumen": "contact@lumen.example.org", "caremind": "care@caremind.example.org"}
OPTED_IN = {"voltgrid", "aquasense", "lumen", "recyclo"}  # recyclo has no contact_email: never mailed
RECIPIENTS = ["aquasense", "lumen", "voltgrid"]  # in id order, as a run goes
PLATFORM = "https://platform.example.org"


def _challenge(id, title, description, **fields):
    return {"id": id, "title": title, "description": description, "owner_id": "ghent-energy", **fields}


CHALLENGES = [
    _challenge("ch-harbour", "Battery storage for harbour shore power",
               "The port needs battery storage and microgrid control to absorb peaks when ships plug in.",
               needs=["battery management systems", "microgrid control"], deadline="2099-01-01",
               preferred_partner_types=["startup"]),
    _challenge("ch-leaks", "Find leaks in the city's water network",
               "Ghent loses a fifth of its drinking water to leaking pipes and wants acoustic leak detection.",
               needs=["acoustic leak detection"], sectors=["water"]),
    _challenge("ch-lights-closed", "Smart street lighting for the old town",
               "Adaptive LED street lighting that dims on empty streets.", status="closed"),
    _challenge("ch-lights-past", "Street lighting that reports its own faults",
               "LED street lights that report faults and dim at night.", deadline="2020-01-01"),
    _challenge("ch-voltgrid-own", "A municipality to pilot our microgrid controller",
               "VoltGrid looks for a city to pilot battery storage controllers in a district microgrid.",
               owner_id="voltgrid"),
]
NEVER_MAILED = {"ch-lights-closed", "ch-lights-past"}


class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and answers from a plan of failures."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_failures: dict[str, list[str]] = {}  # address -> answers to give, in turn, before accepting
        self.data_failures: dict[str, list[str]] = {}
        self.accept_at_most: int | None = None  # then every RCPT gets 421 (the server "shuts down")
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            if self.accept_at_most is not None and len(self.messages) >= self.accept_at_most:
                return "421 4.3.2 Service shutting down"
            plan = self.rcpt_failures.get(address)
            if plan:
                return plan.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            plan = self.data_failures.get(envelope.rcpt_tos[0])
            if plan:
                return plan.pop(0)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"

    def parsed(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in self.messages]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    mailbox.controller = controller
    yield mailbox
    if controller._thread is not None:
        controller.stop()


@pytest.fixture
def mail_settings(settings, smtp):
    return dataclasses.replace(
        settings, smtp_host="127.0.0.1", smtp_port=smtp.controller.port, smtp_security="none", smtp_timeout=5,
        mail_from="Matches <digest@platform.example.org>", platform_url=PLATFORM, public_url="http://localhost",
        secret_key="test-secret", digest_min_score=0.0, digest_items=3, digest_rate=0, digest_retries=2,
        digest_retry_delay=0.01, digest_batch=2)


@pytest.fixture
def mail_engine(mail_settings, encoder):
    engine = Engine(mail_settings, encoder=encoder).open()
    orgs = [{**o, **({"contact_email": EMAILS[o["id"]]} if o["id"] in EMAILS else {}),
             "email_opt_in": o["id"] in OPTED_IN} for o in ORGS]
    engine.upsert_many(EntityKind.organisations, orgs)
    engine.upsert_many(EntityKind.challenges, CHALLENGES)
    return engine


@pytest.fixture
def mail_client(mail_settings, mail_engine):
    from service import create_app

    app = create_app(mail_settings, mail_engine)
    app.config.update(TESTING=True)
    return app.test_client()


def by_recipient(mailbox: Mailbox) -> dict[str, email.message.EmailMessage]:
    out = {}
    for msg in mailbox.parsed():
        org_id = next(k for k, v in EMAILS.items() if v == msg["To"])
        assert org_id not in out, f"{org_id} got two messages"
        out[org_id] = msg
    return out


def test_digests_arrive_complete_and_a_second_run_sends_nothing(mail_engine, mail_client, smtp, caplog):
    caplog.set_level("DEBUG", logger="matcher")  # our loggers (the test server's own log shows addresses)
    caplog.set_level("DEBUG", logger="service")
    report = digest.run(mail_engine)
    assert report.ok and sorted(report.sent) == RECIPIENTS, report.summary()
    assert sorted(report.nothing_new) == []
    received = by_recipient(smtp)
    assert sorted(received) == RECIPIENTS  # not caremind (no opt-in), not recyclo (no address)
    log = {row["organisation_id"]: row for row in mail_engine.store.digest_log()}
    for org_id, msg in received.items():
        row = log[org_id]
        assert row["status"] == "sent" and row["attempts"] == 1 and row["errors"] == [] and row["sent_at"]
        assert msg.get_content_type() == "multipart/alternative" and msg["Message-ID"] == row["message_id"]
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert msg["From"] == "Matches <digest@platform.example.org>" and msg["Auto-Submitted"] == "auto-generated"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = re.fullmatch(r"<(http://localhost/v1/unsubscribe\?token=[\w.\-]+)>", msg["List-Unsubscribe"]).group(1)
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        items = row["matches"]
        assert items and len(items) <= 6
        assert {i["id"] for i in items}.isdisjoint(NEVER_MAILED | {org_id})
        assert not (org_id == "voltgrid" and "ch-voltgrid-own" in {i["id"] for i in items})
        assert msg["Subject"].startswith(f"{len(items)} new match{'es' if len(items) > 1 else ''} for ")
        names = {**{c["id"]: c["title"] for c in CHALLENGES}, **{o["id"]: o["name"] for o in ORGS}}
        assert msg["Subject"].split(": ", 1)[1] in names.values()  # the best match
        for item in items:
            url = f"{PLATFORM}/{item['kind']}/{item['id']}"
            for body in (text, html):
                assert names[item["id"]].replace("'", "&#39;" if body is html else "'") in body
                assert url in body
            assert mail_client.get(f"/v1/{item['kind']}/{item['id']}").status_code == 200  # the link names a stored entity
        assert re.search(r"(Very strong match|Strong match|Good match|Possible match|Weak match) \(0\.\d\d\d?\)", text)
        assert unsubscribe in text and unsubscribe.replace("&", "&amp;") in html
    # The score in words and a one-line reason per item
    assert "It needs what you offer: 'battery management systems', 'microgrid control'" in \
        received["voltgrid"].get_body(("plain",)).get_content()

    # A second run: nothing new, nothing sent
    again = digest.run(mail_engine)
    assert again.sent == [] and sorted(again.nothing_new) == RECIPIENTS and len(smtp.messages) == 3

    # Contact addresses never reach the logs
    for address in EMAILS.values():
        assert address not in caplog.text

    # The footer link unsubscribes, through the real app; the next run leaves that organisation out
    link = urlsplit(re.search(r"http://localhost(/v1/unsubscribe\?token=[\w.\-]+)", received["lumen"].get_body(("plain",)).get_content()).group(1))
    page = mail_client.get(f"{link.path}?{link.query}")
    assert page.status_code == 200 and page.mimetype == "text/html" and "unsubscribed" in page.get_data(as_text=True)
    assert mail_engine.store.get(EntityKind.organisations, "lumen")["email_opt_in"] is False
    assert mail_client.get(f"{link.path}?{link.query}").status_code == 200  # twice: the same answer
    assert "lumen" not in mail_engine.store.digest_recipient_ids()


def test_only_what_is_new_is_sent_next_time(mail_engine, smtp):
    assert digest.run(mail_engine, only="voltgrid").sent == ["voltgrid"]
    first = set(map(json.dumps, mail_engine.store.digest_log("voltgrid")[0]["matches"]))
    mail_engine.create(EntityKind.challenges, _challenge(
        "ch-depot", "Batteries for the tram depot", "The tram depot needs battery storage that balances charging peaks.",
        needs=["battery management systems"]))
    report = digest.run(mail_engine)
    assert sorted(report.sent) == RECIPIENTS
    voltgrid = [r for r in mail_engine.store.digest_log("voltgrid")]
    assert len(voltgrid) == 2 and voltgrid[1]["matches"] == [{"kind": "challenges", "id": "ch-depot"}]
    assert not first & set(map(json.dumps, voltgrid[1]["matches"]))
    # --since: matches stored before the window are not new (a run two days from now, one day back)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert digest.run(mail_engine, since=dt.timedelta(days=1), now=later).sent == []
    # Too weak to mail: nothing at all, and no connection is needed
    strict = dataclasses.replace(mail_engine.settings, digest_min_score=0.99)
    mail_engine.create(EntityKind.challenges, _challenge("ch-x", "Anything", "Something loosely related."))
    smtp.controller.stop()
    report = digest.run(Engine(strict, store=mail_engine.store, encoder=mail_engine.encoder).open())
    assert report.ok and report.sent == [] and report.stopped is None


def test_a_server_failing_mid_batch_loses_and_duplicates_nothing(mail_engine, mail_client, smtp):
    smtp.rcpt_failures[EMAILS["aquasense"]] = ["451 4.3.0 Try again later"]  # once: the retry gets through
    smtp.data_failures[EMAILS["lumen"]] = ["451 4.7.1 Greylisted"] * 10  # every try in this run
    smtp.accept_at_most = 1  # then the server answers 421 to everything
    report = digest.run(mail_engine)
    assert report.sent == ["aquasense"] and sorted(report.pending) == ["lumen", "voltgrid"] and not report.ok
    log = {r["organisation_id"]: r for r in mail_engine.store.digest_log()}
    assert log["aquasense"]["status"] == "sent" and log["aquasense"]["attempts"] == 2
    assert log["aquasense"]["errors"][0]["code"] == 451 and "<recipient>" not in log["aquasense"]["errors"][0]["error"]
    assert log["lumen"]["status"] == "pending" and log["lumen"]["attempts"] == 3 and len(log["lumen"]["errors"]) == 3
    assert log["voltgrid"]["status"] == "pending" and {e["code"] for e in log["voltgrid"]["errors"]} == {421}
    # voltgrid unsubscribes meanwhile: its pending message must not go out
    token = make_unsubscribe_token(mail_engine.settings, "voltgrid")
    assert mail_client.get(f"/v1/unsubscribe?token={token}").status_code == 200

    # The server recovers: the next run sends exactly the pending message, and composes nothing new
    smtp.accept_at_most, smtp.data_failures = None, {}
    report = digest.run(mail_engine)
    assert report.sent == ["lumen"] and report.cancelled == ["voltgrid"] and report.ok
    assert sorted(report.nothing_new) == ["aquasense", "lumen"]
    received = by_recipient(smtp)  # raises on a duplicate
    assert sorted(received) == ["aquasense", "lumen"]
    assert received["lumen"]["Message-ID"] == log["lumen"]["message_id"]
    assert [r["status"] for r in mail_engine.store.digest_log()] == ["sent", "sent", "cancelled"]
    assert digest.run(mail_engine).sent == [] and len(smtp.messages) == 2


def test_a_server_that_is_down_stops_the_run_and_a_deleted_organisation_is_never_mailed(mail_engine, mail_client, smtp):
    port = smtp.controller.port
    smtp.controller.stop()
    report = digest.run(mail_engine)
    assert report.stopped and report.pending == ["aquasense"] and report.sent == []
    assert [(r["organisation_id"], r["status"], r["attempts"]) for r in mail_engine.store.digest_log()] == [("aquasense", "pending", 3)]
    # aquasense is deleted with its pending message, in the same transaction
    assert mail_client.delete("/v1/organisations/aquasense").status_code == 204
    assert mail_engine.store.digest_log("aquasense") == [] and mail_engine.store.pending_digests() == []
    restarted = Controller(smtp, hostname="127.0.0.1", port=port)
    restarted.start()
    try:
        report = digest.run(mail_engine)
    finally:
        restarted.stop()
    assert sorted(report.sent) == ["lumen", "voltgrid"]
    assert sorted(by_recipient(smtp)) == ["lumen", "voltgrid"]
    # A deleted organisation's send log goes with it
    assert mail_client.delete("/v1/organisations/lumen").status_code == 204
    assert mail_engine.store.digest_log("lumen") == [] and len(mail_engine.store.digest_log()) == 1


def test_unsubscribe_refuses_tampered_expired_and_missing_tokens(mail_engine, mail_client, monkeypatch):
    settings = mail_engine.settings
    token = make_unsubscribe_token(settings, "voltgrid")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    foreign = make_unsubscribe_token(dataclasses.replace(settings, secret_key="another"), "voltgrid")
    forged = base64.urlsafe_b64encode(b'{"org":"aquasense"}').rstrip(b"=").decode() + token[token.index("."):]
    for bad in (tampered, foreign, forged, "not-a-token"):
        r = mail_client.get("/v1/unsubscribe", query_string={"token": bad})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_token", bad
        assert r.get_json()["error"]["details"] == [{"field": "token", "problem": "this unsubscribe link is not valid"}]
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = mail_client.get("/v1/unsubscribe", query_string={"token": tampered}, headers={"Accept": browser})
    assert r.status_code == 400 and r.mimetype == "text/html" and "This unsubscribe link is not valid. Nothing was changed" in r.get_data(as_text=True)
    r = mail_client.get("/v1/unsubscribe", query_string={"token": tampered}, headers={"Accept": "*/*"})  # e.g. curl
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_token"
    r = mail_client.get("/v1/unsubscribe")
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["field"] == "token"
    from itsdangerous import TimestampSigner

    with monkeypatch.context() as m:  # a token made 91 days ago (links work for 90)
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 91 * 86400)
        expired = make_unsubscribe_token(settings, "voltgrid")
    r = mail_client.get("/v1/unsubscribe", query_string={"token": expired})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "expired_token"
    assert mail_engine.store.get(EntityKind.organisations, "voltgrid")["email_opt_in"] is True  # nothing changed
    # One-click unsubscribe (RFC 8058): a POST to the same URL
    r = mail_client.post(f"/v1/unsubscribe?token={token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and mail_engine.store.get(EntityKind.organisations, "voltgrid")["email_opt_in"] is False


def test_cli_dry_run_writes_eml_files_and_records_nothing(mail_engine, mail_settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(mail_settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", mail_settings.db_url)
    monkeypatch.setenv("MATCHER_SECRET_KEY", "test-secret")
    monkeypatch.setenv("MATCHER_DIGEST_MIN_SCORE", "0")
    out = tmp_path / "eml"
    assert cli.main(["digest", "--dry-run", str(out)]) == 0
    assert "wrote 3 digest(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{o}.eml" for o in RECIPIENTS]
    msg = email.message_from_bytes((out / "voltgrid.eml").read_bytes(), policy=email.policy.default)
    assert msg["To"] == EMAILS["voltgrid"] and msg.get_body(("html",)) is not None
    assert mail_engine.store.digest_log() == []  # a dry run records nothing
    assert cli.main(["digest", "--dry-run", str(tmp_path / "one"), "--only", "lumen"]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["lumen.eml"]
    assert cli.main(["digest", "--only", "caremind"]) == 2  # not opted in
    assert cli.main(["digest", "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert "caremind" in err and "--since" in err and EMAILS["caremind"] not in err


def test_parse_since():
    assert digest.parse_since("7d") == dt.timedelta(days=7) and digest.parse_since("36h") == dt.timedelta(hours=36)
    for bad in ("", "7", "0d", "d7", "7y"):
        with pytest.raises(ValueError):
            digest.parse_since(bad)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


PHONE = 390


@pytest.mark.slow
def test_digest_renders_readably_at_phone_width_in_chromium(mail_engine, tmp_path):
    """One real digest in headless Chromium at 390 px: a PNG to look at, no horizontal overflow, no tiny text."""
    if not shutil.os.access(CHROMIUM, shutil.os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: make test installs the Debian package chromium where apt-get can")
    # A long title and an unbroken word: what would push a careless layout sideways
    mail_engine.create(EntityKind.challenges, _challenge(
        "ch-long", "Battery storage and microgrid control for the Ghent-Terneuzen-Zelzate cross-border harbour "
                   "industrial cluster (NorthSeaPortBatteryStorageFlexibilityPilot2027)",
        "The cross-border port needs battery storage and microgrid control for shore power.",
        needs=["battery management systems"]))
    found = digest.Composer(mail_engine).compose(mail_engine.store.get(EntityKind.organisations, "voltgrid"))
    assert found is not None and any(i.id == "ch-long" for i in found.items)
    m = render_to_png({"digest-390": found.message.get_body(("html",)).get_content()}, tmp_path)["digest-390"]
    png = tmp_path / "digest-390.png"
    assert m["inner"] == PHONE  # measured at phone width, or the rest means nothing
    assert m["scroll"] <= PHONE and m["wide"] == 0, m  # no horizontal overflow
    assert m["minFont"] >= 13, m  # readable text
    assert m["matches"] == len(found.items)
    width, height = _png_size(png)
    assert width == PHONE and height > 800  # the whole digest, longer than one screen


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login_and_a_refused_login_stops_the_run(mail_engine, smtp):
    """MATCHER_SMTP_USER/PASSWORD log in; a refused login (535) stops the run with its message pending."""
    from aiosmtpd.smtp import AuthResult

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        login = [v.decode() if isinstance(v, bytes) else v for v in (auth_data.login, auth_data.password)]
        logins.append(tuple(login))
        return AuthResult(success=login == ["digest", "s3cret"], handled=False)  # False: answer 535

    port = free_port()  # plain text login is for this loopback test only (aiosmtpd requires TLS otherwise)
    server = Controller(smtp, hostname="127.0.0.1", port=port, authenticator=authenticator, auth_require_tls=False,
                        auth_required=True, auth_exclude_mechanism=["LOGIN"])  # PLAIN: smtplib's LOGIN stalls on aiosmtpd
    server.start()
    try:
        wrong = dataclasses.replace(mail_engine.settings, smtp_port=port, smtp_user="digest", smtp_password="guess")
        report = digest.run(Engine(wrong, store=mail_engine.store, encoder=mail_engine.encoder).open())
        assert report.stopped and "535" in report.stopped and report.sent == [] and smtp.messages == []
        assert [r["status"] for r in mail_engine.store.digest_log()] == ["pending"]
        right = dataclasses.replace(wrong, smtp_password="s3cret")
        report = digest.run(Engine(right, store=mail_engine.store, encoder=mail_engine.encoder).open())
    finally:
        server.stop()
    assert sorted(report.sent) == RECIPIENTS and sorted(by_recipient(smtp)) == RECIPIENTS
    assert logins[0] == ("digest", "guess") and logins[-1] == ("digest", "s3cret")


def test_generated_secret_key_is_kept_private_and_stable(settings):
    from matcher.tokens import read_unsubscribe_token, secret_key

    assert settings.secret_key == ""
    key = secret_key(settings)
    path = settings.data_dir / "secret_key"
    assert len(key) >= 48 and path.stat().st_mode & 0o777 == 0o600 and secret_key(settings) == key
    assert read_unsubscribe_token(settings, make_unsubscribe_token(settings, "voltgrid")) == (settings.default_tenant, "voltgrid")
    assert read_unsubscribe_token(settings, make_unsubscribe_token(settings, "voltgrid", "other")) == ("other", "voltgrid")


def test_each_tenant_gets_digests_of_its_own_data_and_its_own_unsubscribe(mail_engine, mail_client, smtp):
    """Tenant 'other' holds its own 'voltgrid' (same id, another address) and a challenge of its own: its run
    mails only its organisation, about its challenge; its unsubscribe link turns off its voltgrid, not the
    default tenant's."""
    other = mail_engine.for_tenant("other")
    other.upsert_many(EntityKind.organisations, [{**ORGS[0], "name": "VoltGrid Other", "contact_email": "ops@other.example.org",
                                                 "email_opt_in": True},
                                                {"id": "campus", "name": "Campus Estates", "type": "university",
                                                 "description": "The university estates office runs the campus microgrid."}])
    other.upsert_many(EntityKind.challenges, [_challenge("ch-other", "Microgrid batteries for a campus",
                                                          "A campus wants battery storage and microgrid control.",
                                                          deadline="2099-01-01", owner_id="campus")])
    report = digest.run(other)
    assert report.sent == ["voltgrid"] and len(smtp.messages) == 1
    msg = smtp.parsed()[0]
    body = msg.get_body(("plain",)).get_content()
    assert msg["To"] == "ops@other.example.org" and "Microgrid batteries for a campus" in body
    assert not any(c["title"] in body for c in CHALLENGES)  # nothing of the default tenant's
    assert [r["organisation_id"] for r in other.store.digest_log()] == ["voltgrid"] and mail_engine.store.digest_log() == []
    token = re.search(r"token=([\w.-]+)", msg["List-Unsubscribe"]).group(1)
    assert mail_client.post(f"/v1/unsubscribe?token={token}").status_code == 200
    assert other.store.get(EntityKind.organisations, "voltgrid")["email_opt_in"] is False
    assert mail_engine.store.get(EntityKind.organisations, "voltgrid")["email_opt_in"] is True
