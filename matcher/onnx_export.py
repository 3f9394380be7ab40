"""The ONNX export of the encoder's model: made once per model into ``<MATCHER_MODELS_DIR>/<model name>/``, checked
against torch, and reused by every later start.

``prepare`` (in the process that first needs the encoder) finds ``model.onnx`` and ``model.json`` (the export's
facts and its check) there; when they are missing, of another ONNX Runtime version, or the file is not the one
checked (changed, cut short), it runs the export in a child process, ``python -m matcher.onnx_export``. The
child loads sentence-transformers, exports the transformer with ``torch.onnx.export`` (opset 17, dynamic batch
and sequence), then encodes a fixed set of texts (short lines, a long text of several windows, sentence vectors
from token embeddings) with both runtimes through ``Encoder``: every cosine must be at least 0.9999, and the
windows the same. Torch never runs in the caller, so a gunicorn master that loads the encoder before forking
leaves its workers no torch threads to hang on, and holds no torch at all.

A model that cannot be exported or fails the check is recorded as such (``"ok": false`` and why), and the
encoder runs it on torch without trying again; delete the folder to try again.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

from models.files import FILE_MODE, open_private, private_dir

log = logging.getLogger(__name__)

FORMAT = 1  # of model.json; another number exports again
MODEL_FILE, RECORD_FILE = "model.onnx", "model.json"
MIN_COSINE = 0.9999
POOLINGS = {"mean_tokens": "mean", "mean": "mean", "cls_token": "cls", "cls": "cls"}
CHECK_TEXTS = [
    "smart street lighting",
    "",
    "Leak detection in drinking water networks, 3 pilots (2023-2025).",
    "Énergie solaire pour les bâtiments publics; Wärmepumpen für Schulen.",
    "VoltGrid (startup).\nWe build battery storage controllers. Our software balances solar peaks. "
    "Offers: BMS, grid services. Needs: pilot sites. Based in Eindhoven, NL.",
    " ".join(f"Work package {i} develops {topic} with partners in {place}." for i, (topic, place) in enumerate(
        [("acoustic leak detection", "Lyon"), ("battery management systems", "Tallinn"),
         ("digital twins of water networks", "Porto"), ("low-carbon concrete", "Graz"),
         ("precision irrigation", "Almería"), ("hydrogen storage", "Rotterdam")] * 12)),
]


def folder_for(models_dir: Path, model_name: str) -> Path:
    return Path(models_dir) / re.sub(r"[^\w.@-]+", "_", model_name)


def pooling(model_path: str | Path) -> str:
    """The model's pooling ("mean" or "cls") from its sentence-transformers configuration; ValueError when the
    model is anything other than a transformer, that pooling and optionally a normalisation."""
    folder = Path(model_path)
    modules = json.loads((folder / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise ValueError(f"modules {kinds} (only Transformer, Pooling and Normalize are exported)")
    config = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    modes = ({config["pooling_mode"]} if isinstance(config.get("pooling_mode"), str) else
             {k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v is True})
    if len(modes) != 1 or next(iter(modes)) not in POOLINGS:
        raise ValueError(f"pooling {sorted(modes)} (only mean or cls pooling is exported)")
    if not (folder / "tokenizer.json").is_file():
        raise ValueError("no tokenizer.json (the ONNX runtime tokenises with it)")
    return POOLINGS[next(iter(modes))]


def prepare(model_path: str, model_name: str, models_dir: Path) -> tuple[Path, dict] | None:
    """The checked export of a model and its record, exporting it first when needed; None when the model is to run
    on torch (it cannot be exported, failed the check, or the export could not be made here: logged)."""
    try:
        pooling(model_path)
        folder = private_dir(folder_for(models_dir, model_name))
        with _exclusive(folder / ".lock"):  # one process exports; the others wait, then read its record
            record = _record(folder)
            if record is None:
                log.info("exporting the model %s to ONNX in %s (once)", model_name, folder)
                _export_in_child(model_path, folder)
                record = _record(folder)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("MATCHER_ENCODER_RUNTIME=onnx: %s; the model runs on torch", exc)
        return None
    if record is None or not record["ok"]:
        why = record["reason"] if record else "the export failed (see the log above)"
        log.warning("MATCHER_ENCODER_RUNTIME=onnx: %s; the model runs on torch (delete %s to export again)", why, folder)
        return None
    return folder / MODEL_FILE, record


@contextlib.contextmanager
def _exclusive(path: Path):
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record(folder: Path) -> dict | None:
    """The record of the export in ``folder`` when it still holds: same format and ONNX Runtime version (for a
    failure, the same torch and transformers too), and for a model that passed, the very file that was checked."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    versions = _versions()
    if record.get("format") != FORMAT or record.get("versions", {}).get("onnxruntime") != versions["onnxruntime"]:
        return None
    if not record.get("ok") and record["versions"] != versions:  # a failure is tried again with other libraries
        return None
    if record.get("ok") and _digest(folder / MODEL_FILE) != record.get("sha256"):
        log.warning("%s is not the file that was checked (changed or damaged): exporting it again", folder / MODEL_FILE)
        return None
    return record


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("onnxruntime", "torch", "transformers", "sentence-transformers")}


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _export_in_child(model_path: str, folder: Path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-m", "matcher.onnx_export", str(model_path), str(folder)], env=env,
                   check=False, timeout=1800)


