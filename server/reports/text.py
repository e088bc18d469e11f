"""Prediction -> the plain-text report: reads well in an email, a terminal or on paper.

It reads top down like the result page: the verdict, what to do, what the numbers mean,
then the breakdown and the details (``server.reports.assessment.Assessment``).
"""

from __future__ import annotations

import textwrap

from server.lesions import lesion_class
from server.model.card import ModelCard
from server.patient import PATIENT_LABEL
from server.prediction import Prediction
from server.reports import quality
from server.reports.assessment import (
    NOT_A_DIAGNOSIS,
    REPORT_TITLE,
    SYSTEM_NAME,
    assess,
    balanced_accuracy_text,
    format_timestamp,
    percent,
)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent)


def _heading(text: str) -> list[str]:
    return ["", text, "-" * len(text)]


def text_report(prediction: Prediction, card: ModelCard | None = None) -> str:
    """A plain-text report; ``card`` (the model's card) adds the test figures behind the numbers."""
    top = prediction.top
    verdict = assess(prediction, card)
    rule = "=" * len(REPORT_TITLE)
    lines = [REPORT_TITLE, rule, NOT_A_DIAGNOSIS, ""]
    lines += [_wrap("RESULT: " + verdict.title + "."), _wrap("NEXT STEP: " + verdict.headline + ".")]
    lines += [f"{verdict.key_label + ':':<21} {percent(verdict.key_figure)}", _wrap(verdict.key_sentence, "  ")]
    if verdict.subgroup_warning:
        lines.append(_wrap("THIS PATIENT'S GROUP: " + verdict.subgroup_warning.message, "  "))
    note = quality.bar_note(quality.card_for(prediction, card))
    lines += [_wrap("MODEL QUALITY: " + note)] if note else []
    if verdict.uncertain:
        lines.append("Possible types (the differential, most likely first):")
        lines += [f"  {percent(c.probability):>6}  {c.name} [{c.code}]" for c in verdict.differential]
    else:
        risk = verdict.risk.upper()
        if verdict.flagged and verdict.risk != "high":
            risk += " for this class alone; the lesion is flagged (see above)"
        lines += [f"Predicted condition:  {top.name} ({top.code})", f"Risk level:           {risk}"]
    lines += _heading("WHAT TO DO")
    lines += [_wrap(a, "  ") for a in verdict.advice]
    lines += _heading("WHAT THE NUMBERS MEAN")
    if verdict.flagged:
        lines.append("Lesion type:")
        lines += [_wrap(line, "  ") for line in verdict.confidence]
    else:
        lines.append(f"Malignant:            {percent(prediction.malignant_probability)}")
        lines.append(_wrap(verdict.malignant, "  "))
    if verdict.quality:
        lines.append(_wrap(verdict.quality))
    if prediction.temperature:
        lines.append(f"Probabilities are calibrated (temperature scaling, T = {prediction.temperature:.2f}).")
    lines += _heading("PROBABILITY BREAKDOWN (highest first)")
    for c in prediction.classes:
        bar = "#" * round(c.probability * 20)
        lines.append(f"{percent(c.probability):>7}  {bar:<20}  {c.name} [{c.code}, {c.risk} risk]")
    about = verdict.differential
    lines += _heading("ABOUT THE POSSIBLE TYPES" if verdict.uncertain else "ABOUT THE PREDICTED CONDITION")
    lines += [_wrap((f"{c.name}: " if verdict.uncertain else "") + lesion_class(c.code).description) for c in about]
    lines += _heading("MODEL AND DATE")
    lines += [
        _wrap(f"{PATIENT_LABEL + ':':<22}{prediction.patient.describe()}", ""),
        f"Date and time:        {format_timestamp(prediction.created_at)}",
        f"System:               {SYSTEM_NAME}",
        f"Model:                {prediction.model.name}, version {prediction.model.version}",
        f"Model file sha256:    {prediction.model.sha256[:16]}",
        f"Test balanced accuracy of the model: {balanced_accuracy_text(prediction)}",
    ]
    lines += _heading("DISCLAIMER") + [_wrap(prediction.disclaimer), ""]
    return "\n".join(lines)
