"""Typed schemas of the domain: what an Organisation, a Challenge and a Match are.

Input models (``OrganisationIn``, ``ChallengeIn``) validate what a caller sends; the stored models add
server-set fields. Limits are enforced, never applied by silent truncation.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from models.countries import normalise_country
from models.enums import ChallengeStatus, EntityKind, OrgType, PartnershipForm
from models.errors import InvalidInput

# Limits. Over-limit input is rejected with a message naming the field.
MAX_DESCRIPTION = 50_000  # real Horizon Europe call texts reach 23,000 characters
MAX_NAME = 300
MAX_PHRASE = 200
MAX_LIST = 50
MAX_PAST_PROJECTS = 2_000  # real research centres have 500+ EU projects
MAX_PARTNER_IDS = 1_000  # real consortia reach 150+ partners

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)

EntityId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME)]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_DESCRIPTION)
]
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PHRASE)]
Place = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Country = Annotated[str, AfterValidator(normalise_country)]


def _check_email(value: str) -> str:
    if len(value) > 320 or not _EMAIL.match(value):
        raise ValueError("not a valid e-mail address")
    return value


def _check_url(value: str) -> str:
    if len(value) > 2000 or not _URL.match(value):
        raise ValueError("not an http(s) URL")
    return value


LAX = "lax"  # the validation context's flag for a row of a file (see ``parse``)


def _lax(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(LAX))


def _whole_number(value, info: ValidationInfo):
    # A CSV cell "12" reads as 12 (lax); a JSON body must send a number; true is never a count or a year.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    if not isinstance(value, int) and not _lax(info):
        raise ValueError("must be a whole number" + (", not text" if isinstance(value, str) else ""))
    return value


def _flag(value, info: ValidationInfo):
    # A CSV cell "yes" reads as true (lax); a JSON body must send true or false.
    if not isinstance(value, bool) and not (isinstance(value, str) and _lax(info)):
        raise ValueError("must be true or false" + (", not text" if isinstance(value, str) else ""))
    return value


def _no_number(expected: str) -> BeforeValidator:
    # pydantic would read a number as seconds since 1970 (0 is 1970-01-01); text ("2026-01-31") reads as a date.
    def check(value):
        if isinstance(value, (int, float)):
            raise ValueError(f"must be {expected}, not a number")
        return value

    return BeforeValidator(check)


Flag = Annotated[bool, BeforeValidator(_flag)]
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


Email = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_check_email)]
Url = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_check_url)]
PhraseList = Annotated[list[Phrase], Field(max_length=MAX_LIST)]


def field_path(loc: tuple, prefix: str = "") -> str:
    """A pydantic error location as a dotted path, e.g. items[3].past_projects[0].year."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "body"


def problems(error: ValidationError, prefix: str = "") -> list[dict]:
    """A pydantic ValidationError as {"field", "problem"} details."""
    out = []
    for item in error.errors(include_url=False, include_input=False):
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = item["msg"].removeprefix("Value error, ")
        out.append({"field": field_path(loc, prefix), "problem": message})
    return out


Model = TypeVar("Model", bound=BaseModel)


def parse(schema: type[Model], body: Any, prefix: str = "", *, strict: bool = True) -> Model:
    """``body`` validated as ``schema``, or InvalidInput naming each field at fault (under ``prefix``).

    ``strict`` (JSON bodies): each value must have its JSON type: true and false are the only booleans and whole
    numbers the only counts ("2023" is no year, "yes" no flag); dates, times and enumerations are their usual
    strings. Lax (``strict=False``, for the rows of a file: CSV and XLSX cells are text) also reads "2023" as
    2023 and "true", "yes", "1", "false", "no", "0" as booleans."""
    if not isinstance(body, dict):
        raise InvalidInput([{"field": prefix or "body", "problem": "must be a JSON object"}])
    try:
        return schema.model_validate(body, context=None if strict else {LAX: True})
    except ValidationError as exc:
        raise InvalidInput(problems(exc, prefix)) from None


def new_id(kind: EntityKind, content: str | None = None) -> str:
    """An id for an entity whose caller gave none: random, or derived from ``content`` (the same content, the same id)."""
    prefix = "org" if kind is EntityKind.organisations else "ch"
    suffix = uuid.uuid4().hex if content is None else hashlib.sha256(content.encode()).hexdigest()
    return f"{prefix}-{suffix[:16]}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class PastProject(_Strict):
    """A project the organisation took part in: the track record a platform knows."""

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    year: Annotated[WholeNumber, Field(ge=1950, le=2100)] | None = None
    role: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    # May name organisations that are not stored (e.g. from EU project data): never an error.
    partner_ids: Annotated[list[EntityId], Field(max_length=MAX_PARTNER_IDS)] = []


