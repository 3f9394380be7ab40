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

from matcher import explain
from matcher.embedding import EXPLAIN_SENTENCES, Embedder
from matcher.encoder import matrix_from_bytes
from matcher.hybrid import Ranked, past_work_vector, rank
from matcher.index import Filter
from matcher.live_index import LiveIndex
from matcher.ranker import Ranker
from matcher.text import entity_text, profile_terms_text, query_title, split_sentences
from models.enums import EntityKind, OrgType
from models.schemas import MatchRequest
from models.store import NotFoundError

ORG, CH = EntityKind.organisations, EntityKind.challenges
QUERY_IDS = {CH: "challenge_id", ORG: "organisation_id"}  # the query field that names a stored entity of each kind


@dataclass(frozen=True)
class MatchContext:
    """One request, its resolved query and what it ranks."""

    request: MatchRequest
    query_vector: np.ndarray
    query_doc: dict | None  # the stored query entity; None for a free text
    query_kind: EntityKind | None
    target: EntityKind
    title_vector: np.ndarray | None  # the query's title embedded alone, for the past-work signal

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

    def match_many(self, requests: list[MatchRequest], text_vectors: dict[str, np.ndarray] | None = None) -> list[dict]:
        """Ranked, explained matches for each request, best first (``text_vectors``: query embeddings known already)."""
        text_vectors = dict(text_vectors or {})
        texts = list(dict.fromkeys(r.query.text for r in requests if r.query.text is not None and r.query.text not in text_vectors))
        if texts:
            text_vectors.update(zip(texts, self.embedder.encoder.encode(texts)))
        return [self._match(r, text_vectors) for r in requests]

    def _match(self, request: MatchRequest, text_vectors: dict[str, np.ndarray]) -> dict:
        started = time.perf_counter()
        ctx = self._context(request, text_vectors)
        ranked = rank(self.live.corpus(ctx.target), ctx.query_vector, ctx.query_text, self._filter(ctx), request.k,
                      self.ranker, self._type_fit(ctx), ctx.title_vector)
        explanations = self._explain(ctx, ranked) if request.explain else {}
        meta = self.live.indexes[ctx.target].meta
        matches = []
        for r in ranked:
            match = {
                "id": meta[r.num]["id"],
                "name": meta[r.num]["name"],
                "type": meta[r.num].get("type"),  # an organisation's (a challenge has none)
                "country": meta[r.num].get("country"),
                "score": round(r.score, 4),
                "explanation": explanations.get(r.num),
            }
            if ctx.target is CH:
                match["status"] = meta[r.num].get("status")
            matches.append(match)
        return {"matches": matches, "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    def _context(self, request: MatchRequest, text_vectors: dict[str, np.ndarray]) -> MatchContext:
        """The query's vector, its own document (None for free text) and kind, and its title's vector."""
        q, target = request.query, EntityKind(request.target)
        if q.text is not None:
            vector, doc, kind, title = text_vectors.get(q.text), None, None, query_title(q.text)
            if vector is None:
                vector = self.embedder.encoder.encode([q.text])[0]
        else:
            kind, field = next((k, f) for k, f in QUERY_IDS.items() if getattr(q, f) is not None)
            doc = self.live.store.get(kind, getattr(q, field))
            if doc is None:
                raise NotFoundError(kind, getattr(q, field), field=f"query.{field}")
            index = self.live.indexes[kind]
            num = index.num_of.get(doc["id"])
            vector = index.vector(num) if num is not None else self.embedder.encoder.encode([entity_text(kind, doc)])[0]
            title = (doc.get("title") or "").strip()  # a challenge's (an organisation has none)
        # The title alone is what past work, of organisations, is compared with (first line of a longer free text).
        title_vector = self.embedder.sentence_vectors([title])[0] if title and target is ORG else None
        return MatchContext(request, vector, doc, kind, target, title_vector)

    def _filter(self, ctx: MatchContext) -> Filter:
        filters, num_of = ctx.request.filters, self.live.indexes[ctx.target].num_of
        exclude = [num_of[i] for i in filters.exclude_ids if i in num_of]
        if ctx.query_doc is not None and ctx.query_kind is ctx.target and ctx.query_doc["id"] in num_of:
            exclude.append(num_of[ctx.query_doc["id"]])  # never match an entity with itself
        if ctx.query_kind is CH and ctx.target is ORG and ctx.query_doc.get("owner_id") in num_of:
            exclude.append(num_of[ctx.query_doc["owner_id"]])  # nor a challenge with the organisation that posted it
        return Filter(
            types=tuple(filters.types),
            countries=tuple(filters.countries),
            status=None if ctx.target is ORG or filters.status == "any" else filters.status,
            exclude_nums=tuple(exclude),
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
        docs = self.live.store.get_by_nums(ctx.target, [r.num for r in ranked])
        dim = self.embedder.encoder.dim
        query_terms = explain.key_terms(ctx.request.query.text if ctx.query_doc is None else profile_terms_text(ctx.query_doc))
        per_hit = {}
        stored = self.live.store.sentence_vectors(ctx.target, [r.num for r in ranked if r.num in docs])
        missing: list[str] = []
        for r in ranked:
            doc = docs.get(r.num)
            if doc is None:  # deleted between search and fetch
                continue
            entry = stored.get(r.num)
            if entry is not None and entry[2] == self.embedder.encoder.name:
                per_hit[r.num] = (doc, entry[0], matrix_from_bytes(entry[1], dim))
            else:  # stored before sentence vectors existed: embed the description's sentences now
                sentences = split_sentences(doc["description"])[:EXPLAIN_SENTENCES]
                per_hit[r.num] = (doc, sentences, None)
                missing.extend(sentences)
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
        return {
            "summary": explain.summary(r.score, signals=signals, shared=shared, sectors=sectors, offers=offers,
                                       type_fit=type_fit, projects=projects, worked_with=worked_with,
                                       has_past_projects=bool(doc.get("past_projects"))),
            "signals": signals,
            "closest_sentence": closest[0] if closest else None,
            "closest_sentence_similarity": round(closest[1], 4) if closest else None,
            "shared_terms": shared,
            "shared_sectors": sectors,
            "offers_for_needs": offers,
            "related_projects": projects,
            "worked_with": worked_with,
            "type_fit": type_fit,
        }


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
