"""E-mail digests: compose each opted-in organisation's new matches and send them over SMTP.

For every organisation with ``email_opt_in`` and a ``contact_email``, the engine ranks open challenges and
partner organisations for it (``Engine.match_many``, the same ranking and explanations as the API). A match
goes into a digest when it was never mailed to that organisation, was added since its last digest (or within
``--since``; an edit does not make an entity new, or an unsubscribe would), scores at least
MATCHER_DIGEST_MIN_SCORE, and, for a challenge, is open, has no past deadline and is not the organisation's own.
Nothing new: no message.

Every composed message is written to the store as "pending" before it is handed to the SMTP server, and
marked "sent" once the server has accepted it; every failed attempt is recorded. A run that stops half-way
(the server went away, the process was killed) leaves its messages pending, and the next run sends exactly
those messages (same Message-ID) before composing anything new: nothing is lost or mailed twice (except in the
unavoidable case of SMTP itself: a connection lost after the server accepted a message but before its answer
arrived). Contact addresses never appear in the logs: organisations are named by id.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from matcher import explain
from matcher.tokens import make_unsubscribe_token
from models.enums import EntityKind
from models.schemas import MAX_K, MatchRequest

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
_MAX_EXCLUDE = 10_000  # MatchFilters.exclude_ids' limit
# SMTP line endings; headers are not folded into encoded words (List-Unsubscribe must stay a plain <URL>).
POLICY = SMTP_POLICY.clone(max_line_length=998)
_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> dt.timedelta:
    """'7d', '36h', '90m', '2w' as a timedelta."""
    found = _SINCE.match(text or "")
    if not found or int(found.group(1)) == 0:
        raise ValueError(f"'{text}' is not a duration: use a number and m, h, d or w, e.g. 7d")
    return dt.timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


# --- composing ------------------------------------------------------------------------------------


@dataclass
class Item:
    """One match in a digest."""

    kind: str  # "challenges" | "organisations"
    id: str
    title: str
    who: str  # who posted it / what kind of organisation, and where
    score: float
    score_words: str  # "Strong match (0.25)": ``explain.score_phrase``, the wording of the API and the console
    reason: str
    url: str
    deadline: str | None = None


@dataclass
class Digest:
    organisation_id: str
    items: list[Item]
    message: EmailMessage

    @property
    def item_keys(self) -> list[dict]:
        return [{"kind": i.kind, "id": i.id} for i in self.items]


def _place(doc: dict) -> str:
    return ", ".join(p for p in (doc.get("city"), doc.get("country")) if p)


def _quoted(phrases: list[str], limit: int = 2) -> str:
    return ", ".join(f"'{p}'" for p in phrases[:limit])


def reason(kind: str, explanation: dict | None) -> str:
    """One line on why this match, from the explanation's signals (the strongest first)."""
    e = explanation or {}
    parts = []
    if e.get("offers_for_needs"):
        parts.append(("It needs what you offer: " if kind == "challenges" else "Offers what you need: ")
                     + _quoted(e["offers_for_needs"]))
    if e.get("shared_sectors"):
        parts.append("works in your sector" + ("s " if len(e["shared_sectors"]) > 1 else " ") + ", ".join(e["shared_sectors"][:3]))
    if not parts and e.get("shared_terms"):
        parts.append("you both mention " + ", ".join(e["shared_terms"][:4]))
    if kind == "challenges" and e.get("type_fit") and "prefers" in e["type_fit"] and not e["type_fit"].startswith("the challenge"):
        parts.append("it prefers partners like you")
    if not parts and e.get("closest_sentence"):
        parts.append(f"\u201c{e['closest_sentence']}\u201d")
    if not parts:
        return "Its profile is close to yours."
    line = "; ".join(parts)
    return line[0].upper() + line[1:] + ("" if line.endswith(("\u201d", ".")) else ".")


def _deadline_words(deadline: str | None) -> str | None:
    if not deadline:
        return None
    day = dt.date.fromisoformat(deadline)
    return f"{day.day} {day:%B %Y}"


