"""The ONNX runtime of the encoder: exported once into the data dir, checked against torch, reused, re-made when
damaged, and giving torch's vectors."""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from matcher import onnx_export
from matcher.encoder import Encoder

LONG = ("We design battery storage controllers for microgrids. " * 40
        + "Our second business is acoustic leak detection in drinking water networks. " * 30)
TEXTS = ["smart street lighting", "VoltGrid (startup).\nWe build battery storage controllers. Our software balances "
         "solar peaks.", "Énergie solaire; Wärmepumpen für Schulen (2024).", LONG]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Encoder:
    """An encoder that exported its model into a new models dir (in a child process, torch never runs here)."""
    return Encoder(runtime="onnx", models_dir=tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def torch_encoder(tmp_path_factory) -> Encoder:
    """MATCHER_ENCODER_RUNTIME=torch: sentence-transformers, as before the ONNX runtime."""
    with pytest.MonkeyPatch.context() as patch:
        models_dir = tmp_path_factory.mktemp("torch")
        patch.setenv("MATCHER_ENCODER_RUNTIME", "torch")
        patch.setenv("MATCHER_MODELS_DIR", str(models_dir))
        encoder = Encoder()
    assert not any(models_dir.iterdir())
    return encoder


def _folder(encoder: Encoder, models_dir: Path) -> Path:
    return onnx_export.folder_for(models_dir, encoder.name)


def test_the_export_is_written_checked_and_reused(exported, torch_encoder, monkeypatch):
    assert exported.runtime == "onnx" and torch_encoder.runtime == "torch"
    assert exported.name == torch_encoder.name and exported.dim == torch_encoder.dim
    assert exported.window == torch_encoder.window
    folder = Path(exported.backend.file).parent
    record = json.loads((folder / "model.json").read_text())
    assert record["ok"] and record["min_cosine"] >= 0.9999 and record["pooling"] == "mean"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        ".lock": 0o600, "model.json": 0o600, "model.onnx": 0o600}
    monkeypatch.setattr(onnx_export, "_export_in_child", lambda *a: pytest.fail("exported again"))
    again = Encoder(runtime="onnx", models_dir=folder.parent)
    assert again.runtime == "onnx" and again.backend.file == exported.backend.file
    assert np.allclose(again.encode(TEXTS), exported.encode(TEXTS), atol=1e-6)


def test_onnx_gives_torchs_vectors(exported, torch_encoder):
    assert [exported.windows(t, with_pieces=True) for t in TEXTS] == [
        torch_encoder.windows(t, with_pieces=True) for t in TEXTS]
    assert len(exported.windows(LONG)) >= 3
    ours, theirs = exported.encode(TEXTS), torch_encoder.encode(TEXTS)
    assert np.all(np.sum(ours * theirs, axis=1) >= 0.9999)
    assert np.all(np.sum(exported.encode_sentences(TEXTS) * torch_encoder.encode_sentences(TEXTS), axis=1) >= 0.9999)
    (vectors, sentences), (_, reference) = exported.encode_with_sentences(TEXTS), torch_encoder.encode_with_sentences(TEXTS)
    assert np.allclose(vectors, ours, atol=1e-5)
    assert [[s for s, _ in row] for row in sentences] == [[s for s, _ in row] for row in reference]
    assert [len(row) for row in sentences] == [1, 3, 2, 70]
    for row, ref in zip(sentences, reference):
        for (_, a), (_, b) in zip(row, ref):
            assert a @ b >= 0.9999


def test_more_threads_for_a_large_write_then_back(exported):
    one = exported.encode(TEXTS)
    with exported.threads(2):
        assert np.allclose(exported.encode(TEXTS), one, atol=1e-5)
        assert exported.backend.serving == 1 and 2 in exported.backend._sessions
    exported.encode(["after"])
    assert list(exported.backend._sessions) == [1]  # the write's session is dropped


def test_a_forked_worker_runs_its_own_session(exported):
    expected = exported.encode(TEXTS[:2])  # the parent has a session now; the child must not use it
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker forked from a master that loaded the encoder
        try:
            os.write(writer, exported.encode(TEXTS[:2]).tobytes())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    assert np.allclose(np.frombuffer(data, np.float32).reshape(expected.shape), expected, atol=1e-6)


@pytest.mark.parametrize("damage", ["model", "record"])
def test_a_damaged_export_is_made_again(exported, tmp_path, monkeypatch, damage):
    good = Path(exported.backend.file).parent
    folder = _folder(exported, tmp_path)
    shutil.copytree(good, folder)
    if damage == "model":  # same size, garbled in the middle: it would still load
        with open(folder / "model.onnx", "r+b") as fh:
            fh.seek(40_000_000)
            fh.write(os.urandom(4096))
    else:
        (folder / "model.json").write_text("{not json")
    made = []

    def export_in_child(model_path, into):  # the child's work, without the child: the good files are put back
        made.append(into)
        for name in ("model.onnx", "model.json"):
            shutil.copy(good / name, into / name)

    monkeypatch.setattr(onnx_export, "_export_in_child", export_in_child)
    encoder = Encoder(runtime="onnx", models_dir=tmp_path)
    assert made == [folder] and encoder.runtime == "onnx"
    assert np.allclose(encoder.encode(TEXTS[:1]), exported.encode(TEXTS[:1]), atol=1e-6)


def test_a_failed_export_or_an_unsupported_model_runs_on_torch(exported, tmp_path, caplog):
    copy = tmp_path / "model"
    for item in Path(exported.path).rglob("*"):
        if item.is_file():
            (copy / item.relative_to(exported.path)).parent.mkdir(parents=True, exist_ok=True)
            (copy / item.relative_to(exported.path)).symlink_to(item)
    pooling = copy / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.unlink()
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    assert onnx_export.prepare(str(copy), "copy", tmp_path / "models") is None
    assert "pooling ['max_tokens']" in caplog.text and "runs on torch" in caplog.text
    # A recorded failure is not tried again (with the same libraries), and the model runs on torch.
    folder = onnx_export.private_dir(onnx_export.folder_for(tmp_path / "models", exported.name))
    (folder / "model.json").write_text(json.dumps({"format": onnx_export.FORMAT, "versions": onnx_export._versions(),
                                                   "ok": False, "reason": "the export's vectors differ"}))
    assert onnx_export.prepare(exported.path, exported.name, tmp_path / "models") is None
    assert "the export's vectors differ" in caplog.text
    with pytest.raises(ValueError, match="MATCHER_ENCODER_RUNTIME"):
        Encoder(runtime="tensorflow", models_dir=tmp_path)
