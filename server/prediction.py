"""The ``Prediction`` value: made once by the predictor, rendered by the API, pages and reports.

Nothing downstream recomputes a probability, a ranking or a risk level: JSON, HTML, the
text report and the PDF all read the same frozen value, so they cannot disagree. The
screening use case (``server/screening.py``) adds what it measured around the model:
the request's time (``timing.total_ms``) and, when a presenter needs one, the upload's thumbnail, and what the user
said about the patient (``patient``), so every output can say what the screening was told.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Mapping

from server.differential import Differential, differential_of
from server.heatmap import Explanation, Heatmap
from server.filing import ReportRecord
from server.lesions import DISCLAIMER, MALIGNANT_CODES, lesion_class
from server.patient import PatientContext
from server.prediction_parts import NonSkinAnswer, Timing
from server.quality_figure import QuotedFigure
from server.thresholds import DEFAULT_UNCERTAIN_BELOW


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: enough to trace a report back to an exact file."""

    name: str
    version: str
    sha256: str
    input_size: int
    test_balanced_accuracy: float | None = None  # the quoted figure's value (``test_figure`` names it)
    test_figure: QuotedFigure | None = None  # the card's test figure measured as this answer was made

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelInfo":
        return cls(**{**data, "test_figure": QuotedFigure.from_dict(data.get("test_figure"))})


@dataclass(frozen=True)
class ClassProbability:
    code: str
    name: str
    risk: str
    probability: float


UNCERTAIN_MESSAGE = (
    "The model cannot narrow this down to one type: it is one of {names}. Please have the lesion examined by a "
    "dermatologist."
)
# The one sentence every output shows for an unusual image (the non-skin check's middle answer).
UNUSUAL_IMAGE_MESSAGE = ("This photo looks unlike the images the model learnt from, so the result is less reliable "
                         "than usual.")


