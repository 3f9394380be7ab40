"""Enumerations of the domain: organisation types, partnership forms, challenge status."""
from enum import Enum


class OrgType(str, Enum):
    startup = "startup"
    sme = "sme"
    large_company = "large_company"
    research_institute = "research_institute"
    university = "university"
    public_authority = "public_authority"  # city departments, municipalities, regional agencies
    non_profit = "non_profit"
    citizen_group = "citizen_group"
    intermediary = "intermediary"
    other = "other"


class PartnershipForm(str, Enum):
    public_private_partnership = "public_private_partnership"
    research_cooperation = "research_cooperation"
    technical_cooperation = "technical_cooperation"
    subcontracting = "subcontracting"
    licensing = "licensing"
    joint_venture = "joint_venture"
    pilot_testbed = "pilot_testbed"
    procurement = "procurement"
    investment = "investment"
    other = "other"


class ChallengeStatus(str, Enum):
    open = "open"
    closed = "closed"


class EntityKind(str, Enum):
    """The two kinds of entity that are stored, embedded and matched."""

    organisations = "organisations"
    challenges = "challenges"