class _Timestamps(BaseModel):
    # Read-only. Accepted on input so a GET -> edit -> PUT round trip works; the server sets them.
    created_at: Annotated[dt.datetime, _no_number("an ISO 8601 date and time")] | None = None
    updated_at: Annotated[dt.datetime, _no_number("an ISO 8601 date and time")] | None = None


class OrganisationIn(_Strict, _Timestamps):
    """An organisation profile as a caller sends it."""

    id: EntityId | None = None
    name: Name
    type: OrgType
    description: Description
    offers: PhraseList = []
    needs: PhraseList = []
    sectors: PhraseList = []
    country: Country | None = None
    region: Place | None = None
    city: Place | None = None
    website: Url | None = None
    contact_email: Email | None = None
    email_opt_in: Flag = False
    past_projects: Annotated[list[PastProject], Field(max_length=MAX_PAST_PROJECTS)] = []
    # How many projects the organisation has done in all, when ``past_projects`` lists only some of them.
    n_past_projects: Annotated[WholeNumber, Field(ge=0, le=1_000_000)] | None = None
    partnership_forms: Annotated[list[PartnershipForm], Field(max_length=len(PartnershipForm))] = []
    tags: PhraseList = []


class ChallengeIn(_Strict, _Timestamps):
    """A challenge as a caller sends it: a need published by a city, a firm or a research group."""

    id: EntityId | None = None
    title: Name
    description: Description
    owner_id: EntityId | None = None
    sectors: PhraseList = []
    needs: PhraseList = []
    preferred_partner_types: Annotated[list[OrgType], Field(max_length=len(OrgType))] = []
    country: Country | None = None
    region: Place | None = None
    city: Place | None = None
    partnership_forms: Annotated[list[PartnershipForm], Field(max_length=len(PartnershipForm))] = []
    deadline: Annotated[dt.date, _no_number("a date as YYYY-MM-DD")] | None = None
    status: ChallengeStatus = ChallengeStatus.open


INPUT_MODELS: dict[EntityKind, type[_Strict]] = {
    EntityKind.organisations: OrganisationIn,
    EntityKind.challenges: ChallengeIn,
}


def validate_entity(kind: EntityKind, data: Any, entity_id: str | None = None, prefix: str = "", *,
                    strict: bool = True) -> dict:
    """Validate one entity and return its stored document (JSON-ready dict, id filled in).

    ``entity_id`` (from a URL) fills the id; a different id in the body is an error. ``strict``: see ``parse``
    (lax for a row of a file). Raises ``InvalidInput`` naming each field at fault (under ``prefix``, e.g. ``items[3]``).
    """
    doc = parse(INPUT_MODELS[kind], data, prefix, strict=strict).model_dump(mode="json", exclude={"created_at", "updated_at"})
    if entity_id is not None:
        if doc.get("id") not in (None, entity_id):
            field = field_path(("id",), prefix)
            raise InvalidInput([{"field": field, "problem": f"'{doc['id']}' does not match the id in the URL"}])
        doc["id"] = entity_id
    if not doc.get("id"):
        doc["id"] = new_id(kind)
    return doc


def validate_entities(kind: EntityKind, items: list) -> list[dict]:
    """Validate many entities (a bulk request or a file); every problem of every item is reported."""
    docs, details, seen = [], [], {}
    for i, item in enumerate(items):
        try:
            doc = validate_entity(kind, item, prefix=f"items[{i}]")
        except InvalidInput as exc:
            details.extend(exc.details)
            continue
        if doc["id"] in seen:
            details.append({"field": f"items[{i}].id", "problem": f"duplicate of items[{seen[doc['id']]}].id"})
        seen.setdefault(doc["id"], i)
        docs.append(doc)
    if details:
        raise InvalidInput(details, f"{len({d['field'].split('.')[0] for d in details})} item(s) are not valid; nothing was written")
    return docs


# --- Match requests and results -----------------------------------------------------------------

MAX_K = 100
MAX_QUERY_TEXT = MAX_DESCRIPTION
MAX_BATCH_REQUESTS = 100
MAX_BULK_ITEMS = 1000


