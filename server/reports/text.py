"""Prediction -> the plain-text report: reads well in an email, a terminal or on paper.

It opens with what a clinic files it by (``server.reports.record``: the patient identifier and
the requesting clinician when given, the report id, the time), then reads top down like the
result page: the verdict, what to do, what the numbers mean, then the breakdown and the details
(``server.reports.assessment.Assessment``).
"""

from __future__ import annotations

import textwrap

from server.filing import FilingDetails
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
    percent,
)
from server.reports.record import header_rows, trace_rows


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent)


def _heading(text: str) -> list[str]:
    return ["", text, "-" * len(text)]


def _row(label: str, value: str) -> str:
    """'Label:   value', wrapped under the value; a SHA-256 or an id stays whole on the label's line (past 78)."""
    if " " not in value:
        return f"{label + ':':<22}{value}"
    return textwrap.fill(f"{label + ':':<22}{value}", width=78, subsequent_indent=" " * 22,
                         break_long_words=False, break_on_hyphens=False)


def text_report(prediction: Prediction, card: ModelCard | None = None, filing: FilingDetails = FilingDetails()) -> str:
    """A plain-text report; ``card`` (the model's card) adds the test figures behind the numbers, ``filing``
    the patient identifier and requesting clinician to its header."""
    top = prediction.top
    verdict = assess(prediction, card)
    rule = "=" * len(REPORT_TITLE)
    lines = [REPORT_TITLE, rule, NOT_A_DIAGNOSIS, ""]
    lines += [_row(label, value) for label, value in header_rows(prediction, filing)] + [""]
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
    lines += _heading("IMAGE AND MODEL")
    lines += [_row(PATIENT_LABEL, prediction.patient.describe()), _row("System", SYSTEM_NAME)]
    lines += [_row(label, value) for label, value in trace_rows(prediction)]
    lines.append(f"Test balanced accuracy of the model: {balanced_accuracy_text(prediction)}")
    lines += _heading("DISCLAIMER") + [_wrap(prediction.disclaimer), ""]
    return "\n".join(lines)
