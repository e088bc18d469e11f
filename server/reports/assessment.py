"""What a result means for the person, in words: the advice rules and the phrasing every output shares.

Pure functions of a ``Prediction``, so the result page, the text report and the PDF all
say the same thing. Class names, risks, descriptions and advice come from
``server.lesions`` only; this module adds wording *about* a result, never about a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from collections.abc import Mapping

from server.lesions import lesion_class, malignant_in_words
from server.model.card import ModelCard
from server.prediction import ClassProbability, Prediction
from server.reports import quality
from server.reports.wording import percent

SYSTEM_NAME = "Skin-lesion screening aid"
REPORT_TITLE = "Skin-lesion screening report"
NOT_A_DIAGNOSIS = "Screening aid, not a diagnosis."
# "Uncertain" is decided by the Prediction (``Prediction.uncertain``): its calibrated top
# probability is below the model card's ``thresholds.uncertain``, chosen on validation
# (``server.thresholds.DEFAULT_UNCERTAIN_BELOW`` only for a card without one). Nothing here re-derives it.
LEADING_MIN = 0.05  # an uncertain answer lists its top two classes, and the third when it has at least this


# The one precedence rule: a result is described by the first of these that applies. A refusal
# (not a skin lesion) gives no diagnosis at all; a raised malignant flag outranks class
# uncertainty, because "see a dermatologist promptly" holds whichever type the lesion is.
VERDICT_ORDER = ("refused", "flagged", "uncertain", "class")


def verdict_kind(*, refused: bool = False, flagged: bool = False, uncertain: bool = False) -> str:
    """The first verdict of ``VERDICT_ORDER`` that applies: every output orders its answer by this."""
    applies = {"refused": refused, "flagged": flagged, "uncertain": uncertain, "class": True}
    return next(kind for kind in VERDICT_ORDER if applies[kind])


@dataclass(frozen=True)
class Assessment:
    """What a result means for the person: the advice rules and the verdict's wording, in one place.

    Every output reads it top down in the same order: ``title`` (the verdict), ``headline``
    (the next step), ``key_figure`` with ``key_sentence`` (the one number to read and what it
    means on test images), then ``advice`` and the details. ``kind`` comes from ``verdict_kind``.
    """

    kind: str  # "flagged" | "uncertain" | "class" (a refusal never becomes a Prediction)
    risk: str  # the top class's risk level
    tone: str  # the colour: "high" | "uncertain" | "moderate" | "low"; never "low" when see_dermatologist
    uncertain: bool
    flagged: bool
    see_dermatologist: bool
    title: str  # the verdict in one line
    headline: str  # what to do, in one line
    advice: tuple[str, ...]
    leading: tuple[ClassProbability, ...]  # uncertain: the two or three leading classes (no single answer)
    key_label: str  # "Malignant" when flagged, else "Confidence"
    key_figure: float  # the one number shown large
    key_sentence: str  # that number in context: what it is, what it meant on the test images
    confidence: tuple[str, ...]  # the top class's probability in context (the details)
    malignant: str  # the malignant share against the flag, with the flag's miss rate on test images
    quality: str | None  # the model against the product's quality bar (None without the model's card)

    @property
    def names_a_class(self) -> bool:
        """An uncertain answer names no single class as its result."""
        return not self.uncertain


def _leading(prediction: Prediction) -> tuple[ClassProbability, ...]:
    first, second, *rest = prediction.classes
    return (first, second) + tuple(c for c in rest[:1] if c.probability >= LEADING_MIN)


def _trust(card: ModelCard | None) -> Mapping:
    trust = card.uncertain.get("test") if card is not None else None
    return trust if isinstance(trust, Mapping) else {}


def _confidence(prediction: Prediction, card: ModelCard | None) -> tuple[str, ...]:
    """The top class's probability and what answers that sure were worth on the test images."""
    top = prediction.top
    calibrated = "calibrated " if prediction.temperature else ""
    trust = _trust(card)
    if prediction.uncertain and not prediction.low_confidence:  # uncertain because the photo is unusual
        return (f"The best guess has {percent(top.probability)} {calibrated}probability, but that figure was measured "
                f"on photos like the training ones, and this photo is not one of them.",)
    if prediction.uncertain:
        line = (f"The best guess, {lesion_class(top.code).in_words}, has only {percent(top.probability)} {calibrated}"
                f"probability, below the {percent(prediction.uncertain_below, 0)} this model needs to name a type")
        if isinstance(trust.get("accuracy_uncertain"), (int, float)):
            line += (f"; on the test images, answers this unsure were right only about "
                     f"{round(trust['accuracy_uncertain'] * 100)} times in 100")
        return (line + ".",)
    line = f"{percent(top.probability)} is the model's {calibrated}probability that this is {lesion_class(top.code).in_words}"
    if isinstance(trust.get("accuracy_answered"), (int, float)):
        line += (f"; on the test images, answers at least {percent(prediction.uncertain_below, 0)} sure were right "
                 f"about {round(trust['accuracy_answered'] * 100)} times in 100")
    return (line + ".",)


def one_in(rate: float) -> str:
    """0.115 -> 'about 1 in 9': a small rate as people read it."""
    if rate <= 0:
        return "none"
    return f"about 1 in {max(2, round(1 / rate))}" if rate < 0.5 else f"about {round(rate * 100)} in 100"


