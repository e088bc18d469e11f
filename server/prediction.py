"""The ``Prediction`` value: made once by the predictor, rendered by the API, pages and reports.

Nothing downstream recomputes a probability, a ranking or a risk level: JSON, HTML, the
text report and the PDF all read the same frozen value, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from server.lesions import CLASS_CODES, DISCLAIMER, MALIGNANT_CODES, lesion_class


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: enough to trace a report back to an exact file."""

    name: str
    version: str
    sha256: str
    input_size: int
    test_balanced_accuracy: float | None = None


@dataclass(frozen=True)
class ClassProbability:
    code: str
    name: str
    risk: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One screening answer. ``classes`` is sorted by probability, highest first."""

    classes: tuple[ClassProbability, ...]
    malignant_probability: float
    model: ModelInfo
    inference_ms: float
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    disclaimer: str = DISCLAIMER
    malignant_threshold: float | None = None  # the model card's screening operating point

    @property
    def top(self) -> ClassProbability:
        return self.classes[0]

    @property
    def malignant_flag(self) -> bool | None:
        """True when P(malignant) reaches the operating point chosen on validation for
        sensitivity >= 0.90; None when the model card defines no operating point.

        It can be True while the top class is benign (say nevus 55%, melanoma 40%): a
        screening aid flags such a lesion rather than reassure on the top class alone.
        """
        if self.malignant_threshold is None:
            return None
        return self.malignant_probability >= self.malignant_threshold

    @property
    def advice(self) -> str:
        return lesion_class(self.top.code).advice

    def to_dict(self) -> dict:
        """The JSON shape of ``POST /predict`` (documented in ``/openapi.json``)."""
        return {
            "prediction": {**asdict(self.top), "advice": self.advice},
            "probabilities": [asdict(c) for c in self.classes],
            "malignant_probability": self.malignant_probability,
            "malignant_threshold": self.malignant_threshold,
            "malignant_flag": self.malignant_flag,
            "model": asdict(self.model),
            "timing": {"inference_ms": self.inference_ms},
            "created_at": self.created_at,
            "disclaimer": self.disclaimer,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Prediction":
        """Rebuild a Prediction from ``to_dict`` output (used by signed report links)."""
        return cls(
            classes=tuple(ClassProbability(**c) for c in data["probabilities"]),
            malignant_probability=float(data["malignant_probability"]),
            model=ModelInfo(**data["model"]),
            inference_ms=float(data["timing"]["inference_ms"]),
            created_at=data["created_at"],
            disclaimer=data.get("disclaimer", DISCLAIMER),
            malignant_threshold=data.get("malignant_threshold"),
        )


def prediction_from_probabilities(
    probabilities, model: ModelInfo, inference_ms: float, classes: tuple[str, ...] = CLASS_CODES,
    malignant_threshold: float | None = None,
) -> Prediction:
    """Turn one softmax row into a Prediction.

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
    return Prediction(classes=entries, malignant_probability=malignant, model=model, inference_ms=round(inference_ms, 2),
                      malignant_threshold=malignant_threshold)


_SCALE = 1_000_000


def millionths(p: np.ndarray) -> list[int]:
    """Integer millionths of a distribution that sum to exactly 1,000,000 (largest remainder)."""
    scaled = p * _SCALE
    floors = np.floor(scaled).astype(np.int64)
    short = _SCALE - int(floors.sum())
    for i in np.argsort(-(scaled - floors), kind="stable")[:short]:
        floors[i] += 1
    return [int(v) for v in floors]
