"""The matching of requests against one tenant's live indexes.

Each request's query is resolved to a vector (and a stored document unless it is a free text) and carried
with what it ranks in one ``MatchContext``; then the filter and exclusions (never the query itself, nor a
challenge's own organisation), the ranked candidates (``matcher.hybrid.rank``) and, when asked, each
match's explanation: closest sentence, shared terms and sectors, offers for needs, partner-type fit,
related past projects and partners among the strong matches.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from matcher import explain, places
from matcher.embedding import EXPLAIN_SENTENCES, Embedder
from matcher.hybrid import Ranked, past_work_vector, rank
from matcher.index import Filter
from matcher.live_index import LiveIndex
from matcher.ranker import Ranker
from matcher.text import entity_text, profile_terms_text, query_title, split_sentences
from models.enums import EntityKind, OrgType
from models.errors import InvalidInput
from models.schemas import MatchRequest
from models.store import NotFoundError

ORG, CH = EntityKind.organisations, EntityKind.challenges
TIMINGS = ("encode", "retrieve", "rank", "explain")  # the parts of took_ms a result with explain reports
QUERY_IDS = {CH: "challenge_id", ORG: "organisation_id"}  # the query field that names a stored entity of each kind
LOCAL_POOL = 100  # locality "local" orders the best this many matches (or k) by score and distance


@dataclass(frozen=True)
class MatchContext:
    """One request, its resolved query and what it ranks."""

    request: MatchRequest
    query_vector: np.ndarray
    query_doc: dict | None  # the stored query entity; None for a free text
    query_kind: EntityKind | None
    target: EntityKind
    title_vector: np.ndarray | None  # the query's title embedded alone, for the past-work signal
    place: tuple[float, float] | None = None  # where the query is: filters.near's place, else a stored query's city

    @property
    def has_place(self) -> bool:
        """Whether the query has a place to measure distances from (known or not): a near filter or a stored query."""
        return self.request.filters.near is not None or self.query_doc is not None

    def distance_km(self, meta: dict) -> float | None:
        """From the query's place to a match's (its index metadata), or None when either is not known."""
        point = places.point_of(meta)
        return places.distance_km(self.place, point) if self.place and point else None

    @property
    def query_text(self) -> str:
        """What the lexical retriever reads of the query."""
        return self.request.query.text if self.query_doc is None else entity_text(self.query_kind, self.query_doc)

    def partner_types(self, candidate: dict) -> tuple[list[str], str | None]:
        """For a challenge and an organisation (one the query, the other the candidate): the challenge's preferred
        partner types and the organisation's type; nothing for a free text or two entities of one kind."""
        if self.query_doc is None or self.query_kind is self.target:
            return [], None
        sides = {self.query_kind: self.query_doc, self.target: candidate}
        return sides[CH].get("preferred_partner_types") or [], sides[ORG].get("type")