def flag_miss_rate(card: ModelCard | None) -> float | None:
    """The share of malignant test lesions the flag did not raise (1 - sensitivity), or None."""
    sensitivity = (card.test_metrics.get("malignant") or {}).get("sensitivity") if card is not None else None
    return 1.0 - float(sensitivity) if isinstance(sensitivity, (int, float)) else None


def flag_not_raised_sentence(card: ModelCard | None, see_dermatologist: bool) -> str:
    """What an answer without the malignant flag cannot promise: how often the flag misses, in words."""
    misses = f", but {flag_misses(card, 'it')}" if flag_miss_rate(card) is not None else ""
    tail = ("." if see_dermatologist else
            ": if the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    return f"The malignant flag is not raised{misses}" + tail


def malignant_sentence(prediction: Prediction, card: ModelCard | None) -> str:
    """P(malignant) against the flag's threshold, and how often the flag misses, in one sentence."""
    share = (f"{percent(prediction.malignant_probability)} is the model's combined probability that this lesion is "
             f"malignant ({malignant_in_words()})")
    if prediction.malignant_flag is None:
        return share + "; this model has no screening threshold for it."
    if prediction.malignant_flag:
        return (share + f", at or above the {percent(prediction.malignant_threshold)} that raises the flag; "
                f"{flag_misses(card, 'the flag')}.")
    return (share + f", below the {percent(prediction.malignant_threshold)} that raises the flag. The flag is not a "
            f"guarantee: {flag_misses(card, 'it')}.")


def flag_misses(card: ModelCard | None, subject: str) -> str:
    """'<subject> missed about 1 in 9 malignant lesions on the test images', or that no such figure is recorded."""
    missed = flag_miss_rate(card)
    if missed is None:
        return f"no test figure is recorded for how often {subject} misses"
    return f"{subject} missed {one_in(missed)} malignant lesions on the test images"


def assess(prediction: Prediction, card: ModelCard | None = None) -> Assessment:
    """Turn a prediction into its verdict, advice and the meaning of its numbers.

    High-risk classes, flagged and uncertain answers all end in "see a dermatologist": a
    screening aid should err towards a clinician, never towards reassurance it cannot back.
    ``card`` (the model card) adds the test figures that give the numbers their context; it
    is used only when it describes the model that made the prediction.
    """
    card = quality.card_for(prediction, card)
    top = prediction.top
    risk = top.risk
    uncertain = prediction.uncertain
    flagged = bool(prediction.malignant_flag)
    kind = verdict_kind(flagged=flagged, uncertain=uncertain)
    see_dermatologist = uncertain or risk == "high" or flagged
    advice: list[str] = [prediction.unusual_message] if prediction.unusual_image else []
    if flagged and (uncertain or risk != "high"):
        advice.append("Whatever type the lesion turns out to be, a malignant one cannot be ruled out from this image.")
    if kind == "uncertain" and prediction.low_confidence:
        advice.append("The model cannot tell these lesion types apart for this image, so it names none of them as "
                      "the answer.")
    elif not uncertain:
        advice.append(prediction.advice)
    if prediction.malignant_flag is False:
        advice.append(flag_not_raised_sentence(card, see_dermatologist))
    elif not see_dermatologist:
        advice.append("If the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    if kind == "flagged":
        tone, title = "high", "Flagged as possibly malignant"
        headline = "See a dermatologist promptly"
    elif kind == "uncertain":
        tone, title = "uncertain", "Uncertain: the model cannot tell which type this is"
        headline = "See a dermatologist (uncertain result)"
    else:
        tone, title = risk, f"{top.name}: {risk} risk"
        headline = {"high": "See a dermatologist promptly" if top.code == "mel" else "See a dermatologist",
                    "moderate": "Probably benign, but have it checked if you are unsure"}.get(
            risk, "Low concern from this image; keep an eye on it")
    confidence = _confidence(prediction, card)
    malignant = malignant_sentence(prediction, card)
    key_label, key_figure, key_sentence = (("Malignant", prediction.malignant_probability, malignant) if flagged
                                           else ("Confidence", top.probability, confidence[0]))
    return Assessment(kind=kind, risk=risk, tone=tone, uncertain=uncertain, flagged=flagged,
                      see_dermatologist=see_dermatologist, title=title, headline=headline, advice=tuple(advice),
                      leading=_leading(prediction) if uncertain else (), key_label=key_label, key_figure=key_figure,
                      key_sentence=key_sentence, confidence=confidence, malignant=malignant,
                      quality=quality.bar_sentence(card) if card is not None else None)


def summary(prediction: Prediction, card: ModelCard | None = None) -> dict:
    """The verdict in the API's words: the same title, next step and key sentence as the page and reports."""
    verdict = assess(prediction, card)
    return {"kind": verdict.kind, "title": verdict.title, "next_step": verdict.headline,
            "key_figure": {"label": verdict.key_label, "value": verdict.key_figure, "meaning": verdict.key_sentence},
            "uncertain": verdict.uncertain, "malignant_flag": prediction.malignant_flag}


def format_timestamp(iso: str) -> str:
    """'2024-05-01T12:34:56+00:00' -> '2024-05-01 12:34:56 UTC' (time zone always shown)."""
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    zone = "UTC" if not offset else when.strftime("UTC%z")
    return when.strftime("%Y-%m-%d %H:%M:%S ") + zone


def balanced_accuracy_text(prediction: Prediction) -> str:
    value = prediction.model.test_balanced_accuracy
    return "not recorded" if value is None else percent(float(value))
