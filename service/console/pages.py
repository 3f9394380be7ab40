"""The console's core pages: home, the organisation and challenge lists and pages with their best matches,
the match form (with CSV and XLSX export) and the digest preview.

Every page reads the tenant's engine (``service.api.engine()``, as the API does) and answers without running the
model, except where it matches: a profile page shows at once and loads its matches in a second request
(console.js shows progress meanwhile; without JavaScript a link opens them), the match form and the digest
preview match in their own request.
"""
from __future__ import annotations

import datetime as dt

from flask import current_app, flash, g, redirect, render_template, request, url_for

from matcher import explain
from matcher.digest import Composer
from models.enums import ChallengeStatus, EntityKind, OrgType
from models.jobs import JobStore
from models.schemas import MAX_K, InvalidInput, MatchRequest, parse
from service.api import engine, scopes
from service.api.entities import decode_cursor, encode_cursor, public
from service.auth import can_see_contact
from service.console import bp, exports, forms
from service.console.errors import ENGINE_ERRORS, ConsoleError, details_of, field_errors, is_fragment
from service.console.session import can, needs
from service.errors import ApiError

PAGE = 25  # rows of a list page
MATCHES = 10  # matches shown on a profile page
QUERY = {EntityKind.organisations: "organisation_id", EntityKind.challenges: "challenge_id"}
ORG, CHALLENGE = EntityKind.organisations, EntityKind.challenges


# --- helpers for the templates ---------------------------------------------------------------------


def _link(endpoint: str, **values) -> str | None:
    """The URL of a console endpoint, or None while no page module provides it."""
    return url_for(endpoint, **values) if endpoint in current_app.view_functions else None


def _reasons(summary: str | None, score: float) -> str:
    """An explanation's summary without its leading score in words (the page shows that beside the name)."""
    head = explain.score_words(score).capitalize()
    summary = summary or ""
    return first_upper(summary.partition(": ")[2] if summary.startswith(head) else summary)


@bp.app_template_filter("score_words")
def _score_words(score: float) -> str:
    return explain.score_words(score)


@bp.app_template_filter("score_number")
def _score_number(score: float) -> str:
    return explain.score_number(score)


@bp.app_template_filter("first_upper")
def first_upper(text: str | None) -> str:
    """The text with its first letter upper-cased (and the rest as it is: "SME", not "Sme")."""
    return (text or "")[:1].upper() + (text or "")[1:]


@bp.app_template_filter("type_label")
def type_label(value: str | None) -> str:
    """An organisation type as a person reads it: "SME", "Research institute"."""
    return first_upper(explain.type_label(value)) if value else ""


@bp.context_processor
def _helpers() -> dict:
    from service.console import NAV

    here = request.endpoint or ""
    nav = [(url_for(e), label, here.startswith(e.rstrip("s")))  # console.organisation is under Organisations
           for e, label, scope in NAV if e in current_app.view_functions and can(scope)]
    return {"nav": nav, "link": _link, "reasons": _reasons, "max_k": MAX_K, "tenant": g.get("tenant"),
            "key_id": g.get("key_id"), "type_options": [(t.value, type_label(t.value)) for t in OrgType]}


# --- home ------------------------------------------------------------------------------------------


@bp.get("/")
@needs("read")
def home():
    store = engine().store
    return render_template(
        "console/home.html",
        counts={kind.value: store.count(kind) for kind in (ORG, CHALLENGE)},
        newest={kind.value: store.newest(kind) for kind in (ORG, CHALLENGE)},
        closing=store.closing_soon(dt.date.today()),
        jobs=JobStore(store).recent() if can("admin") else None,  # jobs are the admin scope's, as in the API
    )


# --- lists and profile pages -----------------------------------------------------------------------