class Matcher:
    """Matches requests with one tenant's live indexes (synced by the caller), embedder and ranker."""

    def __init__(self, live: LiveIndex, embedder: Embedder, ranker: Ranker):
        self.live, self.embedder, self.ranker = live, embedder, ranker

    def match_many(self, requests: list[MatchRequest], text_vectors: dict[str, np.ndarray] | None = None,
                   started: float | None = None) -> list[dict]:
        """Ranked, explained matches for each request, best first (``text_vectors``: query embeddings known already).

        Each result's ``took_ms`` is the server time of its request: from ``started`` (``time.perf_counter()``
        when the caller took the requests: its index sync and parsing count too) to its answer, query encoding
        included. Work done once for a batch is shared: the free texts are encoded together (their time split
        by the texts' lengths), and what came before (the caller's part) evenly. With ``explain``, ``timings``
        splits it: encode, retrieve, rank, explain."""
        started = time.perf_counter() if started is None else started
        text_vectors = dict(text_vectors or {})
        texts = list(dict.fromkeys(r.query.text for r in requests if r.query.text is not None and r.query.text not in text_vectors))
        encode_started = time.perf_counter()
        if texts:
            text_vectors.update(zip(texts, self.embedder.query_vectors(texts)))
        encode_s, fresh = time.perf_counter() - encode_started, set(texts)
        lengths = [len(r.query.text) if r.query.text in fresh else 0 for r in requests]
        before_s = (encode_started - started) / max(len(requests), 1)
        with self.live.lock:  # request threads: another thread's write applies its changes after these matches
            return [self._match(r, text_vectors, before_s, encode_s * n / (sum(lengths) or 1)) for r, n in zip(requests, lengths)]

    def _match(self, request: MatchRequest, text_vectors: dict[str, np.ndarray], before_s: float = 0.0,
               encode_s: float = 0.0) -> dict:
        """One request's result; ``before_s`` and ``encode_s``: its share of the batch's work (see ``match_many``)."""
        started = time.perf_counter()
        ctx = self._context(request, text_vectors)
        timings = {"encode": encode_s + time.perf_counter() - started}  # its text's share, and its own lookups
        own = self._own_exclusions(ctx)
        pool = request.k if request.locality == "any" else max(request.k, LOCAL_POOL)
        ranked = rank(self.live.corpus(ctx.target), ctx.query_vector, ctx.query_text, self._filter(ctx, own), pool,
                      self.ranker, self._type_fit(ctx), ctx.title_vector, base=Filter(exclude_nums=own), timings=timings)
        if request.locality == "local":
            ranked = self._nearer_first(ctx, ranked)[: request.k]
        explained = time.perf_counter()
        explanations = self._explain(ctx, ranked) if request.explain else {}
        timings["explain"] = time.perf_counter() - explained
        meta = self.live.indexes[ctx.target].meta
        matches = []
        for r in ranked:
            # An organisation's type, or a challenge's status: each match has the field of its kind only.
            kind_field = "type" if ctx.target is ORG else "status"
            match = {
                "id": meta[r.num]["id"],
                "name": meta[r.num]["name"],
                kind_field: meta[r.num].get(kind_field),
                "country": meta[r.num].get("country"),
                "score": round(r.score, 4),
                **({"distance_km": _km(ctx.distance_km(meta[r.num]))} if ctx.has_place else {}),
                "explanation": explanations.get(r.num),
            }
            matches.append(match)
        result = {"matches": matches, "took_ms": _ms(before_s + encode_s + time.perf_counter() - started)}
        if request.explain:
            result["timings"] = {part: _ms(timings.get(part, 0.0)) for part in TIMINGS}
        return result

    def _context(self, request: MatchRequest, text_vectors: dict[str, np.ndarray]) -> MatchContext:
        """The query's vector, its own document (None for free text) and kind, and its title's vector."""
        q, target = request.query, EntityKind(request.target)
        if q.text is not None:
            vector, doc, kind, title = text_vectors.get(q.text), None, None, query_title(q.text)
            if vector is None:
                vector = self.embedder.query_vectors([q.text])[0]
        else:
            kind, field = next((k, f) for k, f in QUERY_IDS.items() if getattr(q, f) is not None)
            doc = self.live.store.get(kind, getattr(q, field))
            if doc is None:
                raise NotFoundError(kind, getattr(q, field), field=f"query.{field}")
            index = self.live.indexes[kind]
            num = index.num_of.get(doc["id"])
            vector = index.vector(num) if num is not None else self.embedder.encoder.encode([entity_text(kind, doc)])[0]
            title = (doc.get("title") or "").strip()  # a challenge's (an organisation has none)
        # The title alone is what past work, of organisations, is compared with (first line of a longer free text);
        # a stored challenge's was stored with it, so a query for its id loads no model.
        title_vector = None
        if title and target is ORG:
            title_vector = self.embedder.stored_title_vector(doc) if kind is CH else None
            if title_vector is None:
                title_vector = self.embedder.sentence_vectors([title])[0]
        return MatchContext(request, vector, doc, kind, target, title_vector, self._place(request, doc, kind))

    def _place(self, request: MatchRequest, doc: dict | None, kind: EntityKind | None) -> tuple[float, float] | None:
        """The query's place: the near filter's (its coordinates, or a stored entity's city), else the stored query's
        city; None when not known. A near filter on an entity whose place is not known, and locality "local"
        without a place, are 400s."""
        near = request.filters.near
        if near is not None and near.lat is not None:
            return near.lat, near.lon
        if near is not None:
            field, kind = ("challenge", CH) if near.challenge is not None else ("organisation", ORG)
            entity_id, path = getattr(near, field), f"filters.near.{field}"
            doc = self.live.store.get(kind, entity_id)
            if doc is None:
                raise NotFoundError(kind, entity_id, field=path)
        point = places.entity_point(self.live.indexes[kind], doc) if doc is not None else None
        if near is not None and point is None:
            raise InvalidInput([{"field": path, "problem": places.unknown_place(field, doc)}])
        if request.locality == "local" and point is None:
            raise InvalidInput([{"field": "locality", "problem": "'local' needs a place: filters.near, or a stored "
                                                                  "challenge or organisation query whose city is known"}])
        return point

    def _nearer_first(self, ctx: MatchContext, ranked: list[Ranked]) -> list[Ranked]:
        """Locality "local": the matches ordered by score x ``places.locality_weight`` of their distance (stable)."""
        meta = self.live.indexes[ctx.target].meta
        return sorted(ranked, key=lambda r: -r.score * places.locality_weight(ctx.distance_km(meta[r.num])))

    def _own_exclusions(self, ctx: MatchContext) -> tuple[int, ...]:
        """What the query never matches, whatever its filters: itself, nor a challenge the organisation that
        posted it. The ranker's references come from the retrieval without anything else (``hybrid.gather``)."""
        num_of, own = self.live.indexes[ctx.target].num_of, []
        if ctx.query_doc is not None and ctx.query_kind is ctx.target and ctx.query_doc["id"] in num_of:
            own.append(num_of[ctx.query_doc["id"]])
        if ctx.query_kind is CH and ctx.target is ORG and ctx.query_doc.get("owner_id") in num_of:
            own.append(num_of[ctx.query_doc["owner_id"]])
        return tuple(own)

    def _filter(self, ctx: MatchContext, own: tuple[int, ...]) -> Filter:
        filters, num_of = ctx.request.filters, self.live.indexes[ctx.target].num_of
        exclude = [num_of[i] for i in filters.exclude_ids if i in num_of]
        return Filter(
            near=(*ctx.place, filters.near.km) if filters.near else None,
            types=tuple(filters.types),
            countries=tuple(filters.countries),
            status=None if ctx.target is ORG or filters.status == "any" else filters.status or "open",
            exclude_nums=tuple(exclude) + own,
        )

    def _type_fit(self, ctx: MatchContext) -> Callable[[int], bool] | None:
        """Whether the challenge side prefers each candidate's organisation type (None when nobody says)."""
        if ctx.query_doc is None or ctx.query_kind is ctx.target:
            return None
        if ctx.query_kind is CH and not ctx.query_doc.get("preferred_partner_types"):
            return None
        meta = self.live.indexes[ctx.target].meta

        def fits(num: int) -> bool:
            preferred, org_type = ctx.partner_types(meta[num])
            return org_type in preferred

        return fits

    def _explain(self, ctx: MatchContext, ranked: list[Ranked]) -> dict[int, dict]:
        """Why each match ranked where it did, from the signals the ranker used (past work: by the title's vector)."""
        rows = self.live.explained(ctx.target, [r.num for r in ranked])
        dim = self.embedder.dim
        query_terms = explain.key_terms(ctx.request.query.text if ctx.query_doc is None else profile_terms_text(ctx.query_doc))
        per_hit = {}
        missing: list[str] = []
        for r in ranked:
            if r.num not in rows:  # deleted between search and fetch
                continue
            doc, sentences, vectors = rows[r.num]
            if sentences is None:  # stored before sentence vectors existed: embed the description's sentences now
                sentences = split_sentences(doc["description"])[:EXPLAIN_SENTENCES]
                missing.extend(sentences)
            per_hit[r.num] = (doc, sentences, vectors)
        fresh = dict(zip(missing, self.embedder.sentence_vectors(missing))) if missing else {}
        out = {}
        for r in ranked:
            if r.num not in per_hit:
                continue
            doc, sentences, vectors = per_hit[r.num]
            if vectors is None:
                vectors = np.vstack([fresh[s] for s in sentences]) if sentences else np.zeros((0, dim), np.float32)
            out[r.num] = self._explanation(ctx, r, doc, query_terms, sentences, vectors)
        return out

    def _explanation(self, ctx: MatchContext, r: Ranked, doc: dict, query_terms: dict[str, str], sentences: list[str],
                     vectors: np.ndarray) -> dict:
        closest = explain.closest_sentence(ctx.query_vector, sentences, vectors)
        shared = explain.shared_terms(query_terms, profile_terms_text(doc))
        query_sectors = {s.lower() for s in (ctx.query_doc or {}).get("sectors", [])}
        sectors = [s for s in doc.get("sectors", []) if s.lower() in query_sectors]
        offers, type_fit = _fit(ctx, doc)
        titles = (dict(self.live.past_work.closest_titles(r.num, past_work_vector(ctx.query_vector, ctx.title_vector), limit=1000))
                  if ctx.target is ORG else None)
        projects = explain.related_projects(ctx.query_vector, query_terms, doc.get("past_projects") or [], sentences,
                                            vectors, title_similarity=titles)
        meta = self.live.indexes[ctx.target].meta
        worked_with = [meta[n]["name"] for n in r.linked[:3] if n in meta]
        signals = explain.signals(r.contributions)
        km = ctx.distance_km(meta[r.num])
        distance = (places.distance_words(km) if ctx.place else "the query's place is not known") if ctx.has_place else None
        return {
            "summary": explain.summary(round(r.score, 4), signals=signals, shared=shared, sectors=sectors, offers=offers,
                                       type_fit=type_fit, projects=projects, worked_with=worked_with,
                                       has_past_projects=bool(doc.get("past_projects")),
                                       distance=distance if km is not None else None),
            "signals": signals,
            "closest_sentence": closest[0] if closest else None,
            "closest_sentence_similarity": round(closest[1], 4) if closest else None,
            "shared_terms": shared,
            "shared_sectors": sectors,
            "offers_for_needs": offers,
            "related_projects": projects,
            "worked_with": worked_with,
            "type_fit": type_fit,
            **({"distance": distance} if distance else {}),
        }


def _km(km: float | None) -> float | None:
    return None if km is None else round(km, 1)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _fit(ctx: MatchContext, doc: dict) -> tuple[list[str], str | None]:
    """What one side offers of what the other needs, and whether the organisation type is wanted (in words)."""
    if ctx.query_doc is None:  # free text: the offers that speak to it
        return explain.phrase_overlap([ctx.request.query.text], doc.get("offers", [])), None
    if ctx.target is ORG:
        offers = explain.phrase_overlap(ctx.query_doc.get("needs", []), doc.get("offers", []))
    else:  # an organisation (or a challenge) looking at challenges
        offers = explain.phrase_overlap(doc.get("needs", []), ctx.query_doc.get("offers", []))
    preferred, org_type = ctx.partner_types(doc)
    if not (preferred and org_type):
        return offers, None
    label = explain.type_label(OrgType(org_type).value)
    if org_type in preferred:
        return offers, f"{explain.article(label)} {label} is a partner type the challenge prefers"
    return offers, f"the challenge prefers {', '.join(explain.type_label(p) for p in preferred)}, not {explain.article(label)} {label}"
