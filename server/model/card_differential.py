"""The card's ``differential`` section: the conformal thresholds of the lesion-type list, and their figures.

``training/differential.py`` fits them on validation and measures them on the test split;
the service reads ``min_probability`` (``server/differential.py`` applies it) and the pages
read the measured coverage. A model that reads the patient context has a second set,
fitted on its validation answers with the context (``with_context``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from server.model.card_fields import CardFieldError, emit, frozen, number, rest, section, thawed


def _min_probability(data: Mapping, where: str) -> Mapping:
    table = section(data, "min_probability")
    if not table:
        raise CardFieldError(f"{where}min_probability", "is missing: one threshold per class")
    return frozen({code: number(table, code, f"{where}min_probability.", 0, 1, required=True) for code in table})


@dataclass(frozen=True)
class DifferentialRule:
    """One set of thresholds: a class is in the list when its probability reaches its own minimum."""

    min_probability: Mapping  # class code -> the lowest calibrated probability that keeps it in the list
    class_floor: float | None = None  # the per-class coverage floor they were fitted with (None: one overall threshold)
    extra: Mapping = field(default_factory=dict)  # figures on validation and test, overall and by class

    def measured(self, split: str) -> Mapping:
        """The figures on ``split`` (val | test): coverage, mean size, single-class share and accuracy, by class."""
        figures = (self.extra.get("figures") or {}).get(split)
        return figures if isinstance(figures, Mapping) else {}

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "DifferentialRule":
        return cls(min_probability=_min_probability(data, where), class_floor=number(data, "class_floor", where, 0, 1),
                   extra=rest(data, cls))


@dataclass(frozen=True)
class DifferentialSpec:
    """The differential's target coverage and its thresholds, for the image alone and with the patient context."""

    coverage: float
    image: DifferentialRule
    with_context: DifferentialRule | None = None
    extra: Mapping = field(default_factory=dict)  # the rule in words, the score

    def rule_for(self, with_context: bool) -> DifferentialRule:
        """The thresholds for an answer given the patient context, or for the image alone."""
        return self.with_context if (with_context and self.with_context is not None) else self.image

    @classmethod
    def from_dict(cls, data: Mapping) -> "DifferentialSpec":
        w = "differential."
        context = section(data, "with_context")
        image = {k: v for k, v in data.items() if k not in ("coverage", "with_context", "rule", "score")}
        return cls(coverage=number(data, "coverage", w, 0, 1, required=True),
                   image=DifferentialRule.from_dict(image, w),
                   with_context=DifferentialRule.from_dict(context, f"{w}with_context.") if context else None,
                   extra=frozen({k: data[k] for k in ("rule", "score") if k in data}))

    def to_dict(self) -> dict:
        out = {"coverage": self.coverage} | emit(self.image)
        if self.with_context is not None:
            out["with_context"] = emit(self.with_context)
        return out | thawed(self.extra)
