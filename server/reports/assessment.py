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
from server.reports.subgroup_warning import SubgroupWarning, subgroup_warning
from server.reports.wording import percent

SYSTEM_NAME = "Skin-lesion screening aid"
REPORT_TITLE = "Skin-lesion screening report"
NOT_A_DIAGNOSIS = "Screening aid, not a diagnosis."
# "Uncertain" is decided by the Prediction (``Prediction.uncertain``): its differential (the types
# still possible, ``server/differential.py``) holds more than one class. Nothing here re-derives it.


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
    differential: tuple[ClassProbability, ...]  # the types still possible, most likely first (one: a confident answer)
    key_label: str  # "Malignant" when flagged, "Confidence" for one type, else what the list's figure is
    key_figure: float  # the one number shown large
    key_sentence: str  # that number in context: what it is, what it meant on the test images
    confidence: tuple[str, ...]  # how sure the model is, in words: the one type, or the list and its coverage
    malignant: str  # the malignant share against the flag, with the flag's miss rate on test images
    quality: str | None  # the model against the product's quality bar (None without the model's card)
    subgroup_warning: SubgroupWarning | None = None  # the patient's group is flagged on /model: its own figures

    @property
    def names_a_class(self) -> bool:
        """An uncertain answer names no single class as its result."""
        return not self.uncertain


def _trust(card: ModelCard | None) -> Mapping:
    trust = card.uncertain.get("test") if card is not None else None
    return trust if isinstance(trust, Mapping) else {}


def differential_measured(prediction: Prediction, card: ModelCard | None) -> Mapping:
    """The test-split figures of the thresholds that made this list (coverage, single-class accuracy),
    or {} where they do not apply: no conformal thresholds, or a photo unlike the training ones."""
    if prediction.differential.coverage is None or prediction.unusual_image or card is None or card.differential is None:
        return {}
    reads = bool(card.patient_context and card.patient_context.reads)
    return card.differential.rule_for(reads and prediction.patient.given).measured("test")


def times_in(rate: float) -> str:
    """0.915 -> 'about 9 times in 10'; 0.96 -> 'about 96 times in 100': a frequency as people read it."""
    return f"about {round(rate * 100)} times in 100" if rate >= 0.95 or rate < 0.5 else f"about {round(rate * 10)} times in 10"


def differential_title(prediction: Prediction) -> str:
    """The list in one line: 'Melanoma' for one type, 'One of: Melanoma, Melanocytic nevus (mole)' for more."""
    names = [c.name for c in prediction.differential_classes]
    return names[0] if len(names) == 1 else "One of: " + ", ".join(names)


def differential_sentence(prediction: Prediction, card: ModelCard | None) -> str:
    """The list and how often lists like it held the right type on the test photos, in words."""
    coverage = differential_measured(prediction, card).get("coverage")
    line = differential_title(prediction) + "."
    if isinstance(coverage, (int, float)):
        return line + f" The right type is among these {times_in(coverage)} on test photos."
    if prediction.unusual_image:
        return line + (" This photo is unlike the ones the model learnt from, so it lists the leading types; how "
                       "often the right one is among them was measured only on photos like the training ones.")
    return line + " The model cannot narrow it down further from this photo."


def _list_key(prediction: Prediction, card: ModelCard | None) -> tuple[str, float, str]:
    """The key figure of a list of several types: its measured coverage, else the share of probability it holds."""
    coverage = differential_measured(prediction, card).get("coverage")
    if isinstance(coverage, (int, float)):
        return "Right type among these", float(coverage), differential_sentence(prediction, card)
    held = sum(c.probability for c in prediction.differential_classes)
    return ("These types together", held, differential_sentence(prediction, card)
            + f" Together they hold {percent(held)} of the model's probability.")


def _confidence(prediction: Prediction, card: ModelCard | None) -> tuple[str, ...]:
    """How sure the model is, in words: the list with its coverage, or the one type and what such answers
    were worth on the test images."""
    top = prediction.top
    if prediction.uncertain:
        return (_list_key(prediction, card)[2],)
    single = differential_measured(prediction, card).get("single_accuracy")
    calibrated = "calibrated " if prediction.temperature else ""
    line = f"{percent(top.probability)} is the model's {calibrated}probability that this is {lesion_class(top.code).in_words}"
    if isinstance(single, (int, float)):
        return (line + f"; on test photos, answers that named one type alone were right {times_in(single)}.",)
    trust = _trust(card)
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


