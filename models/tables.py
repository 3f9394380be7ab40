"""SQLAlchemy tables.

Each entity row holds its JSON document, a few columns for filtering, and its embedding (float32 bytes)
with the model name and the hash of the text that was embedded, so an unchanged profile is never embedded
again and a model change is detected.

``num`` is a surrogate integer key that never changes for an id: the vector indexes use it as their row id.
Every write takes the next value of ``sync_state.seq`` (a row lock, so writers commit in sequence order)
and records which entities it touched in ``changes``; a process that holds an index replays ``changes``
after the sequence number it last saw, which is how several worker processes agree.
"""
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from models.enums import EntityKind

metadata = MetaData()

DEFAULT_TENANT = "demo"  # the tenant of rows written before tenants existed (MATCHER_DEFAULT_TENANT's default)


def _tenant_column():
    # Every row of tenant data names its tenant; stores made before tenants existed put theirs in "demo".
    return Column("tenant", String(64), nullable=False, server_default=DEFAULT_TENANT, index=True)


def _entity_columns():
    return [
        Column("num", Integer, primary_key=True, autoincrement=True),
        _tenant_column(),
        Column("id", String(128), nullable=False),
        Column("data", JSON, nullable=False),
        Column("country", String(2), index=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("text_hash", String(64)),
        Column("embedding", LargeBinary),
        Column("embedding_model", String(500)),
        # The description's sentences and their vectors (float16), made in the same forward pass as the
        # embedding: explanations pick the sentence closest to a query without running the model again.
        Column("sentences", JSON),
        Column("sentence_vectors", LargeBinary),
        # The distinct titles of an organisation's past projects, each embedded alone (float16, one row per
        # title, in the order they first appear): what the ranker's "similar past work" signal reads.
        Column("project_vectors", LargeBinary),
    ]


organisations = Table(
    "organisations",
    metadata,
    *_entity_columns(),
    Column("type", String(32), nullable=False, index=True),
    Column("email_opt_in", Boolean, nullable=False, default=False),
    UniqueConstraint("tenant", "id", name="uq_organisations_tenant_id"),
    sqlite_autoincrement=True,
)

challenges = Table(
    "challenges",
    metadata,
    *_entity_columns(),
    Column("status", String(16), nullable=False, index=True),
    Column("owner_id", String(128), index=True),
    Column("deadline", Date),
    UniqueConstraint("tenant", "id", name="uq_challenges_tenant_id"),
    sqlite_autoincrement=True,
)

# One row (id = 1): the sequence number of the last committed write.
sync_state = Table(
    "sync_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("store_uid", String(36), nullable=False),
)

changes = Table(
    "changes",
    metadata,
    Column("change_id", Integer, primary_key=True, autoincrement=True),
    Column("seq", Integer, nullable=False),
    _tenant_column(),
    Column("kind", String(16), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("num", Integer, nullable=False),
    Column("op", String(8), nullable=False),  # "upsert" | "delete"
    sqlite_autoincrement=True,
)
Index("ix_changes_seq", changes.c.seq)

ENTITY_TABLES = {EntityKind.organisations: organisations, EntityKind.challenges: challenges}

# E-mail digests: one row per message composed for an organisation (matcher/digest.py). ``matches`` lists what
# it carries ([{"kind", "id"}]); a "sent" or "pending" row's matches are never mailed to that organisation again.
# A "pending" row left by an interrupted run is sent as it is (same Message-ID) by the next run. ``errors``
# records every failed attempt. Rows go with their organisation, in the transaction that deletes it.
digest_messages = Table(
    "digest_messages",
    metadata,
    Column("num", Integer, primary_key=True, autoincrement=True),
    _tenant_column(),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("organisation_id", String(128), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # "pending" | "sent" | "failed" | "cancelled"
    Column("matches", JSON, nullable=False),  # [{"kind", "id"}]
    Column("message", LargeBinary, nullable=False),  # the RFC 5322 bytes, resent unchanged after an interruption
    Column("attempts", Integer, nullable=False, default=0),
    Column("errors", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    sqlite_autoincrement=True,
)

# Batch-match jobs: their state and their results live in the store, so they survive a restart.
# A job worker holds a job while ``lease_until`` is in the future and renews it after every chunk.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    _tenant_column(),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # queued | running | done | failed
    Column("params", JSON, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("message", String(2000)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
)

# One row per finished query of a job: its result rows (or a problem), written with the job's progress.
job_results = Table(
    "job_results",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("result", JSON, nullable=False),
)

# Tenants: the platforms this service holds data for. Every entity, job and digest row names one, and an API
# key sees only its own tenant's rows (service/auth.py).
tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# API keys (models/keys.py): only a SHA-256 of the secret is stored; the key itself is shown once, at creation.
# ``rate_limit`` (requests a minute) overrides MATCHER_RATE_LIMIT for this key.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the public part of the key: mk_<id>_<secret>
    Column("tenant", String(64), nullable=False, index=True),
    Column("scopes", JSON, nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("label", String(200)),
    Column("rate_limit", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)


# Idempotency keys (models/idempotency.py): the first answer to a create sent with an Idempotency-Key, written in the
# transaction of the create itself and kept 24 hours; a retry with the same key and request gets it back.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("num", Integer, primary_key=True, autoincrement=True),
    _tenant_column(),
    Column("idempotency_key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # SHA-256 of the request's method, path and body
    Column("status", Integer, nullable=False),  # the answer's HTTP status ...
    Column("response", JSON, nullable=False),  # ... and its body, as stored (before a key's view of it)
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    UniqueConstraint("tenant", "idempotency_key", name="uq_idempotency_keys_tenant_key"),
    sqlite_autoincrement=True,
)
