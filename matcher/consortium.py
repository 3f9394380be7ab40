"""Consortium builder: for a challenge, a few alternative teams that together cover what it needs.

1. The challenge's **aspects** are the sentences of its description and its needs, each weighted by how
   central it is to the whole challenge (cosine with the challenge vector); budget, date, eligibility and
   contact sentences (``matcher.text.is_administrative``) are no aspect any partner covers, and are left out.
2. **Candidates** are the engine's matches for the challenge (``Engine.match``), plus, for each required
   type group, the best matches of those types, plus the must-include organisations; with ``local_seats``,
   the best matches within ``local_km`` of the challenge's city (``filters.near``), of each group too.
3. A member **covers** an aspect as well as its closest sentence (or its whole profile) does.
4. **Greedy marginal gain**: repeatedly add the candidate that most raises
   sum_aspects weight * best coverage in the team (a facility-location objective, submodular, so greedy is
   within 1 - 1/e of the best) + RELEVANCE * its match score - REDUNDANCY * its similarity to the closest
   member already chosen. When no more seats are left than the team still lacks (required type groups,
   ``local_seats`` members within ``local_km``, ``countries_min`` distinct countries), the next pick is among
   the candidates that fill the most of those lacks.
5. **Alternatives** leave out the members of earlier ones (except the must-include organisations).
Each member gets a role (from its type) and why: the aspects it covers best in its team. The answer lists the
challenge's aspects (``challenge_aspects``: text and weight) and, per member, how well it covers each of them
(``aspect_coverage``, in that order): a heat map of aspects x members.
"""
from __future__ import annotations

import numpy as np

from matcher import places
from matcher.encoder import matrix_from_bytes
from matcher.text import entity_text, is_administrative, split_sentences
from models.enums import EntityKind
from models.schemas import ConsortiumRequest, InvalidInput, MatchRequest, parse
from models.store import NotFoundError

RELEVANCE = 1.5  # chosen on the benchmark (bench/consortium.py): 0.5 found 107 real partners, 1.5 found 120 of 667
REDUNDANCY = 0.3
MAX_ASPECTS = 40
ROLES = {
    "university": "research and development",
    "research_institute": "research and development",
    "sme": "technology provider",
    "startup": "technology provider",
    "large_company": "industrial partner and scale-up",
    "public_authority": "public end user and pilot site",
    "non_profit": "community engagement and dissemination",
    "citizen_group": "citizen engagement and co-creation",
    "intermediary": "networking and exploitation",
    "other": "partner",
}


def parse_request(body) -> ConsortiumRequest:
    return parse(ConsortiumRequest, body)


def _aspects(engine, request: ConsortiumRequest, challenge: dict | None) -> tuple[list[str], np.ndarray]:
    """The challenge's aspects (sentences and needs, not the administrative ones: ``text.is_administrative``)
    and their vectors."""
    encoder = engine.encoder
    if challenge is not None:
        index = engine.indexes[EntityKind.challenges]
        num = index.num_of.get(challenge["id"])
        stored = engine.store.sentence_vectors(EntityKind.challenges, [num]).get(num) if num is not None else None
        if stored is not None and stored[2] == encoder.name:
            sentences, vectors = stored[0], matrix_from_bytes(stored[1], encoder.dim).astype(np.float32)
        else:
            sentences = split_sentences(challenge["description"])[:MAX_ASPECTS]
            vectors = encoder.encode_sentences(sentences) if sentences else np.zeros((0, encoder.dim), np.float32)
        needs = [n for n in challenge.get("needs") or [] if not is_administrative(n)]
        keep = [i for i, s in enumerate(sentences) if not is_administrative(s)]
        sentences, vectors = [sentences[i] for i in keep], vectors[keep]
        if needs or not sentences:  # a challenge of administrative sentences alone is read by its title
            extra = needs or [challenge["title"]]
            sentences, vectors = sentences + extra, np.vstack([vectors, encoder.encode_sentences(extra)])
    else:
        sentences = [s for s in split_sentences(request.text) if not is_administrative(s)][:MAX_ASPECTS] or [request.text]
        vectors = encoder.encode_sentences(sentences)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    return list(sentences), vectors


def _challenge_vector(engine, request: ConsortiumRequest, challenge: dict | None) -> np.ndarray:
    if challenge is None:
        return engine.encoder.encode([request.text])[0]
    index = engine.indexes[EntityKind.challenges]
    num = index.num_of.get(challenge["id"])
    return index.vector(num) if num is not None else engine.encoder.encode([entity_text(EntityKind.challenges, challenge)])[0]


