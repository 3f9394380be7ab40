"""The matching engine of one tenant: its store, live indexes and embedder, and the writes that keep them in sync.

Usable without the web service. ``Engine`` coordinates: it writes validated entities (embedded by
``matcher.embedding``) to the store and brings this process's ``matcher.live_index`` up to date, and it
hands match requests to ``matcher.matching``. Each process holds its own indexes; before every search they
replay the store's change log, so a write through any process is matched by every other at once.

An engine serves one tenant: its store, indexes, snapshots and caches hold that tenant's rows and no other's.
``Engine.for_tenant`` gives the engine of another tenant in the same process, sharing the model and the
database connections; so a match can only ever rank the asking tenant's organisations and challenges.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from matcher.embedding import Embedder, SharedModel
from matcher.encoder import Encoder
from matcher.index import VectorIndex
from matcher.live_index import KINDS, LiveIndex
from matcher.matching import Matcher
from matcher.ranker import DEFAULT_PATH as DEFAULT_RANKER, Ranker
from matcher.settings import Settings
from models.enums import EntityKind
from models.errors import InvalidInput, NotFoundError
from models.files import make_private, private_dir
from models.schemas import MatchRequest, validate_entities, validate_entity
from models.store import Store, check_precondition, check_tenant


class _Family:
    """What the engines of one process share: the model and each tenant's engine."""

    def __init__(self, encoder: Encoder | None):
        self.model = SharedModel(encoder)
        self.engines: dict[str, Engine] = {}
        self.lock = threading.RLock()


