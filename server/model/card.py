"""The model card as a typed value: read and checked once, then read by attribute everywhere.

The card is the contract between trainer and service (``model_card.json`` beside the
``.h5``, read by ``server/model/files.py``). ``ModelCard.from_dict`` checks every field
the service uses, and a card with a missing or wrong one stops the service at start-up
with one line naming the field. The trainer builds the same value in
memory and writes it once (``ModelCard.write``).

Sections the service only shows (``metrics``, ``data``, ``training``, ...) are kept as
read-only mappings; ``to_dict`` gives back the document, unknown keys included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from server.model.trust import DEFAULT_TTA, TTA_MODES
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY

CARD_FILENAME = "model_card.json"


class CardFieldError(ValueError):
    """One field of a card is missing or wrong: ``field`` names it (dotted), the message says how."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name} {problem}")
        self.field = field_name


# ---------------------------------------------------------------- reading fields

def frozen(value: Any) -> Any:
    """JSON data made read-only: dicts -> mapping proxies, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """The inverse of ``frozen``: plain dicts and lists, ready for JSON."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(v) for v in value]
    return value


def _number(data: Mapping, key: str, where: str, low: float | None = None, high: float | None = None,
            required: bool = False) -> float | None:
    value = data.get(key)
    name = f"{where}{key}"
    if value is None:
        if required:
            raise CardFieldError(name, "is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CardFieldError(name, f"must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise CardFieldError(name, f"must be {bounds}, got {value!r}")
    return value


def _text(data: Mapping, key: str, where: str = "", required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise CardFieldError(f"{where}{key}", "is missing")
        return None
    if not isinstance(value, str):
        raise CardFieldError(f"{where}{key}", f"must be text, got {value!r}")
    return value


def _section(data: Mapping, key: str) -> Mapping | None:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise CardFieldError(key, f"must be an object, got {type(value).__name__}")
    return value


def _rest(data: Mapping, cls) -> Mapping:
    """The keys of ``data`` that ``cls`` has no field for, kept as they are."""
    known = {f.name for f in fields(cls)}
    return frozen({k: v for k, v in data.items() if k not in known})


def _emit(obj) -> dict:
    """A section back to its JSON shape: fields that are set, then the kept keys."""
    out = {f.name: thawed(getattr(obj, f.name)) for f in fields(obj)
           if f.name != "extra" and getattr(obj, f.name) not in (None, {}, ())}
    return out | thawed(obj.extra)


# ---------------------------------------------------------------- the sections

@dataclass(frozen=True)
class Thresholds:
    """The operating points chosen on validation, with the targets they were chosen for."""

    malignant: float | None = None  # the malignant flag's threshold on P(malignant)
    malignant_target_sensitivity: float | None = None
    uncertain: float | None = None  # below it a calibrated top probability is "uncertain"
    uncertain_rule: str | None = None
    extra: Mapping = field(default_factory=dict)

    @property
    def malignant_target(self) -> float:
        return MALIGNANT_TARGET_SENSITIVITY if self.malignant_target_sensitivity is None \
            else self.malignant_target_sensitivity

    @classmethod
    def from_dict(cls, data: Mapping) -> "Thresholds":
        w = "thresholds."
        return cls(malignant=_number(data, "malignant", w, 0, 1),
                   malignant_target_sensitivity=_number(data, "malignant_target_sensitivity", w, 0, 1),
                   uncertain=_number(data, "uncertain", w, 0, 1), uncertain_rule=_text(data, "uncertain_rule", w),
                   extra=_rest(data, cls))


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on validation: one temperature per TTA mode, and its figures."""

    temperature: float | None = None
    temperature_by_tta: Mapping = field(default_factory=dict)
    extra: Mapping = field(default_factory=dict)  # method, ECE and NLL before/after, note

    def temperature_for(self, tta: str) -> float | None:
        """The temperature fitted for this TTA mode (each mode's averaged output has its own)."""
        value = self.temperature_by_tta.get(tta, self.temperature)
        return float(value) if value is not None else None

    def figure(self, key: str, default=None):
        return self.extra.get(key, default)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        by_tta = _section(data, "temperature_by_tta") or {}
        for mode in by_tta:
            if mode not in TTA_MODES:
                raise CardFieldError(f"calibration.temperature_by_tta.{mode}", f"is not a TTA mode ({', '.join(TTA_MODES)})")
        return cls(temperature=_number(data, "temperature", "calibration.", 1e-6),
                   temperature_by_tta=frozen({m: _number(by_tta, m, "calibration.temperature_by_tta.", 1e-6, required=True)
                                              for m in by_tta}),
                   extra=_rest(data, cls))


@dataclass(frozen=True)
class TtaSpec:
    """Test-time augmentation: the mode measured to pay for its cost, and the figures behind it."""

    default: str = DEFAULT_TTA
    extra: Mapping = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping) -> "TtaSpec":
        default = data.get("default", DEFAULT_TTA)
        if default not in TTA_MODES:
            raise CardFieldError("tta.default", f"must be one of {', '.join(TTA_MODES)}, got {default!r}")
        return cls(default=default, extra=_rest(data, cls))


@dataclass(frozen=True)
class NonSkinSpec:
    """Where the non-skin statistics are (an .npz beside the card, pinned by sha256) and each check's threshold."""

    file: str | None = None  # required to serve (server.model.files.parse_card checks it)
    threshold: float | None = None  # deep features
    sha256: str | None = None
    image_threshold: float | None = None  # picture statistics (a two-sided distance; older cards)
    imagenet_threshold: float | None = None  # the ImageNet branch's pooled features
    imagenet_gate: float | None = None  # ...checked only beyond this distance of the model's own features
    texture_floor: float | None = None  # one-sided floors on picture statistics
    colour_floor: float | None = None
    extra: Mapping = field(default_factory=dict)  # how they were fitted, and the measured flag rates

    def figure(self, key: str, default=None):
        return self.extra.get(key, default)

    def thresholds(self) -> dict:
        """Each check's threshold or floor by check name (``server.model.nonskin`` names them)."""
        return {"features": self.threshold, "picture": self.image_threshold, "imagenet": self.imagenet_threshold,
                "texture": self.texture_floor, "colour": self.colour_floor}

    @classmethod
    def from_dict(cls, data: Mapping) -> "NonSkinSpec":
        return cls(file=_text(data, "file", "ood."), threshold=_number(data, "threshold", "ood.", 0),
                   sha256=_text(data, "sha256", "ood."), image_threshold=_number(data, "image_threshold", "ood.", 0),
                   imagenet_threshold=_number(data, "imagenet_threshold", "ood.", 0),
                   imagenet_gate=_number(data, "imagenet_gate", "ood.", 0),
                   texture_floor=_number(data, "texture_floor", "ood."), colour_floor=_number(data, "colour_floor", "ood."),
                   extra=_rest(data, cls))


SUBGROUP_METRICS = ("balanced_accuracy", "melanoma_recall", "malignant_sensitivity", "malignant_specificity")


def _count(data: Mapping, key: str, where: str) -> int:
    return int(_number(data, key, where, 0) or 0)


@dataclass(frozen=True)
class SubgroupFigure:
    """One metric in one subgroup: its value and 95% bootstrap interval."""

    value: float | None = None  # None: the group cannot give it (no melanoma: no melanoma recall), never 0
    low: float | None = None  # None beside a value: no interval (too few cases, or every resample agreed)
    high: float | None = None
    cases: int = 0  # resampled units (lesions or images) the metric divides by

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "SubgroupFigure":
        return cls(*(_number(data, k, where, 0, 1) for k in ("value", "low", "high")), cases=_count(data, "cases", where))


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
        return cls(grouping=_text(data, "grouping", where, required=True), group=_text(data, "group", where, required=True),
                   images=_count(data, "images", where), lesions=_count(data, "lesions", where),
                   melanomas=_count(data, "melanomas", where), malignant=_count(data, "malignant", where),
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
        return cls(inputs=_text(data, "inputs", w, required=True),
                   rows=tuple(SubgroupRow.from_dict(r, f"{w}rows[{i}].") for i, r in enumerate(rows)),
                   flag_drop=_number(data, "flag_drop", w, 0, 1), unit=_text(data, "unit", w),
                   confidence=_number(data, "confidence", w, 0, 1), extra=_rest(data, cls))

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "unit": self.unit, "confidence": self.confidence, "flag_drop": self.flag_drop,
                "rows": [r.to_dict() for r in self.rows]} | thawed(self.extra)


# ---------------------------------------------------------------- the card

@dataclass(frozen=True)
class ModelCard:
    """Everything the service needs to know about a model, checked, read-only."""

    name: str
    version: str
    classes: tuple[str, ...]
    input_size: int
    preprocessing: str
    created: str | None = None
    architecture: str | None = None
    intended_use: str | None = None
    limitations: tuple = ()
    data: Mapping = field(default_factory=dict)
    licence: Any = None
    training: Mapping = field(default_factory=dict)
    model_file: str | None = None
    sha256: str | None = None
    metrics: Mapping = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    tta: TtaSpec | None = None
    calibration: Calibration | None = None
    uncertain: Mapping = field(default_factory=dict)  # the uncertain threshold's validation and test figures
    ood: NonSkinSpec | None = None
    subgroups: Subgroups | None = None
    extra: Mapping = field(default_factory=dict)

    @property
    def test_metrics(self) -> Mapping:
        test = self.metrics.get("test")
        return test if isinstance(test, Mapping) else {}

    @property
    def tta_default(self) -> str:
        return self.tta.default if self.tta else DEFAULT_TTA

    def temperature_for(self, tta: str) -> float | None:
        return self.calibration.temperature_for(tta) if self.calibration else None

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelCard":
        """Check and type a card document; a bad field raises CardFieldError naming it."""
        if not isinstance(data, Mapping):
            raise CardFieldError("(the card)", "must be a JSON object")
        missing = [k for k in ("name", "version", "classes", "input_size", "preprocessing") if k not in data]
        if missing:
            raise CardFieldError(", ".join(missing), "missing")
        classes = data["classes"]
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise CardFieldError("classes", f"must be a list of class codes, got {classes!r}")
        size = data["input_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise CardFieldError("input_size", f"must be a positive integer, got {size!r}")
        limitations = data.get("limitations") or ()
        sections = {k: _section(data, k) for k in ("thresholds", "tta", "calibration", "ood", "subgroups")}
        return cls(
            name=_text(data, "name", required=True), version=str(data["version"]), classes=tuple(classes),
            input_size=size, preprocessing=_text(data, "preprocessing", required=True),
            created=_text(data, "created"), architecture=_text(data, "architecture"),
            intended_use=_text(data, "intended_use"),
            limitations=frozen(limitations if isinstance(limitations, (list, tuple)) else [limitations]),
            data=frozen(_section(data, "data") or {}), licence=frozen(data.get("licence")),
            training=frozen(_section(data, "training") or {}), model_file=_text(data, "model_file"),
            sha256=_text(data, "sha256"), metrics=frozen(_section(data, "metrics") or {}),
            thresholds=Thresholds.from_dict(sections["thresholds"] or {}),
            tta=TtaSpec.from_dict(sections["tta"]) if sections["tta"] is not None else None,
            calibration=Calibration.from_dict(sections["calibration"]) if sections["calibration"] is not None else None,
            uncertain=frozen(_section(data, "uncertain") or {}),
            ood=NonSkinSpec.from_dict(sections["ood"]) if sections["ood"] else None,
            subgroups=Subgroups.from_dict(sections["subgroups"]) if sections["subgroups"] is not None else None,
            extra=_rest(data, cls),
        )

    @classmethod
    def partial(cls, data: Mapping) -> "ModelCard":
        """A card from a document that may lack the identity fields (to present a card's sections alone)."""
        return cls.from_dict({"name": "", "version": "", "classes": [], "input_size": 1, "preprocessing": "", **data})

    def to_dict(self) -> dict:
        """The card document (what ``model_card.json`` holds and ``/api/model`` answers)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value in (None, {}, ()):
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else _emit(value) if hasattr(value, "extra") \
                else thawed(value)
        if not out.get("thresholds"):
            out.pop("thresholds", None)
        return out | thawed(self.extra)

    def replace(self, **changes) -> "ModelCard":
        return replace(self, **changes)

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)
