"""The live indexes of one tenant: vectors, BM25, track records and past work, kept in sync with the store.

Each process holds its own. They load from their snapshots (or are built from the store), then replay the
store's change log; before every search ``sync`` compares the process's sequence number with the store's (one
small query) and replays the changes when they differ, so a write through any process is matched by every
other at once, and a deleted entity never comes back. ``stale`` counts the stored rows left out for want of
an embedding of this model (``Engine.reindex`` repairs them).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import numpy as np

from matcher import arrays_file, places
from matcher.embedding import Embedder
from matcher.encoder import from_bytes, matrix_from_bytes
from matcher.hybrid import Corpus
from matcher.index import SnapshotError, VectorIndex, remove_leftovers
from matcher.lexical import LexicalIndex
from matcher.lru import Lru
from matcher.past_work import PastWork, distinct_titles
from matcher.sentence_index import SentenceIndex
from matcher.settings import Settings
from matcher.text import entity_text
from matcher.track_record import TrackRecords
from models.enums import EntityKind
from models.store import Store

log = logging.getLogger(__name__)

KINDS = (EntityKind.organisations, EntityKind.challenges)
TRACKED = EntityKind.organisations  # the kind whose past projects are indexed: track records and past work
_BATCH = 2000  # stored rows read at once
TEXT_SNAPSHOT_FORMAT = 1


class LiveIndex:
    def __init__(self, settings: Settings, store: Store, tenant: str, embedder: Embedder):
        self.settings = settings
        self.store = store
        self.tenant = tenant
        self.embedder = embedder
        self.indexes: dict[EntityKind, VectorIndex] = {}
        self.lexical: dict[EntityKind, LexicalIndex] = {}
        self.records = TrackRecords()  # organisations' track records and co-partnership graph
        self.past_work = PastWork()  # organisations' past project titles, as vectors
        self.sentences: dict[EntityKind, SentenceIndex] = {}  # each profile's sentence vectors
        self.stale: dict[EntityKind, int] = {kind: 0 for kind in KINDS}
        self.synced_seq = -1
        self._explained = Lru(lambda: self.settings.explain_cache)  # (kind, num) -> see ``explained``
        self._lock = threading.RLock()
        self._changes_since_snapshot = 0

    @property
    def lock(self) -> threading.RLock:
        """Held while the indexes change (load, sync, snapshots), and by a match while it reads them."""
        return self._lock

    def snapshot_path(self, kind: EntityKind):
        return self.settings.index_dir / self.tenant / f"{kind.value}.snapshot.npz"

    def snapshot_key(self) -> str:
        return f"{self.embedder.model_name}|{self.store.store_uid()}|{self.tenant}"

    # --- loading --------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the indexes from their snapshots (or build them from the store), then catch up with the store."""
        with self._lock:
            key = self.snapshot_key()
            try:
                loaded = {kind: VectorIndex.load(self.snapshot_path(kind), model=key, dim=self.embedder.model.dim) for kind in KINDS}
                if any(seq > self.store.current_seq() for _, seq in loaded.values()):
                    raise SnapshotError("a snapshot is ahead of the store")
                self.indexes = {kind: index for kind, (index, _) in loaded.items()}
                self.embedder.model.dim = self.indexes[KINDS[0]].dim  # a snapshot of this model's vectors: its dimension
                # Replaying from the older snapshot's seq is harmless for the newer one: a replay is idempotent.
                self.synced_seq = min(seq for _, seq in loaded.values())
                if self._load_text_indexes(key, {seq for _, seq in loaded.values()}):
                    rebuilt = self._add_places() > 0
                else:  # a snapshot made before places were indexed is rewritten with them; likewise the text indexes
                    self._build_text_indexes()
                    rebuilt = True
            except SnapshotError as exc:
                log.info("building the indexes from the store (%s)", exc)
                self.synced_seq = self.store.current_seq()
                self.indexes = {kind: self._build(kind) for kind in KINDS}
                self._build_text_indexes()
                rebuilt = True
            applied = self.sync()
            self._count_stale()
            if rebuilt or applied:  # the next process to start (a one-off command) replays nothing of it again
                self.save_snapshots()

    def ensure_ready(self) -> None:
        if not self.indexes:
            self.load()

    def _current(self, kind: EntityKind, nums: list[int] | None = None) -> Iterator:
        """The stored rows (``StoredVector``) with an embedding of this model (all of the kind, or of ``nums``)."""
        return (r for r in self.store.vectors(kind, nums) if r.vector is not None and r.model == self.embedder.model_name)

    def _build(self, kind: EntityKind) -> VectorIndex:
        index, batch = VectorIndex(self.embedder.dim), []
        for row in self._current(kind):
            batch.append(row)
            if len(batch) >= 5000:
                self._upsert_vectors(index, batch)
                batch = []
        if batch:
            self._upsert_vectors(index, batch)
        return index

    @staticmethod
    def _upsert_vectors(index: VectorIndex, rows: list) -> None:
        index.upsert([r.num for r in rows], np.vstack([from_bytes(r.vector) for r in rows]),
                     [{"id": r.id, **r.meta, **places.coordinates(r.data)} for r in rows])

    def _build_text_indexes(self) -> int:
        """BM25, track records and past work of every indexed row, read from the store (not snapshotted); and the
        coordinates of the rows of a snapshot made before places were indexed. Returns how many rows got those."""
        self.lexical = {kind: LexicalIndex() for kind in KINDS}
        self.sentences = {kind: SentenceIndex(self.embedder.dim) for kind in KINDS}
        self.records = TrackRecords()
        self.past_work = PastWork()
        unembedded: list[str] = []  # organisations stored before past project titles were embedded
        placed = 0
        for kind in KINDS:
            index, batch = self.indexes[kind], []
            for row in self.store.vectors(kind):
                if row.num in index.meta:
                    batch.append(row)
                    if "lat" not in index.meta[row.num]:
                        index.meta[row.num].update(places.coordinates(row.data))
                        placed += 1
                    if kind is TRACKED and row.project_vectors is None and distinct_titles(row.data):
                        unembedded.append(row.id)
                if len(batch) >= _BATCH:
                    self.add_text(kind, batch)
                    batch = []
            self.add_text(kind, batch)
        if unembedded:
            self.embedder.embed_past_work(unembedded)
        return placed

    def _add_places(self) -> int:
        """The coordinates of the rows of a snapshot made before places were indexed; how many rows got them."""
        placed = 0
        for kind in KINDS:
            meta = self.indexes[kind].meta
            for row in self.store.vectors(kind, [num for num, m in meta.items() if "lat" not in m]):
                if row.num in meta:
                    meta[row.num].update(places.coordinates(row.data))
                    placed += 1
        return placed

    def add_text(self, kind: EntityKind, rows: list) -> None:
        """Index stored rows (``StoredVector``) in BM25 and, for organisations, the track records and past work."""
        if not rows:
            return
        nums, docs = [r.num for r in rows], [r.data for r in rows]
        self.lexical[kind].upsert(nums, [entity_text(kind, d) for d in docs])
        dim, model = self.embedder.dim, self.embedder.model_name
        self.sentences[kind].upsert(nums, [
            np.frombuffer(r.sentence_vectors, "<f2").reshape(-1, dim)
            if r.sentence_vectors is not None and r.model == model else None for r in rows])
        if kind is TRACKED:
            self.records.upsert(nums, docs)
            self.past_work.upsert(nums, docs, [
                matrix_from_bytes(r.project_vectors, self.embedder.dim) if r.project_vectors is not None else None
                for r in rows
            ])

    def _remove_text(self, kind: EntityKind, nums: list[int]) -> None:
        self.lexical[kind].remove(nums)
        self.sentences[kind].remove(nums)
        if kind is TRACKED:
            self.records.remove(nums)
            self.past_work.remove(nums)

    def corpus(self, kind: EntityKind) -> Corpus:
        """What hybrid ranking reads of one kind."""
        tracked = kind is TRACKED
        return Corpus(self.indexes[kind], self.lexical[kind], self.records if tracked else None, self.sentences[kind],
                      self.past_work if tracked else None)

    def explained(self, kind: EntityKind, nums: list[int]) -> dict[int, tuple[dict, list[str] | None, np.ndarray | None]]:
        """What explaining a match reads of its row: the document, and its stored sentences with their vectors
        (None without any of this model's). The rows explained last are kept decoded (``MATCHER_EXPLAIN_CACHE``),
        as the same profiles are explained again and again; a change to a row drops it (``_replay``)."""
        out = {num: row for (_, num), row in self._explained.get_many((kind, n) for n in nums).items()}
        missing = [n for n in nums if n not in out]
        if missing:
            docs = self.store.get_by_nums(kind, missing)
            stored = self.store.sentence_vectors(kind, list(docs))
            model, dim = self.embedder.model_name, self.embedder.dim
            for num, doc in docs.items():
                entry = stored.get(num)
                sentences, vectors = (entry[0], matrix_from_bytes(entry[1], dim)) if entry and entry[2] == model else (None, None)
                out[num] = (doc, sentences, vectors)
            self._explained.put_many(((kind, num), out[num]) for num in docs)
        return out

    def _count_stale(self) -> None:
        for kind in KINDS:
            self.stale[kind] = self.store.count(kind) - len(self.indexes[kind])

    def text_snapshot_path(self):
        return self.settings.index_dir / self.tenant / "text.snapshot"

    def save_snapshots(self) -> None:
        """Write the vector indexes' snapshots and, with the same seq, the text indexes' (BM25, sentence vectors,
        track records, past work: ``matcher.arrays_file``, which workers map and share)."""
        with self._lock:
            key = self.snapshot_key()
            for kind, index in self.indexes.items():
                index.save(self.snapshot_path(kind), seq=self.synced_seq, model=key)
            arrays = {f"{TRACKED.value}.records.{k}": v for k, v in self.records.to_arrays().items()}
            arrays.update({f"{TRACKED.value}.past_work.{k}": v for k, v in self.past_work.to_arrays().items()})
            for kind in KINDS:
                arrays.update({f"{kind.value}.lexical.{k}": v for k, v in self.lexical[kind].to_arrays().items()})
                nums, counts, vectors = self.sentences[kind].arrays()
                arrays.update({f"{kind.value}.sentences.nums": nums, f"{kind.value}.sentences.counts": counts,
                               f"{kind.value}.sentences.vectors": vectors})
            path = self.text_snapshot_path()
            remove_leftovers(path)
            arrays_file.write(path, {"format": TEXT_SNAPSHOT_FORMAT, "seq": self.synced_seq, "model": key,
                                     "rows": {kind.value: len(self.indexes[kind]) for kind in KINDS}}, arrays)
            self._changes_since_snapshot = 0

    def _load_text_indexes(self, key: str, seqs: set[int]) -> bool:
        """The text indexes from their snapshot, when it was written with the vector snapshots just loaded
        (``seqs``); False (nothing loaded) when it is missing, unreadable or of another state."""
        path = self.text_snapshot_path()
        remove_leftovers(path)
        try:
            header, arrays = arrays_file.read(path, writable=(f"{TRACKED.value}.past_work.vectors",))
        except FileNotFoundError:
            return False
        except arrays_file.ArraysFileError as exc:
            log.info("rebuilding the text indexes from the store (%s)", exc)
            return False
        rows = {kind.value: len(self.indexes[kind]) for kind in KINDS}
        if header.get("format") != TEXT_SNAPSHOT_FORMAT or header.get("model") != key or {header.get("seq")} != seqs \
                or header.get("rows") != rows:
            log.info("rebuilding the text indexes from the store (their snapshot is of another state)")
            return False

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}

        self.records = TrackRecords.from_arrays(part(f"{TRACKED.value}.records."))
        self.past_work = PastWork.from_arrays(part(f"{TRACKED.value}.past_work."))
        self.lexical = {kind: LexicalIndex.from_arrays(part(f"{kind.value}.lexical.")) for kind in KINDS}
        self.sentences = {kind: SentenceIndex.from_arrays(self.indexes[kind].dim, **part(f"{kind.value}.sentences."))
                          for kind in KINDS}
        return True

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
        self._explained.discard((kind, num) for kind, nums in touched.items() for num in nums)
        for kind, rows_touched in touched.items():
            nums = list(rows_touched)
            index, present = self.indexes[kind], set()
            for start in range(0, len(nums), _BATCH):
                rows = list(self._current(kind, nums[start : start + _BATCH]))
                if rows:
                    self._upsert_vectors(index, rows)
                    self.add_text(kind, rows)
                present.update(r.num for r in rows)
            gone = [n for n in nums if n not in present]
            index.remove(gone)
            self._remove_text(kind, gone)
            if gone:  # sentences embedded on the fly are cached by their text: keep none of a deleted row's
                self.embedder.forget_sentences()
        return sum(len(nums) for nums in touched.values())