@dataclass(frozen=True)
class Prediction:
    """One screening answer. ``classes`` is sorted by probability, highest first."""

    classes: tuple[ClassProbability, ...]
    malignant_probability: float
    model: ModelInfo
    timing: Timing
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    disclaimer: str = DISCLAIMER
    malignant_threshold: float | None = None  # the model card's screening operating point
    uncertain_threshold: float = DEFAULT_UNCERTAIN_BELOW  # the card's thresholds.uncertain (chosen on validation)
    temperature: float | None = None  # calibration applied to the probabilities (None: raw model output)
    tta: str = "off"  # test-time augmentation used: off | flips | full
    nonskin: NonSkinAnswer | None = None  # what the non-skin check said; None: the model has no check
    explanation: Explanation | None = None  # Grad-CAM heatmaps, when asked for (``ScreeningOptions.explain*``)
    thumbnail: bytes | None = field(default=None, repr=False)  # a small JPEG of the upload, for pages and the PDF
    patient: PatientContext = PatientContext()  # the optional age, sex and site given with the image (empty: none)
    # The list the card's conformal thresholds made (``server/differential.py``); None: the card has
    # none, and ``differential`` falls back to the leading classes.
    conformal: Differential | None = None
    # The report's id, the image's name and SHA-256, the local time and the precision served
    # (``server/filing.py``), set by the screening use case; None for a bare model answer.
    record: ReportRecord | None = None

    @property
    def top(self) -> ClassProbability:
        return self.classes[0]

    @property
    def uncertain_below(self) -> float:
        """The threshold in force: the card's, or 0.5 for a card that has none."""
        return DEFAULT_UNCERTAIN_BELOW if self.uncertain_threshold is None else float(self.uncertain_threshold)

    @property
    def low_confidence(self) -> bool:
        """The calibrated top probability is below the threshold (exactly at it is *not* low)."""
        return self.top.probability < self.uncertain_below

    @property
    def differential(self) -> Differential:
        """The lesion types still possible, most likely first (``server/differential.py``)."""
        if self.conformal is not None:
            return self.conformal
        return differential_of(self.classes, None, None, self.uncertain_below, bool(self.unusual_image))

    @property
    def differential_classes(self) -> tuple[ClassProbability, ...]:
        return tuple(c for c in self.classes if c.code in self.differential.codes)

    @property
    def uncertain(self) -> bool:
        """The model names more than one type as still possible: the differential is how it says how sure it is."""
        return len(self.differential.codes) > 1

    @property
    def uncertain_message(self) -> str | None:
        if not self.uncertain:
            return None
        names = ", ".join(c.name for c in self.differential_classes)
        message = UNCERTAIN_MESSAGE.format(names=names)
        return f"{UNUSUAL_IMAGE_MESSAGE} {message}" if self.unusual_image else message

    @property
    def out_of_distribution(self) -> bool | None:
        """True when the non-skin check refused the image as not a lesion photo (the API answers 422
        ``not_a_skin_lesion``); None without non-skin statistics."""
        return None if self.nonskin is None else self.nonskin.refused

    @property
    def unusual_image(self) -> bool | None:
        """True when the photo lies far from the training images but nothing says it is not skin:
        it is screened, marked uncertain, and every output says ``UNUSUAL_IMAGE_MESSAGE``;
        None without non-skin statistics."""
        return None if self.nonskin is None else self.nonskin.unusual

    @property
    def unusual_message(self) -> str | None:
        return UNUSUAL_IMAGE_MESSAGE if self.unusual_image else None

    @property
    def malignant_flag(self) -> bool | None:
        """True when P(malignant) reaches the operating point chosen on validation for the
        card's target sensitivity; None when the model card defines no operating point.

        It can be True while the top class is benign (say nevus 55%, melanoma 40%): a
        screening aid flags such a lesion rather than reassure on the top class alone.
        """
        if self.malignant_threshold is None:
            return None
        return self.malignant_probability >= self.malignant_threshold

    @property
    def explained_class(self) -> str:
        """The class a heatmap explains unless the caller names one.

        A flagged lesion's heatmap shows where the model saw the malignant evidence (the
        leading malignant class), not the benign top class: the flag is what the person
        acts on, so its evidence is what they should be able to see.
        """
        if self.malignant_flag:
            return next(c.code for c in self.classes if c.code in MALIGNANT_CODES)
        return self.top.code

    def heatmap_for(self, code: str) -> Heatmap | None:
        """The heatmap of class ``code``: the one shown, or its grid among the others; None without one."""
        return None if self.explanation is None else self.explanation.for_class(code)

    @property
    def heatmap(self) -> Heatmap | None:
        """The heatmap shown with the answer, when one was asked for."""
        return None if self.explanation is None else self.explanation.heatmap

    @property
    def advice(self) -> str:
        return lesion_class(self.top.code).advice

    def to_dict(self, heatmap_png: bool = True) -> dict:
        """The JSON shape of ``POST /predict`` (documented in ``/openapi.json``).

        ``heatmap_png=False`` leaves the overlay picture out (the report token keeps the grid only).
        """
        score = None if self.nonskin is None else self.nonskin.score
        out = {
            "prediction": {**asdict(self.top), "advice": self.advice},
            "probabilities": [asdict(c) for c in self.classes],
            "malignant_probability": self.malignant_probability,
            "malignant_threshold": self.malignant_threshold,
            "malignant_flag": self.malignant_flag,
            "differential": [{"code": c.code, "name": c.name, "probability": c.probability}
                             for c in self.differential_classes],
            "differential_coverage": self.differential.coverage,
            "uncertain": self.uncertain,
            "uncertain_threshold": self.uncertain_below,
            "uncertain_message": self.uncertain_message,
            "calibration": {"temperature": self.temperature, "tta": self.tta},
            "out_of_distribution": self.out_of_distribution,
            "unusual_image": self.unusual_image,
            "unusual_message": self.unusual_message,
            "ood_score": None if score is None else round(score, 4),
            "model": asdict(self.model),
            "timing": self.timing.to_dict(),
            "created_at": self.created_at,
            "disclaimer": self.disclaimer,
            "patient": self.patient.to_dict(),  # always present: {} when nothing was given
        }
        if self.record is not None:
            out["report"] = self.record.to_dict()
        if self.explanation is not None:
            out.update(self.explanation.to_dict(with_png=heatmap_png))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Prediction":
        """Rebuild a Prediction from ``to_dict`` output (used by signed report links)."""
        return cls(
            classes=tuple(ClassProbability(**c) for c in data["probabilities"]),
            malignant_probability=float(data["malignant_probability"]),
            model=ModelInfo.from_dict(data["model"]),
            timing=Timing.from_dict(data["timing"]),
            created_at=data["created_at"],
            disclaimer=data.get("disclaimer", DISCLAIMER),
            malignant_threshold=data.get("malignant_threshold"),
            uncertain_threshold=data.get("uncertain_threshold", DEFAULT_UNCERTAIN_BELOW),
            temperature=(data.get("calibration") or {}).get("temperature"),
            tta=(data.get("calibration") or {}).get("tta", "off"),
            nonskin=NonSkinAnswer.from_flags(data.get("out_of_distribution"), data.get("unusual_image"), data.get("ood_score")),
            explanation=Explanation.from_dict(data),
            patient=PatientContext.from_dict(data.get("patient")),  # a token from before the field: none given
            conformal=Differential(codes=tuple(c["code"] for c in data["differential"]),
                                   coverage=float(data["differential_coverage"]))
            if data.get("differential") and data.get("differential_coverage") is not None else None,
            record=ReportRecord.from_dict(data.get("report")),
        )
