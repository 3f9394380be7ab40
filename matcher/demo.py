"""The demo data that ships with the project: a fictional regional innovation ecosystem."""
from __future__ import annotations

from pathlib import Path

from models.enums import EntityKind

DEMO_DIR = Path(__file__).parent / "demo_data"
DEMO_FILES = {
    EntityKind.organisations: DEMO_DIR / "organisations.jsonl",
    EntityKind.challenges: DEMO_DIR / "challenges.jsonl",
}


def load_demo(engine, progress: bool = True) -> dict:
    """Import the demo organisations, then the challenges (whose owners are organisations)."""
    from matcher.records import import_file

    counts = {}
    for kind in (EntityKind.organisations, EntityKind.challenges):
        report = import_file(engine, kind, DEMO_FILES[kind], progress=progress)
        if report.errors:
            raise RuntimeError(f"demo data {DEMO_FILES[kind]} is broken: " + "; ".join(map(str, report.errors[:5])))
        counts[kind.value] = report.written
    return counts
