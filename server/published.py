"""One softmax row -> a ``Prediction``: the probabilities as the service publishes them.

The predictor calls this once per answer; it is the one place the raw row is renormalised,
rounded and ranked, so every output reads the same published numbers.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from server.differential import differential_of
from server.lesions import CLASS_CODES, MALIGNANT_CODES, lesion_class
from server.prediction import ClassProbability, ModelInfo, Prediction
from server.prediction_parts import Timing
from server.thresholds import DEFAULT_UNCERTAIN_BELOW


def prediction_from_probabilities(
    probabilities, model: ModelInfo, inference_ms: float, classes: tuple[str, ...] = CLASS_CODES,
    malignant_threshold: float | None = None, min_probability: Mapping[str, float] | None = None,
    coverage: float | None = None, **extra,
) -> Prediction:
    """Turn one softmax row into a Prediction (``extra``: the other Prediction fields, e.g. uncertain_threshold).

    ``min_probability`` and ``coverage``: the card's conformal thresholds for the differential
    (``server/differential.py``), applied to the published probabilities.

    The row is renormalised in float64 and published in millionths: more digits claim a
    precision the model does not have. Rounding each value on its own can leave the sum
    several millionths off 1, so the millionths are apportioned by largest remainder and
    the published values sum to exactly 1; the malignant share is the sum of the
    published malignant values, so a reader can check it by adding them up.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.shape[0] != len(classes) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"expected {len(classes)} finite non-negative probabilities, got {p!r}")
    micro = millionths(p / p.sum())
    ranked = sorted(zip(classes, micro, p), key=lambda cmp: (cmp[1], cmp[2]), reverse=True)
    entries = tuple(
        ClassProbability(code=c, name=lesion_class(c).name, risk=lesion_class(c).risk, probability=m / _SCALE)
        for c, m, _ in ranked
    )
    malignant = sum(m for c, m in zip(classes, micro) if c in MALIGNANT_CODES) / _SCALE
    conformal = None
    if min_probability:
        conformal = differential_of(entries, min_probability, coverage, DEFAULT_UNCERTAIN_BELOW,
                                    extra.get("nonskin") is not None and extra["nonskin"].unusual)
    return Prediction(classes=entries, malignant_probability=malignant, model=model, timing=Timing(round(inference_ms, 2)),
                      malignant_threshold=malignant_threshold, conformal=conformal, **extra)


_SCALE = 1_000_000


def millionths(p: np.ndarray) -> list[int]:
    """Integer millionths of a distribution that sum to exactly 1,000,000 (largest remainder)."""
    scaled = p * _SCALE
    floors = np.floor(scaled).astype(np.int64)
    short = _SCALE - int(floors.sum())
    for i in np.argsort(-(scaled - floors), kind="stable")[:short]:
        floors[i] += 1
    return [int(v) for v in floors]
