"""The matching engine: store + encoder + one vector index per entity kind, kept in sync.

Usable without the web service. Each process holds its own indexes; before every search it compares its
sequence number with the store's (one small query) and replays the store's change log when they differ,
so a write through any process is matched by every other at once, and a deleted entity never comes back.

An engine serves one tenant: its store, indexes, snapshots and caches hold that tenant's rows and no other's.
``Engine.for_tenant`` gives the engine of another tenant in the same process, sharing the model and the
database connections; so a match can only ever rank the asking tenant's organisations and challenges.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext

import numpy as np

from matcher import explain
from matcher.encoder import Encoder, from_bytes, matrix_from_bytes, matrix_to_bytes, to_bytes
from matcher.hybrid import Corpus, Ranked, past_work_vector, rank
from matcher.index import Filter, SnapshotError, VectorIndex
from matcher.lexical import LexicalIndex
from matcher.ranker import DEFAULT_PATH as DEFAULT_RANKER, Ranker
from matcher.past_work import PastWork, distinct_titles
from matcher.track_record import TrackRecords
from matcher.settings import Settings
from matcher.text import entity_text, profile_terms_text, query_title, split_sentences, text_hash
from models.enums import EntityKind, OrgType
from models.schemas import InvalidInput, MatchRequest, validate_entities, validate_entity
from models.store import EmbeddingRecord, NotFoundError, Store, check_tenant

log = logging.getLogger(__name__)

KINDS = (EntityKind.organisations, EntityKind.challenges)
_SENTENCE_CACHE = 50_000
_MAX_EXPLAIN_SENTENCES = 40
_LARGE_WRITE = 32  # texts to embed in one write


class _Family:
    """What the engines of one process share: the model and each tenant's engine."""

    def __init__(self, encoder: Encoder | None):
        self.encoder = encoder
        self.engines: dict[str, "Engine"] = {}
        self.lock = threading.RLock()