class Composer:
    """Picks an organisation's new matches and renders them as a message. One per run: it loads the
    challenges' owners, deadlines and dates once."""

    def __init__(self, engine, *, since: dt.timedelta | None = None, now: dt.datetime | None = None):
        self.engine = engine
        self.settings = engine.settings
        self.now = now or dt.datetime.now(dt.UTC)
        self.since = since
        self.challenges = {c["id"]: c for c in engine.store.list(EntityKind.challenges, limit=10**9)}
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def _cutoff(self, last_sent: dt.datetime | None) -> dt.datetime | None:
        bounds = [b for b in (last_sent, self.now - self.since if self.since else None) if b is not None]
        return max(bounds) if bounds else None

    def pick(self, org: dict) -> list[Item]:
        """The best new matches for an organisation: up to MATCHER_DIGEST_ITEMS challenges and as many partners."""
        mailed, last_sent = self.engine.store.digest_history(org["id"])
        cutoff = self._cutoff(last_sent)
        today = self.now.date()
        past_or_own = [
            cid for cid, c in self.challenges.items()
            if c.get("owner_id") == org["id"] or (c.get("deadline") and dt.date.fromisoformat(c["deadline"]) < today)
        ]
        limit = self.settings.digest_items
        k = limit if cutoff is None else MAX_K  # with a cutoff, matches are filtered after ranking
        requests = []
        for kind in (EntityKind.challenges, EntityKind.organisations):
            exclude = [i for (mk, i) in mailed if mk == kind.value]
            if kind is EntityKind.challenges:
                exclude += past_or_own
            if len(exclude) > _MAX_EXCLUDE:  # the rest are dropped after ranking
                exclude, k = exclude[-_MAX_EXCLUDE:], MAX_K
            requests.append(MatchRequest.model_validate({
                "query": {"organisation_id": org["id"]}, "target": kind.value,
                "k": k, "filters": {"exclude_ids": exclude}, "explain": True}))  # challenges: open ones only
        items: list[Item] = []
        for request, result in zip(requests, self.engine.match_many(requests)):
            kind = request.target  # a str: the schemas keep enum values
            matches = [m for m in result["matches"] if m["score"] >= self.settings.digest_min_score and (kind, m["id"]) not in mailed]
            docs = self.engine.store.get_many(EntityKind(kind), [m["id"] for m in matches])
            chosen = []
            for m in matches:
                doc = docs.get(m["id"])
                if doc is None or (cutoff is not None and dt.datetime.fromisoformat(doc["created_at"]) <= cutoff):
                    continue
                if kind == EntityKind.challenges.value and (doc.get("status") != "open" or m["id"] in past_or_own):
                    continue
                chosen.append(self._item(kind, m, doc))
                if len(chosen) == limit:
                    break
            items += chosen
        return sorted(items, key=lambda i: -i.score)

    def _item(self, kind: str, match: dict, doc: dict) -> Item:
        base = self.settings.platform_url
        if kind == EntityKind.challenges.value:
            owner = self.engine.store.get(EntityKind.organisations, doc["owner_id"]) if doc.get("owner_id") else None
            who = ", ".join(p for p in ((owner or {}).get("name"), _place(doc)) if p) or "Open challenge"
            title = doc["title"]
        else:
            label = explain.type_label(doc["type"])
            who = ", ".join(p for p in (label[:1].upper() + label[1:], _place(doc)) if p)
            title = doc["name"]
        return Item(kind=kind, id=doc["id"], title=title, who=who, score=match["score"],
                    score_words=explain.score_phrase(match["score"]),
                    reason=reason(kind, match.get("explanation")),
                    url=f"{base}/{kind}/{quote(doc['id'], safe='')}",
                    deadline=_deadline_words(doc.get("deadline")) if kind == EntityKind.challenges.value else None)

    def render(self, org: dict, items: list[Item]) -> EmailMessage:
        """The multipart (plain text + HTML) message for these items."""
        s = self.settings
        unsubscribe = f"{s.public_url}/v1/unsubscribe?token={make_unsubscribe_token(s, org['id'], self.engine.tenant)}"
        best = items[0]
        count = f"{len(items)} new match{'es' if len(items) != 1 else ''}"
        subject = f"{count} for {org['name']}: {best.title}"
        context = {
            "org": org, "items": items, "subject": subject, "count": count, "unsubscribe_url": unsubscribe,
            "challenges": [i for i in items if i.kind == "challenges"],
            "partners": [i for i in items if i.kind == "organisations"],
            "platform_url": s.platform_url,
        }
        msg = EmailMessage(policy=POLICY)
        msg["Subject"] = subject
        msg["From"] = s.mail_from
        msg["To"] = org["contact_email"]
        msg["Date"] = format_datetime(self.now)
        domain = parseaddr(s.mail_from)[1].rpartition("@")[2] or "localhost"
        msg["Message-ID"] = make_msgid("digest", domain=domain)
        msg["List-Unsubscribe"] = f"<{unsubscribe}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(self.env.get_template("digest.txt").render(context))
        msg.add_alternative(self.env.get_template("digest.html").render(context), subtype="html")
        return msg

    def compose(self, org: dict) -> Digest | None:
        items = self.pick(org)
        return Digest(org["id"], items, self.render(org, items)) if items else None


