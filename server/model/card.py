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
from typing import Any, Mapping

from server.model.card_fields import CardFieldError, emit, frozen, number, rest, section, text, thawed
from server.model.card_differential import DifferentialRule, DifferentialSpec
from server.model.card_int8 import Int8Graph, Int8Spec
from server.model.card_subgroups import SUBGROUP_METRICS, SubgroupFigure, SubgroupRow, Subgroups
from server.model.trust import DEFAULT_TTA, TTA_MODES
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY

CARD_FILENAME = "model_card.json"
__all__ = ["CARD_FILENAME", "CardFieldError", "DifferentialRule", "DifferentialSpec",
           "Int8Graph", "Int8Spec", "ModelCard", "SUBGROUP_METRICS", "SubgroupFigure", "SubgroupRow",
           "Subgroups", "frozen", "thawed"]


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
        return cls(malignant=number(data, "malignant", w, 0, 1),
                   malignant_target_sensitivity=number(data, "malignant_target_sensitivity", w, 0, 1),
                   uncertain=number(data, "uncertain", w, 0, 1), uncertain_rule=text(data, "uncertain_rule", w),
                   extra=rest(data, cls))


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
        by_tta = section(data, "temperature_by_tta") or {}
        for mode in by_tta:
            if mode not in TTA_MODES:
                raise CardFieldError(f"calibration.temperature_by_tta.{mode}", f"is not a TTA mode ({', '.join(TTA_MODES)})")
        return cls(temperature=number(data, "temperature", "calibration.", 1e-6),
                   temperature_by_tta=frozen({m: number(by_tta, m, "calibration.temperature_by_tta.", 1e-6, required=True)
                                              for m in by_tta}),
                   extra=rest(data, cls))


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
        return cls(default=default, extra=rest(data, cls))


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
    noise_ceiling: float | None = None  # one-sided ceilings: texture (pixel noise, text) and the flat share
    flat_ceiling: float | None = None
    # Refusal levels, further out than the thresholds and floors above (which make an image
    # unusual); None: the check refuses at its threshold, as cards did before the two answers.
    refuse_threshold: float | None = None
    imagenet_refuse_threshold: float | None = None
    texture_refuse_floor: float | None = None
    colour_refuse_floor: float | None = None
    noise_refuse_ceiling: float | None = None
    flat_refuse_ceiling: float | None = None
    object_threshold: float | None = None  # the object check's decision beyond which an everyday object is refused
    extra: Mapping = field(default_factory=dict)  # how they were fitted, and the measured flag rates

    def figure(self, key: str, default=None):
        return self.extra.get(key, default)

    def thresholds(self) -> dict:
        """Each check's threshold or floor by check name (``server.model.nonskin`` names them)."""
        return {"features": self.threshold, "picture": self.image_threshold, "imagenet": self.imagenet_threshold,
                "texture": self.texture_floor, "colour": self.colour_floor, "noise": self.noise_ceiling,
                "flat": self.flat_ceiling}

    def refusal(self) -> dict:
        """Each check's refusal level by check name, None where it has none."""
        return {"features": self.refuse_threshold, "imagenet": self.imagenet_refuse_threshold,
                "texture": self.texture_refuse_floor, "colour": self.colour_refuse_floor,
                "noise": self.noise_refuse_ceiling, "flat": self.flat_refuse_ceiling}

    @classmethod
    def from_dict(cls, data: Mapping) -> "NonSkinSpec":
        return cls(file=text(data, "file", "ood."), threshold=number(data, "threshold", "ood.", 0),
                   sha256=text(data, "sha256", "ood."), image_threshold=number(data, "image_threshold", "ood.", 0),
                   imagenet_threshold=number(data, "imagenet_threshold", "ood.", 0),
                   imagenet_gate=number(data, "imagenet_gate", "ood.", 0),
                   texture_floor=number(data, "texture_floor", "ood."), colour_floor=number(data, "colour_floor", "ood."),
                   refuse_threshold=number(data, "refuse_threshold", "ood.", 0),
                   imagenet_refuse_threshold=number(data, "imagenet_refuse_threshold", "ood.", 0),
                   texture_refuse_floor=number(data, "texture_refuse_floor", "ood."),
                   colour_refuse_floor=number(data, "colour_refuse_floor", "ood."),
                   noise_ceiling=number(data, "noise_ceiling", "ood."), flat_ceiling=number(data, "flat_ceiling", "ood."),
                   noise_refuse_ceiling=number(data, "noise_refuse_ceiling", "ood."),
                   flat_refuse_ceiling=number(data, "flat_refuse_ceiling", "ood."),
                   object_threshold=number(data, "object_threshold", "ood."), extra=rest(data, cls))