def _candidates(engine, request: ConsortiumRequest, query: dict) -> dict[str, dict]:
    """id -> match (id, name, type, country, score, distance_km) from the engine, for the team to be chosen from:
    the best matches overall and the best of each required type group, and with ``local_seats`` the best within
    ``local_km`` (of each group too), in one ``match_many`` (the text is encoded once)."""
    def body(k, types=(), near=None):
        return MatchRequest.model_validate({"query": query, "k": k, "explain": False, "filters": {
            "types": list(types), "countries": request.countries, "exclude_ids": request.exclude, "near": near}})

    requests = [body(min(100, max(40, request.size * 10)))] + [body(20, group) for group in request.required_types]
    if request.local_seats:
        near = {"challenge": request.challenge_id, "km": request.local_km}
        requests += [body(20, near=near)] + [body(10, group, near) for group in request.required_types]
    pool: dict[str, dict] = {}
    for result in engine.match_many(requests):
        for m in result["matches"]:
            pool.setdefault(m["id"], m)
    return pool


def build(engine, request: ConsortiumRequest) -> dict:
    """Alternative consortia for the request, best first."""
    engine.sync()
    with engine.live.lock:  # request threads: another thread's write applies its changes after this build
        return _build(engine, request)


def _build(engine, request: ConsortiumRequest) -> dict:
    challenge = None
    if request.challenge_id is not None:
        challenge = engine.store.get(EntityKind.challenges, request.challenge_id)
        if challenge is None:
            raise NotFoundError(EntityKind.challenges, request.challenge_id, field="challenge_id")
        query = {"challenge_id": request.challenge_id}
    else:
        query = {"text": request.text}
    orgs = engine.indexes[EntityKind.organisations]
    details = [{"field": f"must_include[{i}]", "problem": f"no organisation with id '{o}'"}
               for i, o in enumerate(request.must_include) if o not in orgs.num_of]
    details += [{"field": f"must_include[{i}]", "problem": "is also in exclude"}
                for i, o in enumerate(request.must_include) if o in request.exclude]
    details += _place_problems(engine, request, challenge)
    if details:
        raise InvalidInput(details)

    aspects, aspect_vectors = _aspects(engine, request, challenge)
    query_vector = _challenge_vector(engine, request, challenge)
    weights = np.clip(aspect_vectors @ query_vector, 0.05, None)
    weights = weights / weights.sum()

    pool = _candidates(engine, request, query)
    for org_id in request.must_include:
        if org_id not in pool:
            meta = orgs.meta[orgs.num_of[org_id]]
            pool[org_id] = {"id": org_id, "name": meta["name"], "type": meta.get("type"), "country": meta.get("country"),
                            "score": round(float(np.clip(orgs.vector(orgs.num_of[org_id]) @ query_vector, 0, 1)), 4)}
            if challenge is not None:  # as far from the challenge as the engine's matches say theirs are
                place, point = places.entity_point(engine.indexes[EntityKind.challenges], challenge), places.point_of(meta)
                pool[org_id]["distance_km"] = round(places.distance_km(place, point), 1) if place and point else None
    ids = list(pool)
    vectors = np.vstack([orgs.vector(orgs.num_of[i]) for i in ids])
    coverage = np.clip(vectors @ aspect_vectors.T, 0, None)  # (candidates, aspects): the whole profile ...
    sentence_rows = engine.store.sentence_vectors(EntityKind.organisations, [orgs.num_of[i] for i in ids])
    for row, org_id in enumerate(ids):  # ... or its closest sentence, whichever covers an aspect better
        entry = sentence_rows.get(orgs.num_of[org_id])
        if entry is not None and entry[2] == engine.encoder.name and entry[0]:
            sentence_vectors = matrix_from_bytes(entry[1], engine.encoder.dim).astype(np.float32)
            coverage[row] = np.maximum(coverage[row], (sentence_vectors @ aspect_vectors.T).max(axis=0))
    relevance = np.array([pool[i]["score"] for i in ids], np.float32)
    similarity = vectors @ vectors.T

    consortia, used = [], set()
    for _ in range(request.alternatives):
        allowed = [r for r, i in enumerate(ids) if i not in used or i in request.must_include]
        team = _greedy(request, ids, pool, allowed, coverage, weights, relevance, similarity)
        if not team or (consortia and all(ids[r] in request.must_include for r in team)):
            break
        consortia.append(_describe(request, ids, pool, team, coverage, weights, aspects))
        used.update(ids[r] for r in team)
    return {"challenge": {"id": challenge["id"], "title": challenge["title"]} if challenge else None,
            "aspects": len(aspects), "candidates": len(ids), "consortia": consortia,
            "challenge_aspects": [{"text": _short(a), "weight": round(float(w), 4)} for a, w in zip(aspects, weights)]}


def _place_problems(engine, request: ConsortiumRequest, challenge: dict | None) -> list[dict]:
    """What is wrong with the request's local_seats, local_km and countries_min, as error details."""
    details = [{"field": field, "problem": f"is more than size ({request.size})"}
               for field in ("local_seats", "countries_min") if getattr(request, field) > request.size]
    if request.countries and request.countries_min > len(set(request.countries)):
        details.append({"field": "countries_min", "problem": f"is more than the {len(set(request.countries))} countries "
                                                              "that countries allows"})
    if "local_km" in request.model_fields_set and not request.local_seats:
        details.append({"field": "local_km", "problem": "applies with local_seats only"})
    if request.local_seats and challenge is None:
        details.append({"field": "local_seats", "problem": "needs a stored challenge (challenge_id), whose city is the place"})
    elif request.local_seats and places.entity_point(engine.indexes[EntityKind.challenges], challenge) is None:
        details.append({"field": "local_seats", "problem": places.unknown_place("challenge", challenge)})
    return details


