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


@dataclass(frozen=True)
class Assessment:
    """What a result means for the person: the one place the advice rules and the verdict's order live.

    Every output reads it top down in the same order: ``title`` (the verdict), ``headline``
    and ``advice`` (what to do), ``confidence`` (what the numbers mean), then the details.
    The verdict is the first that applies of: uncertain, flagged, the top class with its risk.
    """

    kind: str  # "uncertain" | "flagged" | "class"
    risk: str  # the top class's risk level
    tone: str  # the colour: "high" | "uncertain" | "moderate" | "low"; never "low" when see_dermatologist
    uncertain: bool
    flagged: bool
    see_dermatologist: bool
    title: str  # the verdict in one line
    headline: str  # what to do, in one line
    advice: tuple[str, ...]
    leading: tuple[ClassProbability, ...]  # uncertain: the two or three leading classes (no single answer)
    confidence: tuple[str, ...]  # what the confidence means, in plain words
    malignant: str  # the malignant share in words, with the flag
    quality: str | None  # the model against the product's quality bar (None without the model's card)

    @property
    def names_a_class(self) -> bool:
        """An uncertain answer names no single class as its result."""
        return self.kind != "uncertain"


def _leading(prediction: Prediction) -> tuple[ClassProbability, ...]:
    first, second, *rest = prediction.classes
    return (first, second) + tuple(c for c in rest[:1] if c.probability >= LEADING_MIN)


def _confidence(prediction: Prediction, card: ModelCard | None) -> tuple[str, ...]:
    top = prediction.top
    calibrated = "calibrated " if prediction.temperature else ""
    trust = card.uncertain.get("test") if card is not None else None
    trust = trust if isinstance(trust, Mapping) else {}
    if prediction.uncertain and not prediction.low_confidence:  # uncertain because the photo is unusual
        return (f"The best guess has {percent(top.probability)} {calibrated}probability, but that figure was measured "
                f"on photos like the training ones, and this photo is not one of them.",)
    if prediction.uncertain:
        lines = [f"The best guess has only {percent(top.probability)} {calibrated}probability, below the "
                 f"{percent(prediction.uncertain_below, 0)} this model needs to be reliable."]
        if isinstance(trust.get("accuracy_uncertain"), (int, float)):
            lines.append(f"On the test images, answers this unsure were right only about "
                         f"{round(trust['accuracy_uncertain'] * 100)} times in 100.")
        return tuple(lines)
    lines = [f"{percent(top.probability)} is the model's {calibrated}probability that this is "
             f"{lesion_class(top.code).in_words}."]
    precision = quality.precision_sentence(card, top.code)
    if precision:
        lines.append(precision)
    if isinstance(trust.get("accuracy_answered"), (int, float)):
        lines.append(f"Answers at least {percent(prediction.uncertain_below, 0)} confident were right about "
                     f"{round(trust['accuracy_answered'] * 100)} times in 100 on the test images.")
    else:
        lines.append(f"Below {percent(prediction.uncertain_below, 0)} an answer counts as uncertain.")
    return tuple(lines)


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
    see_dermatologist = uncertain or risk == "high" or flagged
    advice: list[str] = [prediction.unusual_message] if prediction.unusual_image else []
    if uncertain:
        advice.append("The model cannot tell these lesion types apart for this image, so it names none of them as "
                      "the answer. Please have the lesion examined by a dermatologist.")
    if flagged and risk != "high":
        advice.append(
            f"Although the most likely class is benign, the combined probability of a malignant lesion "
            f"({percent(prediction.malignant_probability)}) reaches this model's screening threshold "
            f"({percent(prediction.malignant_threshold)}). Please have the lesion examined by a dermatologist."
        )
    if not uncertain:
        advice.append(prediction.advice)
    if not see_dermatologist:
        advice.append("If the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    if see_dermatologist:
        reason = " (uncertain result)" if uncertain and risk != "high" else ""
        reason = " (possible malignancy)" if flagged and risk != "high" and not uncertain else reason
        headline = "See a dermatologist" + reason
    elif risk == "moderate":
        headline = "Probably benign, but have it checked if you are unsure"
    else:
        headline = "Low concern from this image; keep an eye on it"
    if uncertain:
        kind, tone, title = "uncertain", "uncertain", "Uncertain: the model cannot tell. See a dermatologist."
    elif flagged:
        kind, tone, title = "flagged", "high", "Flagged as possibly malignant. See a dermatologist."
    else:
        kind, tone = "class", risk
        title = f"{top.name}: {risk} risk" + (". See a dermatologist." if risk == "high" else ".")
    return Assessment(kind=kind, risk=risk, tone=tone, uncertain=uncertain, flagged=flagged,
                      see_dermatologist=see_dermatologist, title=title, headline=headline, advice=tuple(advice),
                      leading=_leading(prediction) if uncertain else (),
                      confidence=_confidence(prediction, card), malignant=malignant_text(prediction),
                      quality=quality.bar_sentence(card) if card is not None else None)


def malignant_text(prediction: Prediction) -> str:
    """'Malignant (melanoma, basal cell carcinoma or actinic keratosis): 4.0% combined, below ...'."""
    flag = malignant_flag_text(prediction)
    return (f"Malignant ({malignant_in_words()}): {percent(prediction.malignant_probability)} combined"
            + (f", {flag}" if flag else "") + ".")


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


def malignant_flag_text(prediction: Prediction) -> str:
    """How P(malignant) compares with the model's screening threshold, in words, or ''."""
    if prediction.malignant_flag is None:
        return ""
    verdict = "at or above" if prediction.malignant_flag else "below"
    return (f"{verdict} this model's screening threshold of {percent(prediction.malignant_threshold)}"
            + (": flagged for a dermatologist" if prediction.malignant_flag else ""))


def balanced_accuracy_text(prediction: Prediction) -> str:
    value = prediction.model.test_balanced_accuracy
    return "not recorded" if value is None else percent(float(value))