# --- sending --------------------------------------------------------------------------------------


class SmtpUnavailable(Exception):
    """No connection to the SMTP server could be made (or kept): the run stops, its messages stay pending."""


class TemporaryFailure(Exception):
    """The server answered 4xx to a message on every try."""


class PermanentFailure(Exception):
    """The server refused a message with 5xx."""


def scrub(text: str, address: str) -> str:
    """An SMTP answer without the recipient's address (they often quote it)."""
    return re.sub(re.escape(address), "<recipient>", text, flags=re.IGNORECASE) if address else text


class SmtpSender:
    """smtplib with STARTTLS/SSL and login from the settings, MATCHER_DIGEST_BATCH messages per connection,
    at most MATCHER_DIGEST_RATE messages per second, and retries of temporary failures with back-off."""

    def __init__(self, settings, sleep=time.sleep, clock=time.monotonic):
        self.settings = settings
        self.sleep, self.clock = sleep, clock
        self.conn: smtplib.SMTP | None = None
        self.on_connection = 0
        self.last_send: float | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.smtp_security not in ("starttls", "ssl", "none"):
            raise ValueError(f"MATCHER_SMTP_SECURITY must be starttls, ssl or none, not '{s.smtp_security}'")
        context = ssl.create_default_context()
        if s.smtp_security == "ssl":
            conn = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context)
        else:
            conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_security == "starttls":
                conn.starttls(context=context)
        if s.smtp_user:
            conn.login(s.smtp_user, s.smtp_password)
        return conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (smtplib.SMTPException, OSError):
                self.conn.close()
        self.conn, self.on_connection = None, 0

    def _throttle(self) -> None:
        if self.settings.digest_rate > 0 and self.last_send is not None:
            wait = self.last_send + 1.0 / self.settings.digest_rate - self.clock()
            if wait > 0:
                self.sleep(wait)
        self.last_send = self.clock()

    def send(self, sender: str, recipient: str, message: bytes, on_error) -> None:
        """Hand one message to the server. ``on_error({"code", "error"})`` is called for each failed attempt.
        Raises PermanentFailure (5xx), TemporaryFailure (4xx on every try) or SmtpUnavailable."""
        tries = 1 + max(0, self.settings.digest_retries)
        for attempt in range(1, tries + 1):
            self._throttle()
            connection_lost = False
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self.conn.sendmail(sender, [recipient], message)
                self.on_connection += 1
                if self.on_connection >= max(1, self.settings.digest_batch):
                    self.close()
                return
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = exc.recipients.get(recipient, (None, b""))
            except smtplib.SMTPResponseException as exc:  # sender refused, data refused, connect or auth refused
                code, text = exc.smtp_code, exc.smtp_error
                connection_lost = isinstance(exc, (smtplib.SMTPConnectError, smtplib.SMTPAuthenticationError))
            except (smtplib.SMTPServerDisconnected, smtplib.SMTPNotSupportedError, OSError) as exc:
                code, text, connection_lost = None, str(exc) or type(exc).__name__, True
            if self.conn is not None:  # after any failure, start the next try on a fresh connection
                self.conn.close()
                self.conn, self.on_connection = None, 0
            text = scrub(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text), recipient)
            on_error({"code": code, "error": text, "attempt": attempt})
            if code is not None and 500 <= code < 600:
                if connection_lost:  # e.g. login refused: no message can be sent
                    raise SmtpUnavailable(f"{code} {text}")
                raise PermanentFailure(f"{code} {text}")
            if attempt < tries:
                self.sleep(self.settings.digest_retry_delay * 2 ** (attempt - 1))
        if connection_lost:
            raise SmtpUnavailable(f"{self.settings.smtp_host}:{self.settings.smtp_port}: {text}")
        raise TemporaryFailure(f"{code} {text}")


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class RunReport:
    sent: list[str] = field(default_factory=list)  # organisation ids
    failed: list[str] = field(default_factory=list)  # refused for good (5xx)
    pending: list[str] = field(default_factory=list)  # temporary failures: sent by the next run
    cancelled: list[str] = field(default_factory=list)  # pending, but opted out or the address changed
    nothing_new: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # --dry-run files
    stopped: str | None = None  # why the run stopped early (the SMTP server could not be reached)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.pending or self.stopped)

    def summary(self) -> str:
        if self.written:
            return f"wrote {len(self.written)} digest(s); {len(self.nothing_new)} organisation(s) with nothing new"
        parts = [f"{len(self.sent)} digest(s) sent", f"{len(self.nothing_new)} with nothing new"]
        if self.failed:
            parts.append(f"{len(self.failed)} refused by the server")
        if self.pending:
            parts.append(f"{len(self.pending)} left pending for the next run")
        if self.cancelled:
            parts.append(f"{len(self.cancelled)} pending ones cancelled (opted out or address changed)")
        return "; ".join(parts) + (f". Stopped: {self.stopped}" if self.stopped else "")


