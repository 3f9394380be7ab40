"""Explanations a person can read, built from the signals that ranked a match.

- each signal group's share of the ranker's score (``signals``),
- the sentence of the matched profile closest to the query (cosine similarity of their embeddings),
- the past projects closest to the query, and the strong matches the organisation has worked with,
- key terms that the query and the match share,
- the sectors they share,
- what the match offers of what the query needs (organisation or challenge queries),
- whether the match's type is one the challenge prefers.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from matcher.features import REGISTRY
from matcher.stop_words import ENGLISH_STOP_WORDS
from matcher.text import is_administrative

_WORD = re.compile(r"[a-zà-öø-ÿ][a-zà-öø-ÿ0-9\-]{2,}")
# Words so common in profiles that sharing them says nothing.
_GENERIC = frozenset(
    """
    based offers needs sectors looking located company companies organisation organisations partner partners
    solution solutions service services project projects provide provides providing develop develops developing
    new work works working use using used support supports help helps make makes city region including
    also well able across within based years year team teams data-driven innovative innovation
    actually really today currently already often still just want wants wanted needed need real
    data digital platform system systems solution-oriented small large local people way ways
    """.split()
)
STOP = ENGLISH_STOP_WORDS | _GENERIC


def _stem(word: str) -> str:
    """A light plural folding so "sensors" meets "sensor"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@functools.lru_cache(maxsize=50_000)
def key_terms(text: str) -> Mapping[str, str]:
    """Folded term -> the first surface form, for the content words of a text (read-only: cached by text, as the
    same profiles and past project titles are explained again and again)."""
    terms: dict[str, str] = {}
    for word in _WORD.findall(text.lower()):
        word = word.strip("-")
        if word in STOP or len(word) < 3:
            continue
        terms.setdefault(_stem(word), word)
    return MappingProxyType(terms)


def shared_terms(query_terms: Mapping[str, str], text: str, limit: int = 8) -> list[str]:
    """Terms of the query that the text also uses, most specific (longest) first."""
    found = key_terms(text)
    common = [found[t] for t in query_terms if t in found]
    return sorted(common, key=lambda w: (-len(w), w))[:limit]


def phrase_overlap(wanted: list[str], offered: list[str]) -> list[str]:
    """The offered phrases that share a key term with any wanted phrase."""
    wanted_terms = set()
    for phrase in wanted:
        wanted_terms.update(key_terms(phrase))
    return [p for p in offered if wanted_terms.intersection(key_terms(p))]


def closest_sentence(query: np.ndarray, sentences: list[str], vectors: np.ndarray) -> tuple[str, float] | None:
    """The sentence closest to the query, never an administrative one (budget, dates, eligibility, contact)."""
    if not sentences:
        return None
    sims = vectors @ query
    for i in np.argsort(-sims, kind="stable").tolist():  # the closest first: most are checked for nothing else
        if not is_administrative(sentences[i]):
            return sentences[i], float(sims[i])
    return None


def type_label(org_type: str) -> str:
    return {"sme": "SME"}.get(org_type, org_type.replace("_", " "))


def article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" or label == "SME" else "a"


# Signal groups of the ranker (each feature's group in matcher.features), named for a person; and the fixed
# bonus for a partner type the challenge prefers.
SIGNAL_GROUPS = {
    **{group: tuple(f.name for f in REGISTRY if f.group == group) for group in dict.fromkeys(f.group for f in REGISTRY)},
    "type_fit": ("type_fit",),
}
_SIGNAL_WORDS = {
    "meaning": "close in meaning to the query",
    "key_terms": "uses the query's specific terms",
    "track_record": "a strong track record of projects",
    "worked_with_matches": "has worked with other strong matches",
    "similar_past_work": "past work close to the query",
    "type_fit": "a partner type the challenge prefers",
}
_PROFILE_PAST_WORK = "several passages of its text close to the query"


