"""The learned ranker: a logistic regression over ranking signals, shipped as a small JSON artefact.

``logit = intercept + sum(coef * standardised feature)`` orders the candidates. The score a caller reads is
``sigmoid(slope * logit + offset)``: the model's estimate that the organisation is one a funded consortium
for that challenge would contain, recalibrated on future-like queries (``calibration`` in the artefact; an
identity when absent, ``python -m matcher evaluate --calibrate`` fits it). It lies in [0, 1] and is
monotone with the rank (the slope must be positive). The artefact holds two models: ``full`` (text,
track record and co-partnership signals) and ``text`` (text signals only), used when the candidates have
no track record at all; each names the signals it reads, from the registry of ``matcher.features``. How it
was trained: ``matcher/ranker_model/MODEL_CARD.md``; the script is ``matcher/training.py``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matcher.features import FEATURES, TEXT_FEATURES  # noqa: F401 (the registry's names, re-exported)

DEFAULT_PATH = Path(__file__).parent / "ranker_model" / "ranker.json"


@dataclass(frozen=True)
class LinearModel:
    features: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_json(cls, data: dict) -> LinearModel:
        features = tuple(data["features"])
        unknown = set(features) - set(FEATURES)
        if unknown:
            raise ValueError(f"ranker model uses unknown features: {sorted(unknown)}")
        arrays = [np.asarray(data[key], np.float64) for key in ("coef", "mean", "scale")]
        if any(a.shape != (len(features),) for a in arrays):
            raise ValueError("ranker model: coef, mean and scale must have one value per feature")
        return cls(features, arrays[0], float(data["intercept"]), arrays[1], arrays[2])

    def to_json(self) -> dict:
        return {
            "features": list(self.features),
            "coef": [round(float(c), 6) for c in self.coef],
            "intercept": round(self.intercept, 6),
            "mean": [round(float(m), 6) for m in self.mean],
            "scale": [round(float(s), 6) for s in self.scale],
        }

    def columns(self) -> list[int]:
        return [FEATURES.index(f) for f in self.features]

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Each feature's additive share of the logit, per row (X has all FEATURES as columns)."""
        return (X[:, self.columns()] - self.mean) / self.scale * self.coef

    def logits(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + self.contributions(X).sum(axis=1)


@dataclass(frozen=True)
class Calibration:
    """An affine map of a model's logit onto future-like data: ``score = sigmoid(slope * logit + offset)``."""

    slope: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.slope) and math.isfinite(self.offset)) or self.slope <= 0:
            raise ValueError("ranker calibration: slope must be a positive number (it must keep the rank order)")

    def logits(self, raw: np.ndarray) -> np.ndarray:
        return self.slope * raw + self.offset

    def then(self, other: Calibration) -> Calibration:
        """This map followed by ``other`` (a refit on top of the calibrated logits)."""
        return Calibration(other.slope * self.slope, other.slope * self.offset + other.offset)


IDENTITY = Calibration()


def artefact_version(payload: dict, date: str) -> str:
    """``ranker-<date>-<hash of what sets the scores>``: the models and their calibration."""
    key = [payload["models"]["full"], payload["models"]["text"]]
    if payload.get("calibration"):
        key.append({name: {"slope": c["slope"], "offset": c["offset"]} for name, c in sorted(payload["calibration"].items())})
    return f"ranker-{date}-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Ranker:
    version: str
    full: LinearModel
    text: LinearModel
    preferred_type_bonus: float  # added to the logit when the challenge prefers the organisation's type
    depth: int  # candidates taken from each retriever
    seeds: int  # strongest text matches whose partners become candidates too
    calibration: dict[str, Calibration] = field(default_factory=dict)  # model name -> its score calibration

    def calibration_of(self, model_name: str) -> Calibration:
        return self.calibration.get(model_name, IDENTITY)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> Ranker:
        data = json.loads(Path(path).read_text())
        return cls(
            version=data["version"],
            full=LinearModel.from_json(data["models"]["full"]),
            text=LinearModel.from_json(data["models"]["text"]),
            preferred_type_bonus=float(data.get("preferred_type_bonus", 0.0)),
            depth=int(data.get("depth", 200)),
            seeds=int(data.get("seeds", 20)),
            calibration=parse_calibrations(data.get("calibration") or {}),
        )


def parse_calibrations(data: dict) -> dict[str, Calibration]:
    """The artefact's ``calibration`` block, checked: model name -> its calibration."""
    unknown = set(data) - {"full", "text"}
    if unknown:
        raise ValueError(f"ranker calibration for unknown models: {sorted(unknown)}")
    return {name: Calibration(float(c["slope"]), float(c["offset"])) for name, c in data.items()}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))
