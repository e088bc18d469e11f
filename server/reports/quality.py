"""The model card's test figures in words: per-class precision and recall, and the product's quality bar.

Pure functions of the card (``ModelCard`` or its ``metrics.test`` mapping); the pages and both
reports read them, so every output quotes the same figures the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.lesions import CATALOGUE, lesion_class
from server.model.card import ModelCard
from server.prediction import Prediction
from server.reports.wording import percent
from server.thresholds import QUALITY_BAR


@dataclass(frozen=True)
class BarCheck:
    """One line of the quality bar: the figure on the test split, the minimum, whether it is met."""

    key: str
    label: str
    minimum: float
    value: float | None  # None: the card does not record it

    @property
    def as_percent(self) -> bool:
        return "auc" not in self.key  # an AUC is a number from 0.5 to 1, not a share of images

    def show(self, value: float) -> str:
        return percent(value) if self.as_percent else f"{value:.3f}"

    @property
    def bar(self) -> str:
        """The minimum as the bar states it: '≥ 80%', '≥ 0.95'."""
        return f"\u2265 {percent(self.minimum, 0) if self.as_percent else f'{self.minimum:.2f}'}"

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value >= self.minimum


@dataclass(frozen=True)
class ClassFigures:
    code: str
    name: str
    precision: float
    recall: float
    support: int


def card_for(prediction: Prediction, card: ModelCard | None) -> ModelCard | None:
    """The card only when it describes the model that made this prediction (a report token may be older)."""
    if card is None or card.name != prediction.model.name or card.version != prediction.model.version:
        return None
    return card


def _test(card_or_test) -> Mapping:
    if card_or_test is None:
        return {}
    return card_or_test.test_metrics if isinstance(card_or_test, ModelCard) else card_or_test


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def class_figures(card_or_test) -> list[ClassFigures]:
    """Per-class precision, recall and support on the test split, in catalogue order (empty without them)."""
    per_class = _test(card_or_test).get("per_class") or {}
    rows = []
    for c in CATALOGUE:
        figures = per_class.get(c.code)
        if not isinstance(figures, Mapping):
            continue
        precision, recall, support = (_number(figures.get(k)) for k in ("precision", "recall", "support"))
        if precision is None or recall is None or support is None:
            continue
        rows.append(ClassFigures(c.code, c.name, precision, recall, int(support)))
    return rows


def _figure(test: Mapping, key: str) -> float | None:
    per_class = test.get("per_class") or {}
    if key == "melanoma_recall":
        return _number((per_class.get("mel") or {}).get("recall"))
    if key == "malignant_auc":
        return _number((test.get("malignant") or {}).get("auc"))
    if key == "lowest_class_recall":
        recalls = [_number((v or {}).get("recall")) for v in per_class.values() if isinstance(v, Mapping)]
        return min(recalls) if recalls and None not in recalls else None
    return _number(test.get(key))


def bar_checks(card_or_test) -> list[BarCheck]:
    """Every line of ``server.thresholds.QUALITY_BAR`` with this model's test figure."""
    test = _test(card_or_test)
    return [BarCheck(key, label, minimum, _figure(test, key)) for key, label, minimum in QUALITY_BAR]


def meets_bar(checks: list[BarCheck]) -> bool | None:
    """True: every figure reaches the bar; False: one falls short; None: none short but some not recorded."""
    if any(c.met is False for c in checks):
        return False
    return None if any(c.met is None for c in checks) else True


def lowest_class(card_or_test) -> str | None:
    """The name of the class with the lowest test recall (the bar's weakest-class figure)."""
    rows = class_figures(card_or_test)
    return min(rows, key=lambda r: r.recall).name if rows else None


def bar_sentence(card_or_test) -> str:
    """The model against the quality bar, in one plain sentence."""
    checks = bar_checks(card_or_test)
    verdict = meets_bar(checks)
    if verdict is True:
        return "This model meets the product's quality bar on its held-out test images."
    short = [c for c in checks if c.met is False]
    if verdict is False:
        first = short[0]
        more = len(short) - 1
        return ("This model does not meet the product's quality bar: on its held-out test images its "
                f"{first.label[0].lower() + first.label[1:]} is {first.show(first.value)}, against a bar of {first.bar[2:]}"
                + (f", and {more} more of its {len(checks)} figures {'falls' if more == 1 else 'fall'} short" if more else "") + ".")
    missing = ", ".join(c.label for c in checks if c.met is None)
    return f"This model is not shown to meet the product's quality bar: its card does not record {missing}."


def precision_sentence(card: ModelCard | None, code: str) -> str | None:
    """'Of 100 test lesions the model called melanoma, about 35 were.' from the card's per-class precision."""
    figures = {r.code: r for r in class_figures(card)}.get(code)
    if figures is None:
        return None
    return (f"Of 100 test lesions the model gave this answer for, about {round(figures.precision * 100)} turned out to "
            f"be {lesion_class(code).in_words} (the model's precision for this class on the test split, "
            "over answers at every confidence).")