def _recipients(engine, only: str | None) -> list[str]:
    if only is None:
        return engine.store.digest_recipient_ids()
    if engine.store.digest_recipient(only) is None:
        raise LookupError(f"organisation '{only}' is not stored, has not opted in to e-mail, or has no contact_email")
    return [only]


def run(engine, *, since: dt.timedelta | None = None, dry_run: str | Path | None = None, only: str | None = None,
        sender: SmtpSender | None = None, now: dt.datetime | None = None) -> RunReport:
    """Send (or, with ``dry_run``, write as .eml files) every opted-in organisation's digest of new matches."""
    report = RunReport()
    recipients = _recipients(engine, only)
    composer = Composer(engine, since=since, now=now)
    if dry_run is not None:
        out = Path(dry_run)
        out.mkdir(parents=True, exist_ok=True)
        for org_id in recipients:
            org = engine.store.digest_recipient(org_id)
            digest = composer.compose(org) if org else None
            if digest is None:
                report.nothing_new.append(org_id)
                continue
            path = out / f"{org_id}.eml"
            path.write_bytes(digest.message.as_bytes(policy=POLICY))
            report.written.append(path)
            log.info("digest for %s: %d match(es) written to %s", org_id, len(digest.items), path)
        return report

    sender = sender or SmtpSender(engine.settings)
    mail_from = parseaddr(engine.settings.mail_from)[1]
    try:
        # 1. What an interrupted run left pending goes first, unchanged.
        for row in engine.store.pending_digests(only):
            to = parseaddr(BytesHeaderParser().parsebytes(row["message"]).get("To", ""))[1]
            org = engine.store.digest_recipient(row["organisation_id"])
            if org is None or org["contact_email"].lower() != to.lower():
                engine.store.record_digest_attempt(row["num"], "cancelled")
                report.cancelled.append(row["organisation_id"])
                continue
            _deliver(engine, sender, mail_from, to, row["num"], row["organisation_id"], row["message"], len(row["matches"]), report)
        # 2. Then each recipient's new matches.
        for org_id in recipients:
            if org_id in report.pending:  # still failing temporarily: its pending message waits for the next run
                continue
            org = engine.store.digest_recipient(org_id)  # read again: it may have opted out meanwhile
            digest = composer.compose(org) if org else None
            if digest is None:
                report.nothing_new.append(org_id)
                continue
            message = digest.message.as_bytes(policy=POLICY)
            num = engine.store.add_digest(org_id, digest.message["Message-ID"], digest.item_keys, message)
            if num is None:  # deleted meanwhile
                continue
            _deliver(engine, sender, mail_from, org["contact_email"], num, org_id, message, len(digest.items), report)
    except SmtpUnavailable as exc:
        report.stopped = f"the SMTP server could not be reached ({exc}); pending messages are sent by the next run"
        log.error("digest run stopped: %s", report.stopped)
    finally:
        sender.close()
    return report


def _deliver(engine, sender: SmtpSender, mail_from: str, to: str, num: int, org_id: str, message: bytes,
             n_items: int, report: RunReport) -> None:
    """Send one stored message and record the outcome (a SmtpUnavailable leaves it pending and propagates)."""
    def on_error(error: dict) -> None:
        log.warning("digest for %s: attempt %d failed: %s %s", org_id, error["attempt"], error["code"] or "", error["error"])
        engine.store.record_digest_attempt(num, "pending", {k: error[k] for k in ("code", "error")})

    try:
        sender.send(mail_from, to, message, on_error)
    except PermanentFailure:
        engine.store.record_digest_attempt(num, "failed")
        report.failed.append(org_id)
        return
    except TemporaryFailure:
        report.pending.append(org_id)
        return
    except SmtpUnavailable:
        report.pending.append(org_id)
        raise
    engine.store.record_digest_attempt(num, "sent")
    report.sent.append(org_id)
    log.info("digest for %s: %d match(es) sent", org_id, n_items)
