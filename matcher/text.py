"""Profile text: what is embedded for an organisation or a challenge, and how it splits into sentences."""
from __future__ import annotations

import hashlib
import re

from models.enums import EntityKind

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"'(\[A-Z0-9À-ÖØ-Þ])|\n+")


def _label(value: str) -> str:
    return value.replace("_", " ")


def _place(doc: dict) -> str:
    parts = [doc.get("city"), doc.get("region"), doc.get("country")]
    return ", ".join(p for p in parts if p)


def organisation_text(doc: dict) -> str:
    """Name, type, description, offers, needs, sectors and place, as sentences."""
    parts = [f"{doc['name']} ({_label(doc['type'])})."]
    parts.append(doc["description"].strip())
    if doc.get("offers"):
        parts.append("Offers: " + "; ".join(doc["offers"]) + ".")
    if doc.get("needs"):
        parts.append("Needs: " + "; ".join(doc["needs"]) + ".")
    if doc.get("sectors"):
        parts.append("Sectors: " + ", ".join(doc["sectors"]) + ".")
    if place := _place(doc):
        parts.append(f"Based in {place}.")
    return "\n".join(parts)


def challenge_text(doc: dict) -> str:
    """Title, description, needs, sectors, preferred partner types and place, as sentences."""
    parts = [doc["title"].strip().rstrip(".") + "."]
    parts.append(doc["description"].strip())
    if doc.get("needs"):
        parts.append("Needs: " + "; ".join(doc["needs"]) + ".")
    if doc.get("sectors"):
        parts.append("Sectors: " + ", ".join(doc["sectors"]) + ".")
    if doc.get("preferred_partner_types"):
        parts.append("Looking for: " + ", ".join(_label(t) for t in doc["preferred_partner_types"]) + ".")
    if place := _place(doc):
        parts.append(f"Located in {place}.")
    return "\n".join(parts)


def profile_terms_text(doc: dict) -> str:
    """What an entity says of its work, without labels like its type or place: for shared key terms."""
    parts = [doc.get("title", ""), doc["description"]]
    for key in ("offers", "needs", "sectors", "tags"):
        parts.extend(doc.get(key) or [])
    return "\n".join(p for p in parts if p)


def entity_text(kind: EntityKind, doc: dict) -> str:
    return organisation_text(doc) if kind is EntityKind.organisations else challenge_text(doc)


def query_title(text: str) -> str | None:
    """The title of a free-text query: its first line, when more text follows it (a call text sent as "title,
    newline, description", as a challenge is composed); None for a text of one line, which is all title."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) > 1 else None


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) of a text, stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


_CURRENCY = r"(?:EUR|DKK|PLN|SEK|NOK|CHF|GBP|USD|CZK|HUF|RON|BGN|ISK)"
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
# Sentences that say how to apply rather than what the work is: money, deadlines and dates, eligibility,
# contact details. A bare year ("the 2027-2028 winter") or a word like "contact with local cyclists" is work.
_ADMINISTRATIVE = re.compile("|".join((
    # budget: an amount of money, or a budget/funding "of" something
    rf"(?:\b{_CURRENCY}\b|[€£$])\s?\d|\d(?:\s?(?:k|m|million|thousand|bn|billion))?\s?(?:\b{_CURRENCY}\b|\beuros?\b|€)",
    r"\b(?:budget|funding|co-?funding|subsidy|grant|financial support) (?:of|is|was|will be)\b",
    # dates and deadlines
    r"\b(?:deadline|closing date|submission date|due date)s?\b|\bno later than\b",
    r"\b(?:apply|submit|submitted|register)\b[^.;]{0,40}\b(?:by|before|until)\b",
    r"\b(?:the |this )?call (?:is |was |will be )?(?:closes|closed|opens|opened|open until|closing)\b",
    rf"\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH} \d{{4}}\b|\b{_MONTH} \d{{1,2}},? \d{{4}}\b|\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b",
    # eligibility
    r"\beligib|\bapplicants? (?:must|should|shall|need|needs|are required|is required)\b|\bwho (?:can|may) apply\b",
    r"\bapplications? (?:must|should|shall|are to|will be accepted)\b|\b(?:only|not)\b[^.;]{0,60}\b(?:may|can) apply\b",
    # contact details
    r"[\w.+-]+@[\w-]+\.[\w.-]+|\b(?:https?://|www\.)\S+|\b(?:tel|phone|telephone)\b\.?\s*:|\+\d[\d\s()/-]{7,}\d",
    r"\bcontact (?:us|person|point|details)\b|\bfor (?:more|further) information\b|\bget in touch\b",
    r"\bplease (?:contact|write|e-?mail|call|send)\b|\bquestions (?:can|may|should) be (?:sent|addressed|directed)\b",
)), re.IGNORECASE)


def is_administrative(sentence: str) -> bool:
    """Whether a sentence is about budget, dates and deadlines, eligibility or contact details: something no
    partner covers, so it is never an aspect of a challenge nor the sentence an explanation quotes."""
    return _ADMINISTRATIVE.search(sentence) is not None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
