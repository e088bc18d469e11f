"""Prediction -> the plain-text report: reads well in an email, a terminal or on paper."""

from __future__ import annotations

import textwrap

from server.lesions import lesion_class
from server.prediction import Prediction
from server.reports.assessment import (
    NOT_A_DIAGNOSIS,
    REPORT_TITLE,
    SYSTEM_NAME,
    assess,
    balanced_accuracy_text,
    format_timestamp,
    malignant_codes,
    malignant_flag_text,
    percent,
)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent)


def text_report(prediction: Prediction) -> str:
    """A plain-text report that reads well in an email, a terminal or on paper."""
    top = prediction.top
    verdict = assess(prediction)
    rule = "=" * len(REPORT_TITLE)
    lines = [
        REPORT_TITLE,
        rule,
        NOT_A_DIAGNOSIS,
        "",
        f"Date and time:        {format_timestamp(prediction.created_at)}",
        f"System:               {SYSTEM_NAME}",
        f"Model:                {prediction.model.name}, version {prediction.model.version}",
        f"Model file sha256:    {prediction.model.sha256[:16]}",
        f"Test balanced accuracy of the model: {balanced_accuracy_text(prediction)}",
        "",
        "RESULT",
        "------",
        f"Predicted condition:  {top.name} ({top.code})",
        f"Confidence:           {percent(top.probability)}" + ("  (uncertain)" if verdict.uncertain else ""),
        f"Risk level:           {verdict.risk.upper()}",
        f"Malignant probability ({malignant_codes()}): {percent(prediction.malignant_probability)}"
        + (f", {malignant_flag_text(prediction)}" if malignant_flag_text(prediction) else ""),
        "",
        "PROBABILITY BREAKDOWN (highest first)",
        "-------------------------------------",
    ]
    if prediction.temperature:
        lines.insert(-2, f"Probabilities are calibrated (temperature scaling, T = {prediction.temperature:.2f}).")
        lines.insert(-2, "")
    for c in prediction.classes:
        bar = "#" * round(c.probability * 20)
        lines.append(f"{percent(c.probability):>7}  {bar:<20}  {c.name} [{c.code}, {c.risk} risk]")
    lines += ["", "ADVICE", "------", _wrap(verdict.headline + ".")]
    lines += [_wrap(a, "  ") for a in verdict.advice]
    lines += ["", "ABOUT THE PREDICTED CONDITION", "-----------------------------",
              _wrap(lesion_class(top.code).description)]
    lines += ["", "DISCLAIMER", "----------", _wrap(prediction.disclaimer), ""]
    return "\n".join(lines)
