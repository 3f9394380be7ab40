"""The consortia page: pick a challenge or paste a call, set the constraints, and see the proposed consortia.

The form makes the request of POST /v1/consortia (``matcher.consortium``): size, required type groups (each
group is met by one member of any of its types), countries, must-include and exclude. Each proposed consortium
shows its members with their role and why, and a heat map of how each member covers each aspect of the
challenge (aspects x members, shaded by band, the value written in each cell).
"""
from __future__ import annotations

import bisect

from flask import render_template, request

from matcher.consortium import build, parse_request
from models.enums import ChallengeStatus, EntityKind
from service.api import engine
from service.console import bp, forms
from service.console.errors import ENGINE_ERRORS, details_of, field_errors
from service.console.session import needs

GROUPS = 3  # required type groups the form offers
CHOICES = 300  # open challenges listed to pick from; past that, the form asks for the challenge's id
BANDS = (0.2, 0.35, 0.5, 0.65)  # a coverage at or above each bound is one shade darker (heat-0 .. heat-4)
FIELDS = {"challenge_id": "challenge", "text": "text", "size": "size", "countries": "countries",
          "must_include": "must_include", "exclude": "exclude", "alternatives": "alternatives"}


def heat_band(value: float) -> int:
    """The shade (0-4) of a coverage value in the heat map."""
    return bisect.bisect_right(BANDS, value)


def _challenges() -> list[tuple[str, str]] | None:
    """(id, title) of the tenant's open challenges to pick from, by title; None when there are too many to list."""
    docs = engine().store.list(EntityKind.challenges, status=ChallengeStatus.open.value, limit=CHOICES + 1)
    if len(docs) > CHOICES:
        return None
    return sorted(((d["id"], d["title"]) for d in docs), key=lambda c: c[1].lower())


def _request(form: dict, errors: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """The request body the form makes, and where each of its fields sits in the form."""
    size = forms.number(form["size"], "size", errors, default=5, low=2, high=30)
    alternatives = forms.number(form["alternatives"], "alternatives", errors, default=3, low=1, high=5)
    challenge, text = form["challenge"].strip(), form["text"].strip()
    if bool(challenge) == bool(text):
        errors["challenge"] = ("choose a challenge or paste a call text below" if not challenge else
                               "choose a challenge or paste a call text, not both")
    groups = [(f"group{i}", form[f"group{i}"]) for i in range(1, GROUPS + 1) if form[f"group{i}"]]
    body = {"challenge_id": challenge or None, "text": text or None, "size": size, "alternatives": alternatives,
            "required_types": [types for _, types in groups], "countries": forms.words(form["countries"]),
            "must_include": forms.words(form["must_include"]), "exclude": forms.words(form["exclude"])}
    fields = {**FIELDS, **{f"required_types[{i}]": name for i, (name, _) in enumerate(groups)}}
    return {k: v for k, v in body.items() if v is not None}, fields


@bp.route("/consortia", methods=["GET", "POST"])
@needs("match")
def consortia():
    """The constraints form; a POST builds the consortia and shows them under it."""
    f = request.values
    form = {"challenge": f.get("challenge", ""), "text": f.get("text", ""), "size": f.get("size") or "5",
            "alternatives": f.get("alternatives") or "3", "countries": f.get("countries", ""),
            "must_include": f.get("must_include", ""), "exclude": f.get("exclude", ""),
            **{f"group{i}": f.getlist(f"group{i}") for i in range(1, GROUPS + 1)}}
    errors: dict[str, str] = {}
    result = None
    if request.method == "POST":
        body, fields = _request(form, errors)
        if not errors:
            try:
                result = build(engine(), parse_request(body))
            except ENGINE_ERRORS as exc:
                errors = field_errors(details_of(exc), fields)
    return render_template("console/consortia.html", form=form, errors=errors, result=result, groups=GROUPS,
                           challenges=_challenges(), heat_band=heat_band, bands=BANDS), 400 if errors else 200