def signals(contributions: dict[str, float]) -> dict[str, float]:
    """Each signal group's share of the ranking score (log-odds against an average candidate), largest first."""
    groups = {
        name: sum(contributions.get(f, 0.0) for f in features)
        for name, features in SIGNAL_GROUPS.items()
        if any(f in contributions for f in features)
    }
    return {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def related_projects(query: np.ndarray, query_terms: Mapping[str, str], projects: list[dict], sentences: list[str],
                     vectors: np.ndarray, limit: int = 3, title_similarity: dict[str, float] | None = None) -> list[dict]:
    """The match's past projects closest to the query: by the embedding of the title itself (``title_similarity``,
    what the past-work signal ranked with), else of the profile sentence naming the project, else by the key
    terms the title shares with the query."""
    sims = vectors @ query if len(sentences) else np.zeros(0)
    title_similarity = title_similarity or {}
    scored = []
    for project in projects:
        title = project.get("title") or ""
        lowered = title.lower()
        similarity = title_similarity.get(title.strip())
        if similarity is None:
            similarity = max((float(sims[i]) for i, s in enumerate(sentences) if lowered and lowered in s.lower()), default=None)
        shared = [w for t, w in key_terms(title).items() if t in query_terms]
        if similarity is None and not shared:
            continue
        scored.append((similarity if similarity is not None else 0.0, len(shared), project))
    scored.sort(key=lambda x: (-x[0], -x[1]))
    out, seen = [], set()
    for similarity, _, project in scored:
        if project["title"].lower() in seen:
            continue
        seen.add(project["title"].lower())
        out.append({"title": project["title"], "year": project.get("year"), "role": project.get("role"),
                    "similarity": round(similarity, 4) if similarity else None})
        if len(out) == limit:
            break
    return out


# The score in words, for every place that shows one (API explanations, digests, the console, exports): each
# band's lower bound, as the README documents them.
SCORE_BANDS = ((0.50, "very strong match"), (0.25, "strong match"), (0.10, "good match"), (0.03, "possible match"),
               (0.0, "weak match"))


def score_number(score: float) -> str:
    """The score as a person reads it: two decimals, three below 0.10 (0.005 is not 0.00)."""
    return f"{score:.2f}" if round(score, 2) >= 0.10 else f"{score:.3f}"


def score_words(score: float) -> str:
    """The band of the score as ``score_number`` shows it, so words and number never disagree (0.2465 shows
    as 0.25, a strong match)."""
    shown = float(score_number(score))
    return next(words for low, words in SCORE_BANDS if shown >= low)


def score_phrase(score: float) -> str:
    """"Strong match (0.25)": the band and the number, the one wording of a score."""
    return f"{score_words(score).capitalize()} ({score_number(score)})"


def summary(score: float, *, signals: dict[str, float], shared: list[str], sectors: list[str], offers: list[str],
            type_fit: str | None, projects: list[dict], worked_with: list[str], has_past_projects: bool = True,
            distance: str | None = None) -> str:
    """One line: the score in words, then the reasons that ranked it, strongest first, and how far away the match
    is (``distance``: "same city", "12 km away"). Without past projects, similar past work is read from the
    profile's own sentences, and the summary says so."""
    parts = [score_phrase(score)]
    example = f"past project '{projects[0]['title']}'" if projects else None
    for name, weight in signals.items():
        if weight <= 0:
            continue
        if name in ("meaning", "similar_past_work") and example:
            parts.append(f"{_SIGNAL_WORDS[name]}, e.g. {example}")
            example = None  # named once
        elif name == "key_terms" and shared:
            parts.append("both mention " + ", ".join(shared[:5]))
        elif name == "worked_with_matches" and worked_with:
            parts.append("has worked with " + ", ".join(worked_with[:2]))
        elif name == "type_fit" and type_fit:
            parts.append(type_fit)
        elif name == "similar_past_work" and not has_past_projects:
            parts.append(_PROFILE_PAST_WORK)
        elif name in _SIGNAL_WORDS:
            parts.append(_SIGNAL_WORDS[name])
    if offers:
        parts.append("offers " + ", ".join(f"'{o}'" for o in offers[:3]) + " that the query needs")
    if sectors:
        parts.append("shares the sector" + ("s " if len(sectors) > 1 else " ") + ", ".join(sectors))
    if len(parts) == 1 and shared:
        parts.append("both mention " + ", ".join(shared[:5]))
    if distance:
        parts.append(distance)
    return parts[0] + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "") + "."