def _list(kind: EntityKind):
    """A page of organisations or challenges: search text and filters, paginated with the API's cursors."""
    args, errors = request.args, {}
    text = args.get("q", "").strip()
    if len(text) > forms.MAX_SEARCH:
        errors["q"], text = f"at most {forms.MAX_SEARCH} characters", ""
    params = {"country": forms.country(args.get("country"), "country", errors)}
    if kind is ORG:
        params["type"] = forms.choice(args.get("type"), OrgType, "type", errors)
    else:
        params["status"] = forms.choice(args.get("status"), ChallengeStatus, "status", errors)
    if args.get("cursor"):
        try:
            params["after_id"] = decode_cursor(args["cursor"])
        except ApiError as exc:
            errors.update(field_errors(details_of(exc), {}))
    params = {k: v for k, v in params.items() if v is not None}
    chosen = {k: v for k, v in args.items() if k != "cursor" and v}  # the search and filters, kept across pages
    items, next_url = [], None
    if not errors:
        store = engine().store
        items = store.list(kind, limit=PAGE + 1, text=text or None, **params)
        if len(items) > PAGE:
            items = items[:PAGE]
            next_url = url_for(request.endpoint, **chosen, cursor=encode_cursor(items[-1]["id"]))
    first_url = url_for(request.endpoint, **chosen) if "after_id" in params else None
    return render_template("console/list.html", kind=kind.value, items=items, errors=errors, args=args,
                           next_url=next_url, first_url=first_url, filtered=bool(chosen)), 400 if errors else 200


def _profile(kind: EntityKind, entity_id: str):
    doc = public(kind, engine().get(kind, entity_id))
    owner = None
    if kind is CHALLENGE and doc.get("owner_id"):
        owner = engine().store.get(ORG, doc["owner_id"])
    targets = [(ORG, "Partners that fit" if kind is ORG else "Organisations that fit"),
               (CHALLENGE, "Open challenges that fit" if kind is ORG else "Similar open challenges")]
    return render_template(f"console/{kind.value[:-1]}.html", doc=doc, owner=owner, kind=kind.value, targets=targets,
                           show_contact=can_see_contact(scopes()))


def _matches(kind: EntityKind, entity_id: str, target: str):
    """The best matches of a stored entity (a part of its page, or a page of its own without JavaScript)."""
    if target not in (ORG.value, CHALLENGE.value):
        raise ConsoleError(404, "Page not found", "Matches are of organisations or challenges.")
    doc = engine().get(kind, entity_id)
    request_ = MatchRequest.model_validate({"query": {QUERY[kind]: entity_id}, "target": target, "k": MATCHES})
    result = engine().match(request_)
    return render_template("console/matches.html", doc=doc, kind=kind.value, target=target, result=result,
                           fragment=is_fragment())


def _add_entity_pages(kind: EntityKind) -> None:
    one = kind.value[:-1]
    bp.add_url_rule(f"/{kind.value}", kind.value, needs("read")(lambda: _list(kind)))
    bp.add_url_rule(f"/{kind.value}/<entity_id>", one, needs("read")(lambda entity_id: _profile(kind, entity_id)))
    bp.add_url_rule(f"/{kind.value}/<entity_id>/matches/<target>", f"{one}_matches",
                    needs("match")(lambda entity_id, target: _matches(kind, entity_id, target)))


_add_entity_pages(ORG)
_add_entity_pages(CHALLENGE)


# --- write actions -------------------------------------------------------------------------------


@bp.post("/organisations/<entity_id>/digests")
@needs("write")
def organisation_digests(entity_id):
    """Turn an organisation's e-mail digests on or off."""
    on = request.form.get("email_opt_in") == "on"
    doc = engine().patch(ORG, entity_id, {"email_opt_in": on})
    flash(f"E-mail digests are now {'on' if on else 'off'} for {doc['name']}.", "info")
    return redirect(url_for("console.organisation", entity_id=entity_id))


@bp.post("/challenges/<entity_id>/status")
@needs("write")
def challenge_status(entity_id):
    """Close a challenge, or open it again."""
    status = forms.choice(request.form.get("status"), ChallengeStatus, "status", errors := {})
    if status is None:
        raise ConsoleError(400, "This cannot be done", errors.get("status", "choose open or closed"),
                           [{"field": "status", "problem": errors.get("status", "missing")}])
    doc = engine().patch(CHALLENGE, entity_id, {"status": status})
    flash(f"“{doc['title']}” is now {status}.", "info")
    return redirect(url_for("console.challenge", entity_id=entity_id))


