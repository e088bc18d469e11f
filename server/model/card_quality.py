"""Which of the card's test figures an answer quotes: the one measured as the answer was made.

The card keeps balanced accuracy on the test split for float32 (photo alone, and with the patient
context for a model that reads it) and for int8 (photo alone, ``training.int8_bar``). An answer
served in int8 with the context given has no figure of its own; it quotes float32's with the
context and says int8 was not measured so, rather than a figure measured another way unnamed.
"""

from __future__ import annotations

from typing import Mapping

from server.model.card import ModelCard
from server.quality_figure import INPUTS_CONTEXT, INPUTS_PHOTO, QuotedFigure


def number_or_none(value) -> float | None:
    """A card figure as a float, or None when it is missing or not a number (a bool is not one)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dig(data, *keys) -> float | None:
    for key in keys:
        data = data.get(key) if isinstance(data, Mapping) else None
    return number_or_none(data)


def recorded_figures(card: ModelCard) -> dict[tuple[str, bool], float]:
    """Test balanced accuracy by (precision, context given), for each way the card records it."""
    served = card.patient_context.figure("served", {}) if card.patient_context is not None else {}
    figures = {("float32", False): _dig(served, "test", "without_context", "balanced_accuracy")
               or number_or_none(card.test_metrics.get("balanced_accuracy")),
               ("float32", True): _dig(served, "test", "with_context", "balanced_accuracy"),
               ("int8", False): (_dig(card.int8.figure("bar", {}), "test", "int8", "balanced_accuracy")
                                 if card.int8 is not None else None)}
    return {key: value for key, value in figures.items() if value is not None}


def quoted_figure(card: ModelCard, served: str, context_given: bool) -> QuotedFigure | None:
    """The figure for an answer served in ``served`` precision, with or without the patient context:
    its own when recorded, else float32's for the same inputs (named as such); None when neither is."""
    figures = recorded_figures(card)
    inputs = INPUTS_CONTEXT if context_given else INPUTS_PHOTO
    for precision in dict.fromkeys((served, "float32")):
        if (precision, context_given) in figures:
            return QuotedFigure(figures[(precision, context_given)], precision, inputs, served)
    return None