def flag_not_raised_sentence(card: ModelCard | None, see_dermatologist: bool, warning: SubgroupWarning | None = None) -> str:
    """What an answer without the malignant flag cannot promise: how often the flag misses, in words."""
    misses = f", but {flag_misses(card, 'it', warning)}" if flag_miss_rate(card) is not None else ""
    tail = ("." if see_dermatologist else
            ": if the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    return f"The malignant flag is not raised{misses}" + tail


def malignant_sentence(prediction: Prediction, card: ModelCard | None, warning: SubgroupWarning | None = None) -> str:
    """P(malignant) against the flag's threshold, and how often the flag misses, in one sentence."""
    share = (f"{percent(prediction.malignant_probability)} is the model's combined probability that this lesion is "
             f"malignant ({malignant_in_words()})")
    if prediction.malignant_flag is None:
        return share + "; this model has no screening threshold for it."
    if prediction.malignant_flag:
        return (share + f", at or above the {percent(prediction.malignant_threshold)} that raises the flag; "
                f"{flag_misses(card, 'the flag', warning)}.")
    return (share + f", below the {percent(prediction.malignant_threshold)} that raises the flag. The flag is not a "
            f"guarantee: {flag_misses(card, 'it', warning)}.")


def flag_misses(card: ModelCard | None, subject: str, warning: SubgroupWarning | None = None) -> str:
    """'<subject> missed about 1 in 9 malignant lesions on the test images', or that no such figure is recorded;
    with a subgroup warning, the patient's group's own rate beside it, since the whole split's does not hold there."""
    missed = flag_miss_rate(card)
    if missed is None:
        return f"no test figure is recorded for how often {subject} misses"
    own = [f"{one_in(g.flag_miss_rate)} for {g.words}" for g in (warning.groups if warning else ())
           if g.flag_miss_rate is not None]
    return f"{subject} missed {one_in(missed)} malignant lesions on the test images" + (
        f" ({', '.join(own)}, as the warning on this patient's group says)" if own else "")


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
    warning = subgroup_warning(prediction, card, flag_miss_rate(card))
    if flagged and (uncertain or risk != "high"):
        advice.append("Whatever type the lesion turns out to be, a malignant one cannot be ruled out from this image.")
    if kind == "uncertain":
        advice.append("The model cannot tell which of these types it is from this photo: a dermatologist can.")
    elif not uncertain:
        advice.append(prediction.advice)
    if prediction.malignant_flag is False:
        advice.append(flag_not_raised_sentence(card, see_dermatologist, warning))
    elif not see_dermatologist:
        advice.append("If the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    if kind == "flagged":
        tone, title = "high", "Flagged as possibly malignant"
        headline = "See a dermatologist promptly"
    elif kind == "uncertain":
        tone, title = "uncertain", differential_title(prediction)
        headline = "See a dermatologist (the model cannot narrow it to one type)"
    else:
        tone, title = risk, f"{top.name}: {risk} risk"
        headline = {"high": "See a dermatologist promptly" if top.code == "mel" else "See a dermatologist",
                    "moderate": "Probably benign, but have it checked if you are unsure"}.get(
            risk, "Low concern from this image; keep an eye on it")
    confidence = _confidence(prediction, card)
    malignant = malignant_sentence(prediction, card, warning)
    key_label, key_figure, key_sentence = (("Malignant", prediction.malignant_probability, malignant) if flagged
                                           else _list_key(prediction, card) if uncertain
                                           else ("Confidence", top.probability, confidence[0]))
    return Assessment(kind=kind, risk=risk, tone=tone, uncertain=uncertain, flagged=flagged,
                      see_dermatologist=see_dermatologist, title=title, headline=headline, advice=tuple(advice),
                      differential=prediction.differential_classes, key_label=key_label, key_figure=key_figure,
                      key_sentence=key_sentence, confidence=confidence, malignant=malignant,
                      quality=quality.bar_sentence(card) if card is not None else None,
                      subgroup_warning=warning)


def summary(prediction: Prediction, card: ModelCard | None = None) -> dict:
    """The verdict in the API's words: the same title, next step and key sentence as the page and reports."""
    verdict = assess(prediction, card)
    return {"kind": verdict.kind, "title": verdict.title, "next_step": verdict.headline,
            "key_figure": {"label": verdict.key_label, "value": verdict.key_figure, "meaning": verdict.key_sentence},
            "differential": differential_title(prediction), "uncertain": verdict.uncertain,
            "malignant_flag": prediction.malignant_flag}


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
    """The quoted test figure with what it measured ('69.0% (float32, photo alone)'), so no reader takes it for
    another way of serving; a token from before the name carries the bare figure."""
    value, figure = prediction.model.test_balanced_accuracy, prediction.model.test_figure
    if value is None:
        return "not recorded"
    return percent(float(value)) + (f" ({figure.name})" if figure is not None else "")