# --- match -----------------------------------------------------------------------------------------

# Where the match form's inputs sit in a MatchRequest (the engine names the field at fault by its path).
MATCH_FIELDS = {"query": "text", "query.text": "text", "target": "target", "k": "k", "filters.types": "types",
                "filters.countries": "countries", "filters.status": "status"}
EXPORT_COLUMNS = ["rank", "id", "name", "type", "country", "status", "score", "score_in_words", "why",
                  "closest_sentence", "related_projects", "shared_terms", "type_fit"]


def _match_form() -> tuple[dict, MatchRequest | None, dict[str, str]]:
    """The form's values, the request they make (None when one is wrong) and the problems per input."""
    f = request.form
    form = {"text": f.get("text", ""), "target": f.get("target") or ORG.value, "types": f.getlist("types"),
            "countries": f.get("countries", ""), "status": f.get("status") or "open", "k": f.get("k") or "10"}
    errors: dict[str, str] = {}
    k = forms.number(form["k"], "k", errors, default=10, low=1, high=MAX_K)
    body = {"query": {"text": form["text"]}, "target": form["target"], "k": k, "explain": True,
            "filters": {"types": form["types"] if form["target"] == ORG.value else [],
                        "countries": forms.words(form["countries"]),
                        **({"status": form["status"]} if form["target"] == CHALLENGE.value else {})}}
    try:
        match_request = parse(MatchRequest, body)
    except InvalidInput as exc:  # the same field paths the API reports
        errors.update(field_errors(exc.details, MATCH_FIELDS))
        match_request = None
    return form, (None if errors else match_request), errors


def _export(result: dict, fmt: str):
    rows = []
    for rank, m in enumerate(result["matches"], start=1):
        e = m.get("explanation") or {}
        projects = "; ".join(f"{p['title']} ({p['year']})" if p.get("year") else p["title"] for p in e.get("related_projects", []))
        rows.append([rank, m["id"], m["name"], m.get("type") or "", m.get("country") or "", m.get("status") or "",
                     m["score"], explain.score_words(m["score"]), _reasons(e.get("summary"), m["score"]),
                     e.get("closest_sentence") or "", projects, ", ".join(e.get("shared_terms", [])), e.get("type_fit") or ""])
    return exports.download(EXPORT_COLUMNS, rows, fmt, "matches")


@bp.route("/match", methods=["GET", "POST"])
@needs("match")
def match():
    """Paste a need or a call text, choose filters, and see the ranked, explained list (or export it)."""
    if request.method == "GET":
        form = {"text": "", "target": ORG.value, "types": [], "countries": "", "status": "open", "k": "10"}
        return render_template("console/match.html", form=form, errors={}, result=None)
    form, match_request, errors = _match_form()
    result = None
    if match_request is not None:
        try:
            result = engine().match(match_request)
        except ENGINE_ERRORS as exc:
            errors = field_errors(details_of(exc), MATCH_FIELDS)
    export = request.form.get("export")
    if result is not None and export in exports.FORMATS:
        return _export(result, export)
    return render_template("console/match.html", form=form, errors=errors, result=result), 400 if errors else 200


# --- digest preview --------------------------------------------------------------------------------


@bp.get("/digests/<entity_id>")
@needs("match")
def digest(entity_id):
    """The digest this organisation would receive now, rendered as the e-mail (nothing is sent or recorded)."""
    eng = engine()
    org = eng.get(ORG, entity_id)
    composer = Composer(eng)
    items = composer.pick(org)
    message = composer.render(org, items) if items and org.get("contact_email") else None
    _, last_sent = eng.store.digest_history(entity_id)
    g.inline_styles = message is not None  # the e-mail's own inline styles, in its sandboxed frame
    return render_template(
        "console/digest.html", org=public(ORG, org), items=items, last_sent=last_sent,
        message=message, html=message.get_body(("html",)).get_content() if message else None,
        text=message.get_body(("plain",)).get_content() if message else None,
        show_contact=can_see_contact(scopes()))

