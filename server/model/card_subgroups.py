"""The card's ``subgroups`` section: the test split's figures per sex, age band and body site."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping

from server.model.card_fields import CardFieldError, count, number, rest, text, thawed


SUBGROUP_METRICS = ("balanced_accuracy", "melanoma_recall", "malignant_sensitivity", "malignant_specificity")


@dataclass(frozen=True)
class SubgroupFigure:
    """One metric in one subgroup: its value and 95% bootstrap interval."""

    value: float | None = None  # None: the group cannot give it (no melanoma: no melanoma recall), never 0
    low: float | None = None  # None beside a value: no interval (too few cases, or every resample agreed)
    high: float | None = None
    cases: int = 0  # resampled units (lesions or images) the metric divides by

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "SubgroupFigure":
        return cls(*(number(data, k, where, 0, 1) for k in ("value", "low", "high")), cases=count(data, "cases", where))


@dataclass(frozen=True)
class SubgroupRow:
    """One subgroup of the test split (a sex, an age band, a body site, or all): counts, figures, flag."""

    grouping: str  # "all", "sex", "age" or "site"
    group: str
    images: int
    lesions: int
    melanomas: int = 0  # images
    malignant: int = 0  # images
    figures: Mapping = field(default_factory=dict)  # SUBGROUP_METRICS name -> SubgroupFigure
    flagged: bool = False  # melanoma recall more than the section's flag_drop below the whole split's

    def figure(self, metric: str) -> SubgroupFigure:
        return self.figures.get(metric) or SubgroupFigure()

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "SubgroupRow":
        figures = data.get("figures") or {}
        if not isinstance(figures, Mapping):
            raise CardFieldError(f"{where}figures", "must be an object")
        if not isinstance(data.get("flagged", False), bool):
            raise CardFieldError(f"{where}flagged", f"must be true or false, got {data['flagged']!r}")
        return cls(grouping=text(data, "grouping", where, required=True), group=text(data, "group", where, required=True),
                   images=count(data, "images", where), lesions=count(data, "lesions", where),
                   melanomas=count(data, "melanomas", where), malignant=count(data, "malignant", where),
                   figures=MappingProxyType({m: SubgroupFigure.from_dict(figures[m], f"{where}figures.{m}.")
                                             for m in SUBGROUP_METRICS if isinstance(figures.get(m), Mapping)}),
                   flagged=data.get("flagged", False))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        return out | {"figures": {m: {f.name: getattr(v, f.name) for f in fields(v)} for m, v in self.figures.items()}}


@dataclass(frozen=True)
class Subgroups:
    """The test split's figures per sex, age band and body site (``training.subgroups``), to show where the
    model may do worse than its average; optional, so a card written before it still loads."""

    inputs: str  # what the probabilities came from: "image only", "image + patient context"
    rows: tuple = ()  # SubgroupRow, the whole split first
    flag_drop: float | None = None
    unit: str | None = None  # what the bootstrap resamples: "lesion" or "image"
    confidence: float | None = None
    extra: Mapping = field(default_factory=dict)  # resamples, seed, threshold, sites left out, the skin-type note...

    @classmethod
    def from_dict(cls, data: Mapping) -> "Subgroups":
        w = "subgroups."
        rows = data.get("rows") or []
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
            raise CardFieldError(f"{w}rows", "must be a list of objects")
        return cls(inputs=text(data, "inputs", w, required=True),
                   rows=tuple(SubgroupRow.from_dict(r, f"{w}rows[{i}].") for i, r in enumerate(rows)),
                   flag_drop=number(data, "flag_drop", w, 0, 1), unit=text(data, "unit", w),
                   confidence=number(data, "confidence", w, 0, 1), extra=rest(data, cls))

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "unit": self.unit, "confidence": self.confidence, "flag_drop": self.flag_drop,
                "rows": [r.to_dict() for r in self.rows]} | thawed(self.extra)