class Engine:
    def __init__(self, settings: Settings, store: Store | None = None, encoder: Encoder | None = None,
                 tenant: str | None = None, *, _family: _Family | None = None):
        self.settings = settings
        self.tenant = tenant or settings.default_tenant
        if store is None and settings.db_url.startswith("sqlite:///"):
            private_dir(settings.data_dir)
        self.store = (store or Store(settings.db_url)).scoped(self.tenant)
        self._family = _family or _Family(encoder)
        self._family.engines.setdefault(self.tenant, self)
        self.embedder = Embedder(settings, self.store, self._family.model)
        self.live = LiveIndex(settings, self.store, self.tenant, self.embedder)
        self._ranker: Ranker | None = None

    # --- set-up and tenancy ---------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use, once per process (shared by every tenant's engine)."""
        return self.embedder.encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._family.model.encoder is not None

    @property
    def ranker(self) -> Ranker:
        if self._ranker is None:
            self._ranker = Ranker.load(self.settings.ranker or DEFAULT_RANKER)
        return self._ranker

    def open(self) -> Engine:
        """Create the tables if needed; leave the data dir private (0700, its files 0600), older files too."""
        make_private(self.settings.data_dir)
        self.store.create_all()
        return self

    def for_tenant(self, tenant: str) -> Engine:
        """The engine of ``tenant`` in this process (made on first use; its indexes load on first search)."""
        family = self._family
        engine = family.engines.get(tenant)
        if engine is None:
            check_tenant(tenant)
            with family.lock:
                engine = family.engines.get(tenant)
                if engine is None:
                    self.store.ensure_tenant(tenant)
                    engine = Engine(self.settings, self.store, tenant=tenant, _family=family)
        return engine

    def all_tenants(self) -> list[Engine]:
        """The engine of every tenant the store knows (and of any made in this process)."""
        return [self.for_tenant(t) for t in dict.fromkeys([*self.store.tenant_ids(), *self._family.engines])]

    # --- the live indexes (``matcher.live_index``) --------------------------------------------------

    @property
    def indexes(self) -> dict[EntityKind, VectorIndex]:
        return self.live.indexes

    @property
    def stale(self) -> dict[EntityKind, int]:
        return self.live.stale

    def load_indexes(self) -> None:
        self.live.load()

    def ensure_ready(self) -> None:
        self.live.ensure_ready()

    def sync(self) -> int:
        return self.live.sync()

    def save_snapshots(self) -> None:
        self.live.save_snapshots()

    def status(self) -> dict:
        """What /readyz reports: ready when the model is loaded and every index matches the store."""
        store_seq, live, encoder = self.store.current_seq(), self.live, self._family.model.encoder
        ready = encoder is not None and bool(live.indexes) and live.synced_seq == store_seq and not any(live.stale.values())
        return {
            "ready": ready,
            "model": encoder.name if encoder else None,
            "store_seq": store_seq,
            "index_seq": live.synced_seq,
            "indexed": {k.value: len(i) for k, i in live.indexes.items()},
            "stale_embeddings": {k.value: n for k, n in live.stale.items()},
        }

    def status_all(self) -> dict:
        """The status of every tenant's engine in this process, summed: ready when each of them is."""
        parts = [e.status() for e in self.all_tenants()]
        return {
            "ready": all(p["ready"] for p in parts),
            "model": parts[0]["model"] if parts else None,
            "store_seq": max((p["store_seq"] for p in parts), default=self.store.current_seq()),
            "index_seq": min((p["index_seq"] for p in parts), default=-1),
            "tenants": len(parts),
            "indexed": {k.value: sum(p["indexed"].get(k.value, 0) for p in parts) for k in KINDS},
            "stale_embeddings": {k.value: sum(p["stale_embeddings"][k.value] for p in parts) for k in KINDS},
        }

    # --- writes ---------------------------------------------------------------------------------

    def _check_owners(self, docs: list[dict], single: bool) -> None:
        owners = {d["owner_id"] for d in docs if d.get("owner_id")}
        missing = owners - self.store.existing_ids(EntityKind.organisations, owners)
        if missing:
            details = [
                {"field": "owner_id" if single else f"items[{i}].owner_id", "problem": f"no organisation with id '{d['owner_id']}'"}
                for i, d in enumerate(docs)
                if d.get("owner_id") in missing
            ]
            raise InvalidInput(details, "owner_id names an organisation that is not stored; nothing was written")

    def write(self, kind: EntityKind, docs: list[dict], *, create_only=False, single=False, progress=None,
              on_write=None, if_match=None) -> list[dict]:
        """Embed and store validated documents in one transaction, then bring this process's index up to date.
        ``on_write`` and ``if_match``: see Store.upsert."""
        if kind is EntityKind.challenges:
            self._check_owners(docs, single)
        records = self.embedder.for_write(kind, docs, progress)
        stored = self.store.upsert(kind, list(zip(docs, records)), create_only=create_only, on_write=on_write,
                                   if_match=if_match)
        self.sync()
        return stored

    def create(self, kind: EntityKind, data, on_write=None) -> dict:
        doc = validate_entity(kind, data)
        return self.write(kind, [doc], create_only=True, single=True, on_write=on_write)[0]

    def upsert_many(self, kind: EntityKind, items: list, on_write=None) -> list[dict]:
        return self.write(kind, validate_entities(kind, items), on_write=on_write)

    def get(self, kind: EntityKind, entity_id: str) -> dict:
        doc = self.store.get(kind, entity_id)
        if doc is None:
            raise NotFoundError(kind, entity_id)
        return doc

    def replace(self, kind: EntityKind, entity_id: str, data, if_match=None) -> dict:
        """Replace a stored entity; ``if_match``: the ETags it must have (models.store.check_precondition), checked
        before the work of embedding and again in the write's transaction."""
        check_precondition(kind, entity_id, self.get(kind, entity_id), if_match)
        doc = validate_entity(kind, data, entity_id=entity_id)
        return self.write(kind, [doc], single=True, if_match=if_match)[0]

    def patch(self, kind: EntityKind, entity_id: str, changes, if_match=None) -> dict:
        """Merge the given top-level fields into the stored entity (null removes an optional one); ``if_match``:
        see ``replace``."""
        current = self.get(kind, entity_id)
        check_precondition(kind, entity_id, current, if_match)
        if not isinstance(changes, dict):
            raise InvalidInput([{"field": "body", "problem": "must be a JSON object"}])
        merged = {k: v for k, v in current.items() if k not in ("created_at", "updated_at")}
        merged.update(changes)
        merged = {k: v for k, v in merged.items() if v is not None}
        doc = validate_entity(kind, merged, entity_id=entity_id)
        return self.write(kind, [doc], single=True, if_match=if_match)[0]

    def delete(self, kind: EntityKind, entity_id: str, if_match=None) -> None:
        """Delete an entity and erase it everywhere this service keeps it (the right to erasure): the store
        (its row, its digest log, mentions in other digests and job results, its id in the change log), this
        process's indexes and caches, and the index snapshots on disk, rewritten at once. Other processes drop
        it from their indexes (and caches, see LiveIndex._replay) at their next sync, before they answer anything."""
        on_delete = None
        if kind is EntityKind.organisations:
            on_delete = lambda conn, seq: self.store.detach_owner(conn, seq, entity_id)  # noqa: E731
        if not self.store.delete(kind, entity_id, on_delete=on_delete, if_match=if_match):
            raise NotFoundError(kind, entity_id)
        self.sync()  # its replay drops the row from the indexes and forgets the sentence cache
        self.save_snapshots()

    def reindex(self, force: bool = False, progress=None) -> dict:
        """Embed every entity whose stored embedding is missing, stale or (with force) any; rewrite snapshots."""
        counts = {kind.value: self.store.set_embeddings(kind, self.embedder.stale_records(kind, force, progress))
                  for kind in KINDS}
        self.live.indexes = {}
        self.load_indexes()
        self.save_snapshots()
        return counts

    # --- matching (``matcher.matching``) --------------------------------------------------------------

    def match(self, request: MatchRequest, started: float | None = None) -> dict:
        return self.match_many([request], started=started)[0]

    def match_many(self, requests: list[MatchRequest], text_vectors: dict[str, np.ndarray] | None = None,
                   started: float | None = None) -> list[dict]:
        """Ranked, explained matches for each request, best first (``text_vectors``: query embeddings known already).
        ``took_ms`` counts from ``started`` (``time.perf_counter()`` when the caller took the request), else from
        here: the index sync, encoding the queries, ranking and explaining (``Matcher.match_many``)."""
        started = time.perf_counter() if started is None else started
        self.sync()
        return Matcher(self.live, self.embedder, self.ranker).match_many(requests, text_vectors, started)
