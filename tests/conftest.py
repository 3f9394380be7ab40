"""Shared fixtures: real settings on a temporary data dir, the real model (loaded once), a real SQLite file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every test's data dir is new; the model's ONNX export (about 90 MB, made and checked once per model) is shared by
# all of them and by the services the tests start, and kept between runs. tests/matcher/test_onnx_encoder.py makes
# exports of its own.
os.environ.setdefault("MATCHER_MODELS_DIR", str(ROOT / "var" / "test-models"))

from matcher.encoder import Encoder  # noqa: E402
from matcher.engine import Engine  # noqa: E402
from matcher.settings import Settings  # noqa: E402

# The real CORDIS data beside the checkout (as in CI); MATCHER_CORDIS_DIR points elsewhere.
CORDIS = Path(os.environ.get("MATCHER_CORDIS_DIR", ROOT.parent / "shared" / "data" / "cordis"))


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The default model, loaded once for the whole run."""
    return Encoder()


# MATCHER_TEST_DB_URL runs the storage, engine and API tests on another database (e.g. PostgreSQL);
# each test starts from empty tables. By default every test gets its own SQLite file.
TEST_DB_URL = os.environ.get("MATCHER_TEST_DB_URL", "")


def empty_db_url(data_dir: Path) -> str:
    """The URL of an empty store: a new SQLite file in data_dir (its default place), or MATCHER_TEST_DB_URL
    with its tables dropped."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not TEST_DB_URL:
        return f"sqlite:///{data_dir / 'matcher.db'}"
    from sqlalchemy import create_engine

    from models.tables import metadata

    engine = create_engine(TEST_DB_URL)
    metadata.drop_all(engine)
    engine.dispose()
    return TEST_DB_URL


@pytest.fixture
def db_url(tmp_path) -> str:
    return empty_db_url(tmp_path / "data")


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    # Without API keys (MATCHER_AUTH=off): tests/service/test_auth.py tests the keys, scopes and tenants.
    return Settings.from_env(data_dir=tmp_path / "data", db_url=db_url, load_demo=False, snapshot_every=500, auth=False)


@pytest.fixture
def engine(settings, encoder) -> Engine:
    return Engine(settings, encoder=encoder).open()


@pytest.fixture
def app(settings, engine):
    from service import create_app

    app = create_app(settings, engine)
    app.config.update(TESTING=True)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def org(id: str, name: str, description: str, type: str = "sme", **fields) -> dict:
    return {"id": id, "name": name, "type": type, "description": description, **fields}


# A small ecosystem with clear right answers.
ORGS = [
    org("voltgrid", "VoltGrid", "Battery storage controllers that balance solar peaks in microgrids and district energy systems.",
        "startup", offers=["battery management systems", "microgrid control"], needs=["pilot site in a municipality"],
        sectors=["smart energy"], country="NL", city="Eindhoven"),
    org("aquasense", "AquaSense", "Acoustic sensors that find leaks in drinking-water pipes before they burst.",
        "sme", offers=["acoustic leak detection", "pipe monitoring"], needs=["water utility partner"],
        sectors=["water"], country="BE", city="Ghent"),
    org("lumen", "Lumen Streets", "Adaptive LED street lighting that dims when roads are empty and reports faults.",
        "sme", offers=["smart street lighting", "lighting control software"], needs=["city lighting department"],
        sectors=["lighting"], country="FR", city="Lyon"),
    org("caremind", "CareMind", "Remote monitoring of elderly patients at home with wearable sensors and nurse dashboards.",
        "startup", offers=["remote patient monitoring", "wearable sensors"], needs=["hospital for clinical validation"],
        sectors=["e-health"], country="DE", city="Munich"),
    org("ghent-energy", "Ghent City Energy Office", "The municipal energy office runs district heating and retrofits public buildings.",
        "public_authority", offers=["pilot site in a municipality", "public building data"],
        needs=["battery storage", "energy community software"], sectors=["smart energy"], country="BE", city="Ghent"),
    org("tu-tampere", "Tampere Energy Systems Lab", "University lab researching battery ageing, grid flexibility and energy storage markets.",
        "university", offers=["battery ageing tests", "grid flexibility models"], needs=["industrial data"],
        sectors=["smart energy"], country="FI", city="Tampere"),
    org("recyclo", "Recyclo", "Collects and refurbishes used lithium batteries from e-bikes for second-life home storage.",
        "startup", offers=["battery refurbishment", "second-life storage"], needs=["collection points"],
        sectors=["circular economy", "smart energy"], country="EL", city="Thessaloniki"),
]


POOL_FIELDS = ("id", "name", "type", "country", "city", "description", "past_projects")


def pool_organisations(n: int) -> list[dict]:
    """The first n real CORDIS organisations of the benchmark pool, in the Organisation shape."""
    import gzip
    import json

    path = CORDIS / "bench" / "pool.jsonl.gz"
    if not path.exists():
        pytest.skip(f"the CORDIS benchmark data is not at {path}")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append({k: row[k] for k in POOL_FIELDS if row.get(k) not in (None, "")})
            if len(out) == n:
                break
    return out
