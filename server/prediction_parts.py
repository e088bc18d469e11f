"""Small named values a ``Prediction`` carries: how long it took, and what the non-skin check said.

Each groups fields that are made together and read together, so the ``Prediction`` stays a
short list of what the answer is, and a new measurement or check finds its own place here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from server.thresholds import NONSKIN_REFUSED, NONSKIN_UNUSUAL, NONSKIN_USUAL


@dataclass(frozen=True)
class Timing:
    """Milliseconds: the model's forward passes (``inference_ms``), the heatmaps when asked for
    (``explain_ms``), and decode, preprocessing and model together, timed by the screening use case
    (``total_ms``, which a bare model answer lacks)."""

    inference_ms: float
    explain_ms: float | None = None
    total_ms: float | None = None

    def to_dict(self) -> dict:
        """The JSON's ``timing``: what was measured, nothing for what was not."""
        return {k: v for k, v in (("inference_ms", self.inference_ms), ("explain_ms", self.explain_ms),
                                  ("total_ms", self.total_ms)) if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Timing":
        return cls(float(data["inference_ms"]), data.get("explain_ms"), data.get("total_ms"))


@dataclass(frozen=True)
class NonSkinAnswer:
    """What the non-skin check (``server/model/nonskin.py``) said of one image: ``answer`` (usual,
    unusual or refused, by ``server.thresholds.nonskin_answer``), ``score`` (the largest of its
    checks' ratios: above 1 is unusual) and, for a refusal, what the image seemed to show
    (``looks_like``: ImageNet's top class, when it is confident and not lesion-like)."""

    answer: str
    score: float | None = None
    looks_like: str | None = None

    @property
    def refused(self) -> bool:
        return self.answer == NONSKIN_REFUSED

    @property
    def unusual(self) -> bool:
        return self.answer == NONSKIN_UNUSUAL

    @classmethod
    def from_flags(cls, refused: bool | None, unusual: bool | None, score: float | None = None) -> "NonSkinAnswer | None":
        """The answer back from the JSON's two flags (a token from before ``unusual_image``: usual); None without a check."""
        if refused is None:
            return None
        return cls(NONSKIN_REFUSED if refused else NONSKIN_UNUSUAL if unusual else NONSKIN_USUAL, score)