class MatchQuery(_Strict):
    """Exactly one of ``text``, ``challenge_id`` or ``organisation_id``."""

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_TEXT)] | None = Field(
        None, description="Free text. With several lines, the first is read as its title (compared with past project titles).")
    challenge_id: EntityId | None = None
    organisation_id: EntityId | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("text", "challenge_id", "organisation_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of text, challenge_id, organisation_id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


NEAR_KM = 50.0  # the radius of a ``near`` filter that gives none
Latitude = Annotated[float, Field(ge=-90, le=90, strict=True, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, strict=True, allow_inf_nan=False)]


class Near(_Strict):
    """A place and a radius: matches whose place (city and country) lies within ``km`` of it."""

    challenge: EntityId | None = Field(None, description="A stored challenge, whose city is the place.")
    organisation: EntityId | None = Field(None, description="A stored organisation, whose city is the place.")
    lat: Latitude | None = Field(None, description="Latitude in degrees (with lon).")
    lon: Longitude | None = Field(None, description="Longitude in degrees (with lat).")
    km: Annotated[float, Field(gt=0, le=20_000, strict=True, allow_inf_nan=False)] = Field(
        NEAR_KM, description=f"The radius in km (default {NEAR_KM:g}).")

    @model_validator(mode="after")
    def _one_place(self):
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give lat and lon together")
        given = [k for k in ("challenge", "organisation") if getattr(self, k) is not None] + (["lat/lon"] if self.lat is not None else [])
        if len(given) != 1:
            raise ValueError("give exactly one of challenge, organisation, or lat and lon" + (f" (got {', '.join(given)})" if given else ""))
        return self


class MatchFilters(_Strict):
    types: Annotated[list[OrgType], Field(max_length=len(OrgType))] = []
    countries: Annotated[list[Country], Field(max_length=300)] = []
    exclude_ids: Annotated[list[EntityId], Field(max_length=10_000)] = []
    # Challenges only: which status to return ("any": both); unset means "open".
    status: Literal["open", "closed", "any"] | None = Field(
        None, description="Challenge targets only: open (when not given), closed or any.")
    near: Near | None = Field(None, description="Only matches within km of a place; those whose place is not known are left out.")


def _ignored_filters(target: str, filters: MatchFilters) -> None:
    """A filter the target has no field for would be silently ignored: it is a 400 naming it instead."""
    if target == EntityKind.organisations.value and filters.status is not None:
        raise ValidationError.from_exception_data("MatchFilters", [InitErrorDetails(
            type=PydanticCustomError("ignored_filter", "applies to challenge targets only: organisations have no status"),
            loc=("filters", "status"), input=filters.status)])


class _Targeted(_Strict):
    """A request with a ``target`` and ``filters`` (checked together: see ``_ignored_filters``)."""

    @model_validator(mode="after")
    def _filters_apply(self):
        _ignored_filters(self.target, self.filters)
        return self


class MatchRequest(_Targeted):
    query: MatchQuery
    target: EntityKind = EntityKind.organisations
    k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 10
    filters: MatchFilters = MatchFilters()
    explain: Flag = True
    locality: Literal["any", "local"] = Field(
        "any", description="local: order nearer matches first (score / (1 + distance_km / 50)); the scores are unchanged. "
                           "Needs a place: filters.near, or a stored query whose city is known.")


class BatchMatchRequest(_Strict):
    requests: Annotated[list[MatchRequest], Field(min_length=1, max_length=MAX_BATCH_REQUESTS)]


class RelatedProject(BaseModel):
    title: str
    year: int | None = None
    role: str | None = None
    similarity: float | None = None  # cosine of the query with the project's title (or the sentence naming it)


class Explanation(BaseModel):
    """Why a match was made, from the signals that ranked it."""

    summary: str
    # Each signal group's share of the score (log-odds against an average candidate), largest first:
    # meaning, key_terms, track_record, worked_with_matches, similar_past_work, type_fit.
    signals: dict[str, float] = {}
    closest_sentence: str | None = None
    closest_sentence_similarity: float | None = None
    shared_terms: list[str] = []
    shared_sectors: list[str] = []
    offers_for_needs: list[str] = []
    related_projects: list[RelatedProject] = []
    worked_with: list[str] = []  # strong matches for the same query that this organisation has worked with
    type_fit: str | None = None
    distance: str | None = Field(None, description="How far the match is from the query's place, in words: 'same city', "
                                                   "'12 km away', or 'place not known'; absent when the query has no place.")


class Match(BaseModel):
    id: str
    name: str
    type: OrgType | None = Field(None, description="An organisation's type (absent for a challenge).")
    country: str | None = None
    status: ChallengeStatus | None = Field(None, description="A challenge's status (absent for an organisation).")
    score: float
    distance_km: float | None = Field(None, description="From the query's place (filters.near, else a stored query's city) "
                                                         "to the match's; null when either is not known, absent when the query has no place.")
    explanation: Explanation | None = None


class MatchTimings(BaseModel):
    """Where took_ms went, in milliseconds (with explain only); the rest is the index sync and parsing."""

    encode: float = Field(description="Embedding the query (a batch's texts are encoded together: each its share).")
    retrieve: float = Field(description="The four retrievers and every candidate's signals.")
    rank: float = Field(description="The ranker's scores and the order.")
    explain: float = Field(description="The explanations.")


class MatchResponse(BaseModel):
    matches: list[Match]
    took_ms: float = Field(description="Server time of the whole request, query encoding included (a batch's "
                                       "shared work counted in each result's share).")
    timings: MatchTimings | None = Field(None, description="The parts of took_ms; with explain only.")


# --- Batch jobs, consortia ----------------------------------------------------------------------

MAX_JOB_QUERIES = 10_000


class BatchJobRequest(_Targeted):
    """A batch-match job: each query is {text} | {challenge_id} | {organisation_id} | {id} | a profile."""

    queries: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_JOB_QUERIES)]
    target: EntityKind = EntityKind.organisations
    k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 20
    filters: MatchFilters = MatchFilters()
    explain: Flag = True


