"""What a result means for the person, in words: the advice rules and the phrasing every output shares.

Pure functions of a ``Prediction``, so the result page, the text report and the PDF all
say the same thing. Class names, risks, descriptions and advice come from
``server.lesions`` only; this module adds wording *about* a result, never about a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from server.lesions import MALIGNANT_CODES
from server.prediction import Prediction

SYSTEM_NAME = "Skin-lesion screening aid"
REPORT_TITLE = "Skin-lesion screening report"
NOT_A_DIAGNOSIS = "Screening aid, not a diagnosis."
# "Uncertain" is decided by the Prediction (``Prediction.uncertain``): its calibrated top
# probability is below the model card's ``thresholds.uncertain``, chosen on validation
# (``server.thresholds.DEFAULT_UNCERTAIN_BELOW`` only for a card without one). Nothing here re-derives it.


@dataclass(frozen=True)
class Assessment:
    """What a result means for the person: the one place the advice rules live."""

    risk: str
    uncertain: bool
    see_dermatologist: bool
    headline: str
    advice: tuple[str, ...]


def assess(prediction: Prediction) -> Assessment:
    """Turn a prediction into risk and advice.

    High-risk classes and uncertain answers both end in "see a dermatologist": a screening
    aid should err towards a clinician, never towards reassurance it cannot back.
    """
    top = prediction.top
    risk = top.risk
    uncertain = prediction.uncertain
    flagged = bool(prediction.malignant_flag)
    see_dermatologist = uncertain or risk == "high" or flagged
    advice: list[str] = []
    if flagged and risk != "high":
        advice.append(
            f"Although the most likely class is benign, the combined probability of a malignant lesion "
            f"({percent(prediction.malignant_probability)}) reaches this model's screening threshold "
            f"({percent(prediction.malignant_threshold)}). Please have the lesion examined by a dermatologist."
        )
    if uncertain:
        advice.append(
            f"The result is uncertain: the model's best guess has only {percent(top.probability)} probability "
            f"(below the {percent(prediction.uncertain_below, 0)} this model needs to be reliable), so it cannot "
            "tell these conditions apart reliably for this image. "
            "Please have the lesion examined by a dermatologist."
        )
    # When unsure, the class advice is about a guess, so say whose advice it is.
    advice.append(f"About {top.name}: {prediction.advice}" if uncertain else prediction.advice)
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
    return Assessment(risk=risk, uncertain=uncertain, see_dermatologist=see_dermatologist,
                      headline=headline, advice=tuple(advice))


def percent(p: float, digits: int = 1) -> str:
    """0.4567 -> '45.7%': one formatting rule for every page and report."""
    return f"{p * 100:.{digits}f}%"


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


def malignant_codes() -> str:
    """'akiec + bcc + mel': which classes the malignant probability adds up, from the catalogue."""
    return " + ".join(sorted(MALIGNANT_CODES))


def balanced_accuracy_text(prediction: Prediction) -> str:
    value = prediction.model.test_balanced_accuracy
    return "not recorded" if value is None else percent(float(value))