class Engine:
    def __init__(self, settings: Settings, store: Store | None = None, encoder: Encoder | None = None,
                 tenant: str | None = None, *, _family: _Family | None = None):
        self.settings = settings
        self.tenant = tenant or settings.default_tenant
        if store is None and settings.db_url.startswith("sqlite:///"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = (store or Store(settings.db_url)).scoped(self.tenant)
        self._family = _family or _Family(encoder)
        self._family.engines.setdefault(self.tenant, self)
        self.indexes: dict[EntityKind, VectorIndex] = {}
        self.lexical: dict[EntityKind, LexicalIndex] = {}
        self.records = TrackRecords()  # organisations' track records and co-partnership graph
        self.past_work = PastWork()  # organisations' past project titles, as vectors
        self._ranker: Ranker | None = None
        self.stale: dict[EntityKind, int] = {kind: 0 for kind in KINDS}
        self.synced_seq = -1
        self._lock = threading.RLock()
        self._sentences: OrderedDict[str, np.ndarray] = OrderedDict()
        self._changes_since_snapshot = 0

    # --- set-up ---------------------------------------------------------------------------------

    @property
    def _encoder(self) -> Encoder | None:
        return self._family.encoder

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use, once per process (shared by every tenant's engine)."""
        family = self._family
        if family.encoder is None:
            with family.lock:
                if family.encoder is None:
                    family.encoder = Encoder(self.settings.model, batch_size=self.settings.encode_batch_size)
        return family.encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._family.encoder is not None

    def open(self) -> "Engine":
        """Create the tables if needed."""
        self.store.create_all()
        return self

    def for_tenant(self, tenant: str) -> "Engine":
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

    def all_tenants(self) -> list["Engine"]:
        """The engine of every tenant the store knows (and of any made in this process)."""
        return [self.for_tenant(t) for t in dict.fromkeys([*self.store.tenant_ids(), *self._family.engines])]

    def _snapshot_path(self, kind: EntityKind):
        return self.settings.index_dir / self.tenant / f"{kind.value}.snapshot.npz"

    def _snapshot_key(self) -> str:
        return f"{self.encoder.name}|{self.store.store_uid()}|{self.tenant}"

    def load_indexes(self) -> None:
        """Load the indexes from their snapshots (or build them from the store), then catch up with the store."""
        with self._lock:
            key = self._snapshot_key()
            try:
                loaded = {kind: VectorIndex.load(self._snapshot_path(kind), model=key, dim=self.encoder.dim) for kind in KINDS}
                if any(seq > self.store.current_seq() for _, seq in loaded.values()):
                    raise SnapshotError("a snapshot is ahead of the store")
                self.indexes = {kind: index for kind, (index, _) in loaded.items()}
                self._build_text_indexes()
                # Replaying from the older snapshot's seq is harmless for the newer one: a replay is idempotent.
                self.synced_seq = min(seq for _, seq in loaded.values())
                rebuilt = False
            except SnapshotError as exc:
                log.info("building the indexes from the store (%s)", exc)
                self.synced_seq = self.store.current_seq()
                self.indexes = {kind: self._build(kind) for kind in KINDS}
                self._build_text_indexes()
                rebuilt = True
            self.sync()
            self._count_stale()
            if rebuilt:
                self.save_snapshots()

    def _build(self, kind: EntityKind) -> VectorIndex:
        index = VectorIndex(self.encoder.dim)
        nums, vectors, metas = [], [], []
        for row in self.store.vectors(kind):
            if row.vector is None or row.model != self.encoder.name:
                continue
            nums.append(row.num)
            vectors.append(from_bytes(row.vector))
            metas.append({"id": row.id, **row.meta})
            if len(nums) >= 5000:
                index.upsert(nums, np.vstack(vectors), metas)
                nums, vectors, metas = [], [], []
        if nums:
            index.upsert(nums, np.vstack(vectors), metas)
        return index

    def _build_text_indexes(self) -> None:
        """BM25, track records and past work of every indexed row, read from the store (not snapshotted)."""
        self.lexical = {kind: LexicalIndex() for kind in KINDS}
        self.records = TrackRecords()
        self.past_work = PastWork()
        unembedded: list[str] = []  # organisations stored before past project titles were embedded
        for kind in KINDS:
            index, batch = self.indexes[kind], []
            for row in self.store.vectors(kind):
                if row.num in index.meta:
                    batch.append(row)
                    if kind is EntityKind.organisations and row.project_vectors is None and distinct_titles(row.data):
                        unembedded.append(row.id)
                if len(batch) >= 2000:
                    self._add_text(kind, batch)
                    batch = []
            self._add_text(kind, batch)
        if unembedded:
            self._embed_past_work(unembedded)

    def _embed_past_work(self, ids: list[str]) -> None:
        """Embed the past project titles of organisations stored without them (by an older version), and store
        them as a reindex does: logged, so every process picks them up."""
        log.info("embedding the past project titles of %d organisations", len(ids))
        kind = EntityKind.organisations
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            docs, stored = self.store.get_many(kind, chunk), self.store.embeddings_of(kind, chunk)
            records = {i: dataclasses.replace(stored[i], project_vectors=self._project_vectors(docs[i]))
                       for i in chunk if i in docs and i in stored}
            self.store.set_embeddings(kind, records)

    def _project_vectors(self, doc: dict) -> bytes | None:
        titles = distinct_titles(doc)
        return matrix_to_bytes(self._sentence_vectors(titles)) if titles else None

    def _add_text(self, kind: EntityKind, rows: list) -> None:
        """Index stored rows (``StoredVector``) in BM25 and, for organisations, the track records and past work."""
        if not rows:
            return
        nums, docs = [r.num for r in rows], [r.data for r in rows]
        self.lexical[kind].upsert(nums, [entity_text(kind, d) for d in docs])
        if kind is EntityKind.organisations:
            self.records.upsert(nums, docs)
            self.past_work.upsert(nums, docs, [
                matrix_from_bytes(r.project_vectors, self.encoder.dim) if r.project_vectors is not None else None
                for r in rows
            ])

    def _remove_text(self, kind: EntityKind, nums: list[int]) -> None:
        self.lexical[kind].remove(nums)
        if kind is EntityKind.organisations:
            self.records.remove(nums)
            self.past_work.remove(nums)

    @property
    def ranker(self) -> Ranker:
        if self._ranker is None:
            self._ranker = Ranker.load(self.settings.ranker or DEFAULT_RANKER)
        return self._ranker

    def corpus(self, kind: EntityKind) -> Corpus:
        """What hybrid ranking reads of one kind."""

        def sentence_vectors(nums: list[int]) -> dict[int, np.ndarray]:
            stored = self.store.sentence_vectors(kind, nums)
            return {
                num: matrix_from_bytes(blob, self.encoder.dim)
                for num, (_, blob, model) in stored.items()
                if model == self.encoder.name
            }

        return Corpus(
            self.indexes[kind],
            self.lexical[kind],
            self.records if kind is EntityKind.organisations else None,
            sentence_vectors,
            self.past_work if kind is EntityKind.organisations else None,
        )

    def _count_stale(self) -> None:
        for kind in KINDS:
            self.stale[kind] = self.store.count(kind) - len(self.indexes[kind])

    def save_snapshots(self) -> None:
        with self._lock:
            key = self._snapshot_key()
            for kind, index in self.indexes.items():
                index.save(self._snapshot_path(kind), seq=self.synced_seq, model=key)
            self._changes_since_snapshot = 0

    def ensure_ready(self) -> None:
        if not self.indexes:
            self.load_indexes()

    # --- keeping in sync ------------------------------------------------------------------------

    def sync(self) -> int:
        """Apply the store's changes since the last sync; returns how many were applied."""
        self.ensure_ready()
        store_seq = self.store.current_seq()
        if store_seq == self.synced_seq:
            return 0
        with self._lock:
            # Every write takes the next seq, whichever tenant's it is; this tenant's changes are the ones to
            # replay, and every change up to store_seq has committed (writers commit in seq order).
            changes = self.store.changes_since(self.synced_seq)
            applied = self._replay(changes)
            self.synced_seq = max(self.synced_seq, store_seq, *(c.seq for c in changes))
            self._changes_since_snapshot += applied
            if applied:
                self._count_stale()
            if self._changes_since_snapshot >= self.settings.snapshot_every:
                self.save_snapshots()
            return applied

    def _replay(self, changes) -> int:
        """Bring the index rows these changes touched to the store's current state: a row that exists with
        an embedding of this model is (re)added, anything else (deleted, or stale) is removed."""
        touched: dict[EntityKind, dict[int, None]] = {kind: {} for kind in KINDS}
        for change in changes:
            touched[change.kind][change.num] = None
        for kind, rows_touched in touched.items():
            nums = list(rows_touched)
            index, present = self.indexes[kind], set()
            for start in range(0, len(nums), 2000):
                rows = [
                    r for r in self.store.vectors(kind, nums[start : start + 2000])
                    if r.vector is not None and r.model == self.encoder.name
                ]
                if rows:
                    index.upsert([r.num for r in rows], np.vstack([from_bytes(r.vector) for r in rows]),
                                 [{"id": r.id, **r.meta} for r in rows])
                    self._add_text(kind, rows)
                present.update(r.num for r in rows)
            gone = [n for n in nums if n not in present]
            index.remove(gone)
            self._remove_text(kind, gone)
            if gone:  # sentences embedded on the fly are cached by their text: keep none of a deleted row's
                self._sentences.clear()
        return sum(len(nums) for nums in touched.values())

    def status(self) -> dict:
        """What /readyz reports: ready when the model is loaded and every index matches the store."""
        store_seq = self.store.current_seq()
        ready = self.encoder_loaded and bool(self.indexes) and self.synced_seq == store_seq and not any(self.stale.values())
        return {
            "ready": ready,
            "model": self._encoder.name if self._encoder else None,
            "store_seq": store_seq,
            "index_seq": self.synced_seq,
            "indexed": {k.value: len(i) for k, i in self.indexes.items()},
            "stale_embeddings": {k.value: n for k, n in self.stale.items()},
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

    def _embed(self, kind: EntityKind, docs: list[dict], progress=None) -> list[EmbeddingRecord]:
        """Embeddings for documents, reusing the stored one wherever the text and model are unchanged."""
        texts = [entity_text(kind, d) for d in docs]
        hashes = [text_hash(t) for t in texts]
        stored = self.store.embeddings_of(kind, [d["id"] for d in docs])
        model = self.encoder.name
        records: list[EmbeddingRecord | None] = []
        todo = []
        for i, (doc, h) in enumerate(zip(docs, hashes)):
            old = stored.get(doc["id"])
            if old is not None and old.text_hash == h and old.model == model:
                records.append(old)
            else:
                records.append(None)
                todo.append(i)
        step = 256
        # A large write is rare and long: let it use every core (MATCHER_BULK_TORCH_THREADS) while it embeds.
        large = len(todo) >= _LARGE_WRITE
        with self.encoder.threads(self.settings.bulk_torch_threads) if large else nullcontext():
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                for i, record in zip(chunk, self._records([docs[i] for i in chunk], [texts[i] for i in chunk])):
                    records[i] = record
                if progress is not None:
                    progress(len(chunk))
            if kind is EntityKind.organisations:
                # Past project titles, embedded alone and cached by text: a title many profiles share costs once.
                self._sentence_vectors(list(dict.fromkeys(t for d in docs for t in distinct_titles(d)))[:_SENTENCE_CACHE])
                records = [dataclasses.replace(r, project_vectors=self._project_vectors(d)) for r, d in zip(records, docs)]
        if progress is not None and len(todo) < len(docs):
            progress(len(docs) - len(todo))
        return records  # type: ignore[return-value]

    def _records(self, docs: list[dict], texts: list[str]) -> list[EmbeddingRecord]:
        """Embed documents (given their profile texts): the text's vector, and its description's sentence vectors."""
        vectors, sentences = self.encoder.encode_with_sentences(texts)
        records = []
        for doc, text, vector, pairs in zip(docs, texts, vectors, sentences):
            described = [(s, v) for s, v in pairs if s in doc["description"]][:_MAX_EXPLAIN_SENTENCES]
            records.append(
                EmbeddingRecord(
                    to_bytes(vector),
                    self.encoder.name,
                    text_hash(text),
                    [s for s, _ in described] or None,
                    matrix_to_bytes(np.vstack([v for _, v in described])) if described else None,
                )
            )
        return records

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

    def write(self, kind: EntityKind, docs: list[dict], *, create_only=False, single=False, progress=None) -> list[dict]:
        """Embed and store validated documents in one transaction, then bring this process's index up to date."""
        if kind is EntityKind.challenges:
            self._check_owners(docs, single)
        records = self._embed(kind, docs, progress)
        stored = self.store.upsert(kind, list(zip(docs, records)), create_only=create_only)
        self.sync()
        return stored

    def create(self, kind: EntityKind, data) -> dict:
        doc = validate_entity(kind, data)
        return self.write(kind, [doc], create_only=True, single=True)[0]

    def upsert_many(self, kind: EntityKind, items: list) -> list[dict]:
        return self.write(kind, validate_entities(kind, items))

    def get(self, kind: EntityKind, entity_id: str) -> dict:
        doc = self.store.get(kind, entity_id)
        if doc is None:
            raise NotFoundError(kind, entity_id)
        return doc

    def replace(self, kind: EntityKind, entity_id: str, data) -> dict:
        self.get(kind, entity_id)
        doc = validate_entity(kind, data, entity_id=entity_id)
        return self.write(kind, [doc], single=True)[0]

    def patch(self, kind: EntityKind, entity_id: str, changes) -> dict:
        """Merge the given top-level fields into the stored entity (null removes an optional one)."""
        current = self.get(kind, entity_id)
        if not isinstance(changes, dict):
            raise InvalidInput([{"field": "body", "problem": "must be a JSON object"}])
        merged = {k: v for k, v in current.items() if k not in ("created_at", "updated_at")}
        merged.update(changes)
        merged = {k: v for k, v in merged.items() if v is not None}
        doc = validate_entity(kind, merged, entity_id=entity_id)
        return self.write(kind, [doc], single=True)[0]

    def delete(self, kind: EntityKind, entity_id: str) -> None:
        """Delete an entity and erase it everywhere this service keeps it (the right to erasure): the store
        (its row, its digest log, mentions in other digests and job results, its id in the change log), this
        process's indexes and caches, and the index snapshots on disk, rewritten at once. Other processes drop
        it from their indexes (and caches, see _replay) at their next sync, before they answer anything."""
        on_delete = None
        if kind is EntityKind.organisations:
            on_delete = lambda conn, seq: self.store.detach_owner(conn, seq, entity_id)  # noqa: E731
        if not self.store.delete(kind, entity_id, on_delete=on_delete):
            raise NotFoundError(kind, entity_id)
        self.sync()  # its replay drops the row from the indexes and clears the sentence cache
        self.save_snapshots()

    def reindex(self, force: bool = False, progress=None) -> dict:
        """Embed every entity whose stored embedding is missing, stale or (with force) any; rewrite snapshots."""
        counts = {}
        for kind in KINDS:
            todo = {}
            for row in self.store.vectors(kind):
                if force or row.vector is None or row.model != self.encoder.name:
                    todo[row.id] = row
            docs = list(self.store.get_many(kind, list(todo)).values())
            records = {}
            for start in range(0, len(docs), 256):
                chunk = docs[start : start + 256]
                texts = [entity_text(kind, d) for d in chunk]
                records.update((doc["id"], record) for doc, record in zip(chunk, self._records(chunk, texts)))
                if progress is not None:
                    progress(len(chunk))
            counts[kind.value] = self.store.set_embeddings(kind, records)
        self.indexes = {}
        self.load_indexes()
        self.save_snapshots()
        return counts

    # --- matching -------------------------------------------------------------------------------

    def _query(self, request: MatchRequest, text_vectors: dict[str, np.ndarray]):
        """The query vector, the query's own document (None for free text) and its kind."""
        q = request.query
        if q.text is not None:
            vector = text_vectors.get(q.text)
            if vector is None:
                vector = self.encoder.encode([q.text])[0]
            return vector, None, None
        kind = EntityKind.challenges if q.challenge_id is not None else EntityKind.organisations
        entity_id = q.challenge_id if q.challenge_id is not None else q.organisation_id
        doc = self.store.get(kind, entity_id)
        if doc is None:
            raise NotFoundError(kind, entity_id, field=f"query.{'challenge_id' if kind is EntityKind.challenges else 'organisation_id'}")
        num = self.indexes[kind].num_of.get(entity_id)
        vector = self.indexes[kind].vector(num) if num is not None else self.encoder.encode([entity_text(kind, doc)])[0]
        return vector, doc, kind

    def match(self, request: MatchRequest) -> dict:
        return self.match_many([request])[0]

    def match_many(self, requests: list[MatchRequest], text_vectors: dict[str, np.ndarray] | None = None) -> list[dict]:
        """Ranked, explained matches for each request, best first (``text_vectors``: query embeddings known already)."""
        self.sync()
        text_vectors = dict(text_vectors or {})
        texts = list(dict.fromkeys(r.query.text for r in requests if r.query.text is not None and r.query.text not in text_vectors))
        if texts:
            text_vectors.update(zip(texts, self.encoder.encode(texts)))
        return [self._match_one(r, text_vectors) for r in requests]

    def _match_one(self, request: MatchRequest, text_vectors) -> dict:
        started = time.perf_counter()
        target = EntityKind(request.target)
        vector, query_doc, query_kind = self._query(request, text_vectors)
        index = self.indexes[target]
        exclude = [index.num_of[i] for i in request.filters.exclude_ids if i in index.num_of]
        if query_doc is not None and query_kind is target and query_doc["id"] in index.num_of:
            exclude.append(index.num_of[query_doc["id"]])  # never match an entity with itself
        if query_kind is EntityKind.challenges and target is EntityKind.organisations:
            owner = query_doc.get("owner_id")
            if owner in index.num_of:
                exclude.append(index.num_of[owner])  # nor a challenge with the organisation that posted it
        flt = Filter(
            types=tuple(request.filters.types),
            countries=tuple(request.filters.countries),
            status=None if target is EntityKind.organisations or request.filters.status == "any" else request.filters.status,
            exclude_nums=tuple(exclude),
        )
        query_text = request.query.text if query_doc is None else entity_text(query_kind, query_doc)
        title_vector = self._title_vector(request, query_doc, query_kind, target)
        ranked = rank(self.corpus(target), vector, query_text, flt, request.k, self.ranker,
                      self._type_fit(query_doc, query_kind, target), title_vector)
        docs = self.store.get_by_nums(target, [r.num for r in ranked]) if request.explain else {}
        explanations = (self._explain(vector, title_vector, request, query_doc, query_kind, target, ranked, docs)
                        if request.explain else {})
        matches = []
        for r in ranked:
            meta = index.meta[r.num]
            match = {
                "id": meta["id"],
                "name": meta["name"],
                "type": meta.get("type") if target is EntityKind.organisations else None,
                "country": meta.get("country"),
                "score": round(r.score, 4),
                "explanation": explanations.get(r.num),
            }
            if target is EntityKind.challenges:
                match["status"] = meta.get("status")
            matches.append(match)
        return {"matches": matches, "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    def _title_vector(self, request: MatchRequest, query_doc, query_kind, target) -> np.ndarray | None:
        """The query's title embedded alone, for the past-work signal (organisation targets only): a challenge's
        title, or the first line of a free text that has more lines; None when there is none."""
        if target is not EntityKind.organisations:
            return None
        if query_doc is None:
            title = query_title(request.query.text) or ""
        else:
            title = (query_doc.get("title") or "").strip() if query_kind is EntityKind.challenges else ""
        return self._sentence_vectors([title])[0] if title else None

    def _type_fit(self, query_doc, query_kind, target):
        """Which candidates the challenge side prefers by organisation type (None when nobody says)."""
        if query_doc is None:
            return None
        if query_kind is EntityKind.challenges and target is EntityKind.organisations:
            preferred = set(query_doc.get("preferred_partner_types") or [])
            meta = self.indexes[target].meta
            return (lambda num: meta[num].get("type") in preferred) if preferred else None
        if query_kind is EntityKind.organisations and target is EntityKind.challenges:
            org_type, meta = query_doc.get("type"), self.indexes[target].meta
            return lambda num: org_type in (meta[num].get("preferred_partner_types") or [])
        return None

    def _sentence_vectors(self, sentences: list[str]) -> np.ndarray:
        """Vectors of sentences embedded alone (for rows stored without sentence vectors), cached per process."""
        if not sentences:
            return np.zeros((0, self.encoder.dim), np.float32)
        missing = [s for s in dict.fromkeys(sentences) if s not in self._sentences]
        if missing:
            self._sentences.update(zip(missing, self.encoder.encode_sentences(missing)))
        result = np.vstack([self._sentences[s] for s in sentences])
        for s in sentences:
            self._sentences.move_to_end(s)
        while len(self._sentences) > _SENTENCE_CACHE:  # evict only after this request has what it needs
            self._sentences.popitem(last=False)
        return result

    def _explain(self, vector, title_vector, request, query_doc, query_kind, target, ranked: list[Ranked], docs) -> dict[int, dict]:
        """Why each match ranked where it did, from the signals the ranker used (past work: by the title's vector)."""
        query_text = request.query.text if query_doc is None else profile_terms_text(query_doc)
        query_terms = explain.key_terms(query_text)
        per_hit = {}
        stored = self.store.sentence_vectors(target, [r.num for r in ranked if r.num in docs])
        missing: list[str] = []
        for r in ranked:
            doc = docs.get(r.num)
            if doc is None:  # deleted between search and fetch
                continue
            entry = stored.get(r.num)
            if entry is not None and entry[2] == self.encoder.name:
                per_hit[r.num] = (doc, entry[0], matrix_from_bytes(entry[1], self.encoder.dim))
            else:  # stored before sentence vectors existed: embed the description's sentences now
                sentences = split_sentences(doc["description"])[:_MAX_EXPLAIN_SENTENCES]
                per_hit[r.num] = (doc, sentences, None)
                missing.extend(sentences)
        fresh = dict(zip(missing, self._sentence_vectors(missing))) if missing else {}
        meta = self.indexes[target].meta
        out = {}
        for r in ranked:
            if r.num not in per_hit:
                continue
            doc, sentences, vectors = per_hit[r.num]
            if vectors is None:
                vectors = np.vstack([fresh[s] for s in sentences]) if sentences else np.zeros((0, self.encoder.dim), np.float32)
            closest = explain.closest_sentence(vector, sentences, vectors)
            shared = explain.shared_terms(query_terms, profile_terms_text(doc))
            query_sectors = {s.lower() for s in (query_doc or {}).get("sectors", [])}
            sectors = [s for s in doc.get("sectors", []) if s.lower() in query_sectors]
            offers, type_fit = self._fit(request, query_doc, query_kind, target, doc)
            titles = dict(self.past_work.closest_titles(r.num, past_work_vector(vector, title_vector), limit=1000)) if target is EntityKind.organisations else None
            projects = explain.related_projects(vector, query_terms, doc.get("past_projects") or [], sentences, vectors,
                                                title_similarity=titles)
            worked_with = [meta[n]["name"] for n in r.linked[:3] if n in meta]
            signals = explain.signals(r.contributions)
            out[r.num] = {
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
        return out

    @staticmethod
    def _fit(request, query_doc, query_kind, target, doc) -> tuple[list[str], str | None]:
        """What one side offers of what the other needs, and whether the organisation type is wanted (in words)."""
        if query_doc is None:  # free text: the offers that speak to it
            return explain.phrase_overlap([request.query.text], doc.get("offers", [])), None
        if target is EntityKind.organisations:
            offers = explain.phrase_overlap(query_doc.get("needs", []), doc.get("offers", []))
            preferred = query_doc.get("preferred_partner_types") or [] if query_kind is EntityKind.challenges else []
            org_type = doc["type"]
        else:  # an organisation (or a challenge) looking at challenges
            offers = explain.phrase_overlap(doc.get("needs", []), query_doc.get("offers", []))
            preferred = doc.get("preferred_partner_types") or []
            org_type = query_doc.get("type")
        type_fit = None
        if preferred and org_type:
            label = explain.type_label(OrgType(org_type).value)
            type_fit = (
                f"{explain.article(label)} {label} is a partner type the challenge prefers"
                if org_type in preferred
                else f"the challenge prefers {', '.join(explain.type_label(p) for p in preferred)}, not {explain.article(label)} {label}"
            )
        return offers, type_fit
