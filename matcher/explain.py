"""Explanations a person can read, built from the signals that ranked a match.

- the sentence of the matched profile closest to the query (cosine similarity of their embeddings),
- key terms that the query and the match share,
- the sectors they share,
- what the match offers of what the query needs (organisation or challenge queries),
- whether the match's type is one the challenge prefers.
"""
from __future__ import annotations

import re

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

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


def key_terms(text: str) -> dict[str, str]:
    """Folded term -> the first surface form, for the content words of a text."""
    terms: dict[str, str] = {}
    for word in _WORD.findall(text.lower()):
        word = word.strip("-")
        if word in STOP or len(word) < 3:
            continue
        terms.setdefault(_stem(word), word)
    return terms


def shared_terms(query_terms: dict[str, str], text: str, limit: int = 8) -> list[str]:
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
    if not sentences:
        return None
    sims = vectors @ query
    best = int(np.argmax(sims))
    return sentences[best], float(sims[best])


def type_label(org_type: str) -> str:
    return {"sme": "SME"}.get(org_type, org_type.replace("_", " "))


def article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" or label == "SME" else "a"


def score_words(score: float) -> str:
    """The score in words; the same bands the README documents."""
    if score >= 0.70:
        return "very close match"
    if score >= 0.55:
        return "close match"
    if score >= 0.40:
        return "related"
    return "loosely related"


def summary(score: float, *, shared: list[str], sectors: list[str], offers: list[str], type_fit: str | None) -> str:
    parts = [f"{score_words(score).capitalize()} ({score:.2f})"]
    if offers:
        parts.append("offers " + ", ".join(f"'{o}'" for o in offers[:3]) + " that the query needs")
    if sectors:
        parts.append("shares the sector" + ("s " if len(sectors) > 1 else " ") + ", ".join(sectors))
    if shared:
        parts.append("both mention " + ", ".join(shared[:5]))
    if type_fit:
        parts.append(type_fit)
    return parts[0] + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "") + "."
