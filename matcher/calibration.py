"""Score calibration: fit the ranker's ``score`` to how often matches turn out right on future-like queries.

The ranker's weights are fitted on leak-free 2021-2022 topics, a world kinder to it than the future (see the
model card), so its raw probabilities run high. ``python -m matcher evaluate --calibrate`` takes the top 50
matches per query of an evaluation run and fits one affine map of their log-odds,
``score = sigmoid(slope * logit + offset)``, by logistic regression on whether each match was relevant. The
slope is positive, so the order of matches, and every ranking metric, stays exactly as it was. How well it
fits is measured held out (two folds by query), and the map is written into the ranker artefact
(``calibration``), with a new version.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from matcher.ranker import IDENTITY, Calibration, artefact_version, parse_calibrations, sigmoid

MIN_MATCHES = 100  # fewer matches than this (in each half, when measured held out) fit nothing reliable
_EPS = 1e-4  # scores are served rounded to 4 decimals


def logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit(logits: np.ndarray, relevant: np.ndarray) -> Calibration:
    """The affine map of ``logits`` that best predicts ``relevant`` (unregularised logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    relevant = np.asarray(relevant, bool)
    if len(relevant) < MIN_MATCHES or relevant.all() or not relevant.any():
        raise ValueError(f"calibration needs at least {MIN_MATCHES} matches, some relevant and some not "
                         f"(got {len(relevant)}, {int(relevant.sum())} relevant)")
    model = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(logits, np.float64)[:, None], relevant)
    slope, offset = float(model.coef_[0, 0]), float(model.intercept_[0])
    if slope <= 0:
        raise ValueError(f"calibration slope {slope:.3f} is not positive: the scores do not predict relevance here")
    return Calibration(slope, offset)


def held_out(logits: np.ndarray, relevant: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Calibrated scores, each from a map fitted on the other half of the queries (two folds by ``groups``)."""
    groups = np.asarray(groups)
    names = np.random.RandomState(seed).permutation(np.unique(groups))
    fold = np.isin(groups, names[::2])
    out = np.zeros(len(groups))
    for test in (fold, ~fold):
        calibration = fit(logits[~test], relevant[~test])
        out[test] = sigmoid(calibration.logits(logits[test]))
    return out


def write(path: Path, model_name: str, refit: Calibration, fitted_on: str) -> dict:
    """Compose ``refit`` with the artefact's calibration of ``model_name``, store it, renew the version."""
    payload = json.loads(path.read_text())
    calibrations = payload.setdefault("calibration", {})
    combined = parse_calibrations(calibrations).get(model_name, IDENTITY).then(refit)
    today = dt.date.today().isoformat()
    calibrations[model_name] = {"slope": round(combined.slope, 6), "offset": round(combined.offset, 6),
                                "fitted_on": fitted_on, "date": today}
    payload["version"] = artefact_version(payload, today)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return payload