PATIENT_FIELDS = ("age", "sex", "site")


@dataclass(frozen=True)
class PatientContextSpec:
    """Phase 3 of the trainer (``training.patient_context``): whether the model reads the patient
    context, how strongly, and the validation and test figures with and without it."""

    shipped: str  # "image only" or "image + patient context"
    reads: tuple = ()  # the fields the model reads (PATIENT_FIELDS), empty for an image-only model
    strength: float | None = None
    extra: Mapping = field(default_factory=dict)  # the rule, validation by strength, served figures

    def figure(self, key: str, default=None):
        return self.extra.get(key, default)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PatientContextSpec":
        w = "patient_context."
        reads = data.get("reads") or ()
        if not isinstance(reads, (list, tuple)) or not set(reads) <= set(PATIENT_FIELDS):
            raise CardFieldError(f"{w}reads", f"must list some of {', '.join(PATIENT_FIELDS)}, got {reads!r}")
        return cls(shipped=text(data, "shipped", w, required=True), reads=tuple(reads),
                   strength=number(data, "strength", w, 0), extra=rest(data, cls))


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
    patient_context: PatientContextSpec | None = None
    subgroups: Subgroups | None = None
    int8: Int8Spec | None = None  # int8 graphs of this .h5 (training.quantize), served per INFERENCE_PRECISION
    differential: DifferentialSpec | None = None  # the conformal thresholds of the lesion-type list
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
        sections = {k: section(data, k) for k in ("thresholds", "tta", "calibration", "ood", "subgroups", "patient_context",
                                                  "int8", "differential")}
        return cls(
            name=text(data, "name", required=True), version=str(data["version"]), classes=tuple(classes),
            input_size=size, preprocessing=text(data, "preprocessing", required=True),
            created=text(data, "created"), architecture=text(data, "architecture"),
            intended_use=text(data, "intended_use"),
            limitations=frozen(limitations if isinstance(limitations, (list, tuple)) else [limitations]),
            data=frozen(section(data, "data") or {}), licence=frozen(data.get("licence")),
            training=frozen(section(data, "training") or {}), model_file=text(data, "model_file"),
            sha256=text(data, "sha256"), metrics=frozen(section(data, "metrics") or {}),
            thresholds=Thresholds.from_dict(sections["thresholds"] or {}),
            tta=TtaSpec.from_dict(sections["tta"]) if sections["tta"] is not None else None,
            calibration=Calibration.from_dict(sections["calibration"]) if sections["calibration"] is not None else None,
            uncertain=frozen(section(data, "uncertain") or {}),
            ood=NonSkinSpec.from_dict(sections["ood"]) if sections["ood"] else None,
            subgroups=Subgroups.from_dict(sections["subgroups"]) if sections["subgroups"] is not None else None,
            patient_context=PatientContextSpec.from_dict(sections["patient_context"])
            if sections["patient_context"] is not None else None,
            int8=Int8Spec.from_dict(sections["int8"]) if sections["int8"] is not None else None,
            differential=DifferentialSpec.from_dict(sections["differential"]) if sections["differential"] else None,
            extra=rest(data, cls),
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
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else emit(value) if hasattr(value, "extra") \
                else thawed(value)
        if not out.get("thresholds"):
            out.pop("thresholds", None)
        return out | thawed(self.extra)

    def replace(self, **changes) -> "ModelCard":
        return replace(self, **changes)

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)