class JobProgress(BaseModel):
    done: int
    total: int
    fraction: float


class Job(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    progress: JobProgress
    errors: list[dict] = []
    message: str | None = None
    created_at: str
    updated_at: str


class ConsortiumRequest(_Strict):
    """A challenge (stored id or text) and the constraints on the teams to propose."""

    challenge_id: EntityId | None = None
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50_000)] | None = None
    size: Annotated[int, Field(ge=2, le=30, strict=True)] = 5
    # Each group is satisfied by one member of any of its types, e.g. [["public_authority"], ["university", "research_institute"]].
    required_types: Annotated[list[Annotated[list[OrgType], Field(min_length=1)]], Field(max_length=10)] = []
    countries: Annotated[list[Country], Field(max_length=300)] = []
    must_include: Annotated[list[EntityId], Field(max_length=30)] = []
    exclude: Annotated[list[EntityId], Field(max_length=10_000)] = []
    alternatives: Annotated[int, Field(ge=1, le=5, strict=True)] = 3
    local_seats: Annotated[int, Field(ge=0, le=30, strict=True)] = Field(
        0, description="At least this many members within local_km of the stored challenge's city: a local pilot team.")
    local_km: Annotated[float, Field(gt=0, le=20_000, strict=True, allow_inf_nan=False)] = Field(
        NEAR_KM, description=f"With local_seats: how near a local member is, in km (default {NEAR_KM:g}).")
    countries_min: Annotated[int, Field(ge=0, le=30, strict=True)] = Field(
        0, description="At least this many distinct countries among the members: an EU consortium.")

    @model_validator(mode="after")
    def _check(self):
        if (self.challenge_id is None) == (self.text is None):
            raise ValueError("give exactly one of challenge_id, text")
        if len(self.must_include) > self.size:
            raise ValueError("must_include names more organisations than size allows")
        if len(self.required_types) > self.size:
            raise ValueError("required_types has more groups than size allows")
        return self


class ConsortiumMember(BaseModel):
    id: str
    name: str
    type: str
    country: str | None = None
    score: float
    role: str
    covers: list[str] = []
    why: str
    aspect_coverage: list[float] = []  # how well it covers each of the challenge's aspects (challenge_aspects' order)
    distance_km: float | None = Field(None, description="From the challenge's city (a stored challenge's); null when "
                                                         "either place is not known, absent for a text.")


class Consortium(BaseModel):
    members: list[ConsortiumMember]
    coverage: float
    types: list[str]
    countries: list[str]
    missing_types: list[list[str]] = []
    missing_local_seats: int = Field(0, description="How many of local_seats no candidate could fill.")
    missing_countries: int = Field(0, description="How many of countries_min no candidate could add.")


class ConsortiumAspect(BaseModel):
    text: str
    weight: float  # how central it is to the challenge (the weights sum to 1)


class ConsortiumResponse(BaseModel):
    challenge: dict | None = None
    aspects: int
    candidates: int
    consortia: list[Consortium]
    challenge_aspects: list[ConsortiumAspect] = []