def export(model_path: str, folder: Path) -> dict:
    """Export, check, and write ``model.onnx`` (only when it passed) and ``model.json``: the child's work."""
    from matcher.encoder import TorchModel

    tmp = folder / f"model.{os.getpid()}.tmp.onnx"
    record: dict = {"format": FORMAT, "versions": _versions(),
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    try:
        reference = TorchModel(model_path)
        record.update(_export(reference, model_path, tmp))
        os.chmod(tmp, FILE_MODE)
        cosine, reason = check(model_path, reference, tmp, record)
        record.update(ok=reason is None, min_cosine=round(cosine, 8), reason=reason)
        if reason is None:
            record["sha256"] = _digest(tmp)
            os.replace(tmp, folder / MODEL_FILE)
    except Exception as exc:  # recorded: the model then runs on torch
        log.exception("the ONNX export failed")
        record.update(ok=False, reason=f"the ONNX export failed: {exc!r}")
    finally:
        tmp.unlink(missing_ok=True)
    written = folder / f"{RECORD_FILE}.{os.getpid()}.tmp"
    with os.fdopen(open_private(written), "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(written, folder / RECORD_FILE)
    return record


def _export(reference, model_path: str, file: Path) -> dict:
    """``torch.onnx.export`` of the transformer: its inputs -> token embeddings (its last hidden state)."""
    import warnings

    import torch

    transformer = reference.model[0].auto_model
    with contextlib.suppress(Exception):  # the plain attention traces into portable ONNX operators
        transformer.set_attn_implementation("eager")
    inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in reference.tokenizer.model_input_names]

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, *args):
            return self.transformer(**dict(zip(inputs, args))).last_hidden_state

    sample = reference.tokenizer(["a short text", "a somewhat longer text to pad the first"], padding=True,
                                 return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in (*inputs, "token_embeddings")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbeddings().eval(), tuple(sample[n] for n in inputs), str(file), input_names=inputs,
                          output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False,
                          do_constant_folding=True)
    tokenizer = reference.tokenizer
    return {"inputs": inputs, "dim": reference.dim, "max_length": reference.max_length, "pooling": pooling(model_path),
            "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token), "opset": 17}


def check(model_path: str, reference, file: Path, record: dict) -> tuple[float, str | None]:
    """Encode ``CHECK_TEXTS`` with torch and with the export: the lowest cosine over text vectors (whole and
    truncated) and sentence vectors, and why the export fails (None when it passes)."""
    from matcher.encoder import Encoder, OnnxModel

    torch_encoder = Encoder.with_backend(model_path, reference)
    onnx_encoder = Encoder.with_backend(model_path, OnnxModel(file, record, Path(model_path) / "tokenizer.json"))
    for text in CHECK_TEXTS:
        if torch_encoder.windows(text, with_pieces=True) != onnx_encoder.windows(text, with_pieces=True):
            return -1.0, f"the tokenizers disagree on {text[:40]!r}"
    if len(torch_encoder.windows(CHECK_TEXTS[-1])) < 2:
        return -1.0, "the long check text fits one window"
    pairs = [(torch_encoder.encode(CHECK_TEXTS), onnx_encoder.encode(CHECK_TEXTS)),
             (torch_encoder.encode_sentences(CHECK_TEXTS), onnx_encoder.encode_sentences(CHECK_TEXTS))]
    (torch_vectors, torch_sentences), (onnx_vectors, onnx_sentences) = (
        e.encode_with_sentences(CHECK_TEXTS) for e in (torch_encoder, onnx_encoder))
    pairs.append((torch_vectors, onnx_vectors))
    for a, b in zip(torch_sentences, onnx_sentences):
        if [s for s, _ in a] != [s for s, _ in b]:
            return -1.0, "the sentence vectors differ in number"
        if a:
            pairs.append((np.vstack([v for _, v in a]), np.vstack([v for _, v in b])))
    cosine = min(float(np.min(np.sum(a * b, axis=1))) for a, b in pairs)
    return cosine, None if cosine >= MIN_COSINE else f"the export's vectors differ from torch's (cosine {cosine:.6f})"


def main(argv: list[str] | None = None) -> int:
    model_path, folder = argv or sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = export(model_path, Path(folder))
    log.info("ONNX export of %s: %s", model_path,
             f"checked, min cosine {record['min_cosine']:.6f}" if record["ok"] else record["reason"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
