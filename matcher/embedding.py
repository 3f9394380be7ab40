"""Embedding: the model one process shares, and one tenant's embedding work with it.

``SharedModel`` loads the encoder on first use, once per process, for every tenant's engine. ``Embedder``
holds one tenant's caches of sentences embedded alone (past project titles, query titles, the sentences of
rows stored without sentence vectors) and of free-text query vectors, and builds the ``EmbeddingRecord`` of each written document,
reusing the stored one wherever the text and the model are unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from matcher.encoder import Encoder, default_model_path, matrix_from_bytes, matrix_to_bytes, model_fingerprint, to_bytes
from matcher.lru import Lru
from matcher.past_work import distinct_titles
from matcher.settings import Settings
from matcher.text import entity_text, text_hash
from models.enums import EntityKind
from models.store import EmbeddingRecord, Store

log = logging.getLogger(__name__)

_SENTENCE_CACHE = 50_000
_LARGE_WRITE = 32  # texts to embed in one write
_CHUNK = 256  # documents embedded at once
EXPLAIN_SENTENCES = 40  # description sentences kept per profile, for explanations


class SharedModel:
    """The encoder of one process, shared by every tenant's engine: loaded on first use, once.

    Its name (the fingerprint stored embeddings and snapshots are checked against) is known without loading it,
    and its dimension once it is loaded or a snapshot of its vectors was read: a query for a stored id, whose
    vectors are all stored, never loads the model (a one-off command answers in a second or two)."""

    def __init__(self, encoder: Encoder | None = None):
        self.encoder = encoder  # None until loaded
        self._name = encoder.name if encoder is not None else None
        self.dim = encoder.dim if encoder is not None else None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Encoder:
        if self.encoder is None:
            with self._lock:
                if self.encoder is None:
                    self.encoder = Encoder(settings.model, batch_size=settings.encode_batch_size,
                                           runtime=settings.encoder_runtime, models_dir=settings.export_dir,
                                           threads=settings.torch_threads)
                    self._name, self.dim = self.encoder.name, self.encoder.dim
        return self.encoder

    def name(self, settings: Settings) -> str:
        if self._name is None:
            path = settings.model or default_model_path()
            self._name = model_fingerprint(path) if Path(path).is_dir() else self.get(settings).name
        return self._name


def _cached(cache: Lru, items: list[str], compute, key=lambda item: item) -> list[np.ndarray]:
    """The vector of each item: held in ``cache`` under ``key(item)``, else one of those ``compute(missing items)``
    gives (then held)."""
    keys = [key(item) for item in items]
    known = cache.get_many(keys)
    missing = {k: item for k, item in zip(keys, items) if k not in known}
    if missing:
        known.update(zip(missing, compute(list(missing.values()))))
    cache.put_many((k, known[k]) for k in keys)
    return [known[k] for k in keys]


class Embedder:
    """One tenant's embedding: its caches of sentence and query vectors, and the embeddings of the documents it
    writes."""

    def __init__(self, settings: Settings, store: Store, model: SharedModel):
        self.settings = settings
        self.store = store
        self.model = model
        self._sentences = Lru(lambda: _SENTENCE_CACHE)  # sentence -> vector
        # Per tenant, not per process: how fast a query answers says nothing of another tenant's queries.
        self._queries = Lru(lambda: settings.query_cache)  # text hash -> vector

    @property
    def encoder(self) -> Encoder:
        return self.model.get(self.settings)

    @property
    def model_name(self) -> str:
        """The model's fingerprint, without loading it."""
        return self.model.name(self.settings)

    @property
    def dim(self) -> int:
        """The model's dimension (loading it when no snapshot of its vectors has told it)."""
        return self.model.dim or self.encoder.dim

    def sentence_vectors(self, sentences: list[str]) -> np.ndarray:
        """Vectors of sentences embedded alone (for rows stored without sentence vectors), cached per process."""
        if not sentences:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.vstack(_cached(self._sentences, sentences, self.encoder.encode_sentences))

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors of free-text queries, cached by text hash (MATCHER_QUERY_CACHE): ``encoder.encode`` over the first
        MATCHER_QUERY_WINDOWS windows of a long text (0: all)."""
        if not texts:
            return np.zeros((0, self.encoder.dim), np.float32)
        windows = self.settings.query_windows or None
        return np.vstack(_cached(self._queries, texts, lambda todo: self.encoder.encode(todo, max_windows=windows),
                                 key=text_hash))

    def forget_sentences(self) -> None:
        """Drop the cache (sentences are cached by their text: keep none of a deleted row's)."""
        self._sentences.clear()

    def project_vectors(self, doc: dict, kind: EntityKind = EntityKind.organisations) -> bytes | None:
        """The titles stored embedded alone with a document: an organisation's past project titles; a challenge's
        own title (what past work is compared with when it is the query)."""
        titles = distinct_titles(doc) if kind is EntityKind.organisations else [t for t in [doc.get("title", "").strip()] if t]
        return matrix_to_bytes(self.sentence_vectors(titles)) if titles else None

    def stored_title_vector(self, doc: dict) -> np.ndarray | None:
        """A stored challenge's title vector, as written with it (None when it was stored without one)."""
        record = self.store.embeddings_of(EntityKind.challenges, [doc["id"]]).get(doc["id"])
        if (record is None or record.project_vectors is None or record.model != self.model_name
                or record.text_hash != text_hash(entity_text(EntityKind.challenges, doc))):
            return None
        return matrix_from_bytes(record.project_vectors, self.dim)[0]

    def for_write(self, kind: EntityKind, docs: list[dict], progress=None) -> list[EmbeddingRecord]:
        """Embeddings for documents, reusing the stored one wherever the text and model are unchanged."""
        texts = [entity_text(kind, d) for d in docs]
        stored = self.store.embeddings_of(kind, [d["id"] for d in docs])
        model = self.encoder.name
        records: list[EmbeddingRecord | None] = []
        todo = []
        for i, (doc, text) in enumerate(zip(docs, texts)):
            old = stored.get(doc["id"])
            if old is not None and old.text_hash == text_hash(text) and old.model == model:
                records.append(old)
            else:
                records.append(None)
                todo.append(i)
        # A large write is rare and long: let it use every core (MATCHER_BULK_TORCH_THREADS) while it embeds.
        large = len(todo) >= _LARGE_WRITE
        with self.encoder.threads(self.settings.bulk_torch_threads) if large else nullcontext():
            fresh = self.records([docs[i] for i in todo], [texts[i] for i in todo], progress)
            for i, record in zip(todo, fresh):
                records[i] = record if kind is EntityKind.organisations else dataclasses.replace(
                    record, project_vectors=self.project_vectors(docs[i], kind))
            if kind is EntityKind.organisations:
                # Past project titles, embedded alone and cached by text: a title many profiles share costs once.
                self.sentence_vectors(list(dict.fromkeys(t for d in docs for t in distinct_titles(d)))[:_SENTENCE_CACHE])
                records = [dataclasses.replace(r, project_vectors=self.project_vectors(d)) for r, d in zip(records, docs)]
        if progress is not None and len(todo) < len(docs):
            progress(len(docs) - len(todo))
        return records  # type: ignore[return-value]

    def stale_records(self, kind: EntityKind, force: bool = False, progress=None) -> dict[str, EmbeddingRecord]:
        """Fresh embeddings of every stored entity whose embedding is missing, of another model or (force) any."""
        ids = [row.id for row in self.store.vectors(kind) if force or row.vector is None or row.model != self.encoder.name]
        docs = list(self.store.get_many(kind, ids).values())
        records = self.records(docs, [entity_text(kind, d) for d in docs], progress)
        return {doc["id"]: record for doc, record in zip(docs, records)}

    def records(self, docs: list[dict], texts: list[str], progress=None) -> list[EmbeddingRecord]:
        """Embed documents (given their profile texts), a chunk at a time: the text's vector, and its
        description's sentence vectors."""
        records = []
        for start in range(0, len(docs), _CHUNK):
            chunk = docs[start : start + _CHUNK]
            vectors, sentences = self.encoder.encode_with_sentences(texts[start : start + _CHUNK])
            for doc, text, vector, pairs in zip(chunk, texts[start : start + _CHUNK], vectors, sentences):
                described = [(s, v) for s, v in pairs if s in doc["description"]][:EXPLAIN_SENTENCES]
                records.append(
                    EmbeddingRecord(
                        to_bytes(vector),
                        self.encoder.name,
                        text_hash(text),
                        [s for s, _ in described] or None,
                        matrix_to_bytes(np.vstack([v for _, v in described])) if described else None,
                    )
                )
            if progress is not None:
                progress(len(chunk))
        return records

    def embed_past_work(self, ids: list[str]) -> None:
        """Embed the past project titles of organisations stored without them (by an older version), and store
        them as a reindex does: logged, so every process picks them up."""
        log.info("embedding the past project titles of %d organisations", len(ids))
        kind = EntityKind.organisations
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            docs, stored = self.store.get_many(kind, chunk), self.store.embeddings_of(kind, chunk)
            records = {i: dataclasses.replace(stored[i], project_vectors=self.project_vectors(docs[i]))
                       for i in chunk if i in docs and i in stored}
            self.store.set_embeddings(kind, records)
