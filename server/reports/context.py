"""The patient context in words: whether the model reads it, and what it changed on the test split.

Pure functions of the card (``ModelCard.patient_context``); the model page, the result page,
both reports and ``report.md`` read them, so every output says the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.model.card import ModelCard
from server.reports.wording import percent

READS = ("This model reads the patient's age, sex and body site when they are given, beside the photo. "
         "Without them it answers from the photo alone, exactly as it would have without this feature.")
IGNORES = ("This model answers from the photo alone: age, sex and body site are recorded with the result "
           "but do not change it.")
# (where the figure is in the card's served figures, heading, shown as a percentage)
CONTEXT_FIGURES = ((("balanced_accuracy",), "Balanced accuracy", True), (("accuracy",), "Accuracy", True),
                   (("melanoma_recall",), "Melanoma recall", True), (("malignant", "auc"), "Malignant AUC", False),
                   (("malignant", "sensitivity"), "Malignant flag sensitivity", True),
                   (("malignant", "specificity"), "Malignant flag specificity", True))


def reads_context(card: ModelCard | None) -> bool:
    """Whether the card says its model reads the patient context."""
    return bool(card is not None and card.patient_context is not None and card.patient_context.reads)


def context_sentence(card: ModelCard | None) -> str:
    """One sentence for pages and reports: does the given context change the answer?"""
    return READS if reads_context(card) else IGNORES


@dataclass(frozen=True)
class ContextFigure:
    """One figure on one split, served without and with each image's own context."""

    label: str
    without: str
    with_context: str
    change: str


def _value(figures, path: tuple):
    for key in path:
        figures = (figures or {}).get(key)
    return figures


def _show(value, as_percent: bool) -> str:
    if value is None:
        return "not recorded"
    return percent(value) if as_percent else f"{value:.3f}"


def _change(a, b, as_percent: bool) -> str:
    if a is None or b is None:
        return ""
    d = b - a
    return f"{d * 100:+.1f} points" if as_percent else f"{d:+.3f}"


def context_figures(card: ModelCard | None, split: str = "test") -> list[ContextFigure]:
    """The with/without comparison on ``split`` (served probabilities, one operating point), or []."""
    if not reads_context(card):
        return []
    served = (card.patient_context.figure("served") or {}).get(split) or {}
    without, with_ = served.get("without_context"), served.get("with_context")
    if not without or not with_:
        return []
    return [ContextFigure(label, _show(_value(without, key), pct), _show(_value(with_, key), pct),
                          _change(_value(without, key), _value(with_, key), pct))
            for key, label, pct in CONTEXT_FIGURES]


def context_markdown(card: ModelCard | None) -> list[str]:
    """``report.md``'s section on the patient context (lines); [] when the card has none."""
    if card is None or card.patient_context is None:
        return []
    spec = card.patient_context
    lines = ["## Patient context (age, sex, body site)", "", context_sentence(card), "",
             f"- Shipped: {spec.shipped}; method: {spec.figure('method', 'not recorded')}",
             f"- Rule: {spec.figure('rule', 'not recorded')}",
             f"- Validation balanced accuracy by strength: {spec.figure('val_balanced_accuracy_by_strength')} "
             f"(image only {spec.figure('val_balanced_accuracy_image_only')}; chosen strength {spec.strength})"]
    for split in ("test", "val"):
        rows = context_figures(card, split)
        if rows:
            lines += ["", f"| {split} split | without context | with each image's context | change |", "|---|---|---|---|",
                      *[f"| {r.label} | {r.without} | {r.with_context} | {r.change} |" for r in rows]]
    return lines


def context_use(card: ModelCard | None, given: bool) -> str | None:
    """Under the context a person gave: whether it changed the answer (None when none was given)."""
    if not given:
        return None
    if reads_context(card):
        return "The model read this context beside the photo."
    return "This model does not read patient context: it is recorded here but did not change the result."