def _groups_met(request, types: list[str]) -> list[bool]:
    return [any(t in group for t in types) for group in request.required_types]


def _is_local(request, member: dict) -> bool:
    return member.get("distance_km") is not None and member["distance_km"] <= request.local_km


def _lacking(request, members: list[dict]) -> tuple[list[list[str]], int, int]:
    """What a team still lacks: the required type groups it has no member of, its local members and countries short."""
    groups = [g for g, ok in zip(request.required_types, _groups_met(request, [m["type"] for m in members])) if not ok]
    local = max(0, request.local_seats - sum(_is_local(request, m) for m in members))
    countries = max(0, request.countries_min - len({m["country"] for m in members if m.get("country")}))
    return groups, local, countries


def _fills(request, member: dict, lacking: tuple[list[list[str]], int, int], countries: set[str]) -> int:
    """How many of the team's lacks ``member`` would fill."""
    groups, local, more_countries = lacking
    return (sum(member["type"] in g for g in groups) + bool(local and _is_local(request, member))
            + bool(more_countries and member.get("country") and member["country"] not in countries))


def _greedy(request, ids, pool, allowed, coverage, weights, relevance, similarity) -> list[int]:
    team = [ids.index(o) for o in request.must_include]
    best = coverage[team].max(axis=0) if team else np.zeros(coverage.shape[1], np.float32)
    while len(team) < request.size:
        members = [pool[ids[r]] for r in team]
        lacking = _lacking(request, members)
        seats = request.size - len(team)
        choices = [r for r in allowed if r not in team]
        if 0 < len(lacking[0]) + lacking[1] + lacking[2] >= seats:
            # The last seats go to what the team still lacks (types, local members, countries), to the candidates
            # that fill the most of it, if any does.
            countries = {m.get("country") for m in members}
            fills = {r: _fills(request, pool[ids[r]], lacking, countries) for r in choices}
            most = max(fills.values(), default=0)
            choices = [r for r in choices if fills[r] == most] if most else choices
        if not choices:
            break
        rows = np.array(choices)
        gain = (np.clip(coverage[rows] - best, 0, None) * weights).sum(axis=1) + RELEVANCE * relevance[rows]
        if team:
            gain -= REDUNDANCY * similarity[np.ix_(rows, team)].max(axis=1)
        pick = int(rows[int(np.argmax(gain))])
        team.append(pick)
        best = np.maximum(best, coverage[pick])
    return team


def _describe(request, ids, pool, team, coverage, weights, aspects) -> dict:
    team_cov = coverage[team]
    best_member = team_cov.argmax(axis=0)  # which member covers each aspect best
    covered = float((team_cov.max(axis=0) * weights).sum())
    coordinator = max(team, key=lambda r: pool[ids[r]]["score"])
    types = [pool[ids[r]]["type"] for r in team]
    members = []
    for pos, r in enumerate(team):
        m = pool[ids[r]]
        own = [a for a in np.argsort(-(team_cov[pos] * weights)) if best_member[a] == pos][:2]
        covers = [_short(aspects[a]) for a in own]
        role = ROLES.get(m["type"], "partner")
        if r == coordinator:
            role = f"coordinator; {role}"
        why = [f"match score {m['score']:.2f} for the challenge"]
        if covers:
            why.append("covers best in this team: " + "; ".join(f"'{c}' ({team_cov[pos, a]:.2f})" for c, a in zip(covers, own)))
        met = [", ".join(g) for g in request.required_types if m["type"] in g]
        if met:
            why.append(f"fills the required type {met[0].replace('_', ' ')}")
        if request.local_seats and _is_local(request, m):
            why.append(f"local: {places.distance_words(m['distance_km'])}")
        if m["id"] in request.must_include:
            why.append("must be included")
        members.append({"id": m["id"], "name": m["name"], "type": m["type"], "country": m.get("country"),
                        "score": m["score"], "role": role, "covers": covers, "why": "; ".join(why) + ".",
                        "aspect_coverage": [round(float(c), 4) for c in team_cov[pos]],
                        **({"distance_km": m["distance_km"]} if "distance_km" in m else {})})
    missing_types, missing_local, missing_countries = _lacking(request, [pool[ids[r]] for r in team])
    return {
        "members": members,
        "coverage": round(covered, 4),
        "types": sorted(set(types)),
        "countries": sorted({m["country"] for m in members if m.get("country")}),
        "missing_types": missing_types,
        "missing_local_seats": missing_local,
        "missing_countries": missing_countries,
    }


def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
