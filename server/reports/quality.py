"""The model card's test figures in words: per-class precision and recall, the quality bar, the subgroup table.

Pure functions of the card (``ModelCard`` or its ``metrics.test`` mapping); the pages and both
reports read them, so every output quotes the same figures the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.lesions import CATALOGUE, SKIN_TYPE_NOT_RECORDED
from server.model.card import ModelCard, SubgroupFigure, SubgroupRow, Subgroups
from server.model.card_quality import number_or_none
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


def class_figures(card_or_test) -> list[ClassFigures]:
    """Per-class precision, recall and support on the test split, in catalogue order (empty without them)."""
    per_class = _test(card_or_test).get("per_class") or {}
    rows = []
    for c in CATALOGUE:
        figures = per_class.get(c.code)
        if not isinstance(figures, Mapping):
            continue
        precision, recall, support = (number_or_none(figures.get(k)) for k in ("precision", "recall", "support"))
        if precision is None or recall is None or support is None:
            continue
        rows.append(ClassFigures(c.code, c.name, precision, recall, int(support)))
    return rows


def _figure(test: Mapping, key: str) -> float | None:
    per_class = test.get("per_class") or {}
    if key == "melanoma_recall":
        return number_or_none((per_class.get("mel") or {}).get("recall"))
    if key == "malignant_auc":
        return number_or_none((test.get("malignant") or {}).get("auc"))
    if key == "lowest_class_recall":
        recalls = [number_or_none((v or {}).get("recall")) for v in per_class.values() if isinstance(v, Mapping)]
        return min(recalls) if recalls and None not in recalls else None
    return number_or_none(test.get(key))


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


def shortfall(checks: list[BarCheck]) -> str:
    """How far short of the bar, counted from the table: 'all 5 figures on its held-out test images fall short of
    it; the first, its balanced accuracy, is 69.0% against a bar of 80%' (empty when none falls short)."""
    short = [c for c in checks if c.met is False]
    if not short:
        return ""
    first = short[0]
    count = f"all {len(checks)}" if len(short) == len(checks) else f"{len(short)} of its {len(checks)}"
    return (f"{count} figures on its held-out test images fall short of it; {'the first, ' if len(short) > 1 else ''}"
            f"its {first.label[0].lower() + first.label[1:]}, is {first.show(first.value)} against a bar of {first.bar[2:]}")


def bar_sentence(card_or_test) -> str:
    """The model against the quality bar, in one plain sentence."""
    checks = bar_checks(card_or_test)
    verdict = meets_bar(checks)
    if verdict is True:
        return "This model meets the product's quality bar on its held-out test images."
    if verdict is False:
        return f"This model does not meet the product's quality bar: {shortfall(checks)}."
    missing = ", ".join(c.label for c in checks if c.met is None)
    return f"This model is not shown to meet the product's quality bar: its card does not record {missing}."


# The one short sentence the home page's first screen and every report carry when the model misses its bar.
MISSES_BAR = "This model misses its quality bar"


def misses_bar(card: ModelCard | None) -> bool:
    """Whether the card's own test figures fall short of the product's quality bar (False without a card)."""
    return card is not None and meets_bar(bar_checks(card)) is False


def bar_note(card: ModelCard | None) -> str | None:
    """The short sentence a report prints near its top when the model misses its bar, pointing to the figures."""
    return (f"{MISSES_BAR} on its held-out test images: its figures are on this service's model page, /model."
            if misses_bar(card) else None)


# ---------------------------------------------------------------- per-subgroup figures

SUBGROUP_COLUMNS = (  # (card metric, column heading, what a group lacks when the figure is undefined)
    ("balanced_accuracy", "Balanced accuracy", "no test images"),
    ("melanoma_recall", "Melanoma recall", "no melanoma"),
    ("malignant_sensitivity", "Malignant flag sensitivity", "no malignant lesion"),
    ("malignant_specificity", "Malignant flag specificity", "no benign lesion"),
)
_GROUPINGS = {"all": "All test images", "sex": "Sex", "age": "Age", "site": "Body site"}
# Said beside the subgroup table (page, report.md, the card's section), whether or not the card has one.
SKIN_TYPE_NOTE = (f"{SKIN_TYPE_NOT_RECORDED} No figure here is measured per skin type, so none can show how the model "
                  "does on darker skin, which HAM10000 under-represents.")


@dataclass(frozen=True)
class SubgroupLine:
    """One subgroup row in words, as the model page and ``report.md`` print it."""

    label: str  # "Sex: female"
    counts: str  # "672 images of 508 lesions; 64 melanoma"
    figures: tuple  # one text per SUBGROUP_COLUMNS
    flag: str  # "Flagged: ..." in words, so no reader depends on colour
    flagged: bool


def figure_text(figure: SubgroupFigure, unit: str, lacks: str) -> str:
    """'67.3% (59.6 to 75.3%)'; 'not defined: no melanoma' (never 0%); '16.7% (no interval: 8 lesions)'."""
    if figure.value is None:
        return f"not defined: {lacks}"
    if figure.low is None or figure.high is None:
        return f"{percent(figure.value)} (no interval: {figure.cases} {unit}{'' if figure.cases == 1 else 's'})"
    return f"{percent(figure.value)} ({percent(figure.low)[:-1]} to {percent(figure.high)})"


def flag_text(row: SubgroupRow, section: Subgroups) -> str:
    """Why a row is or is not flagged, in words."""
    recall = row.figure("melanoma_recall")
    reference = section.extra.get("reference_melanoma_recall")
    if row.grouping == "all":
        return "Reference for the flag"
    if recall.value is None:
        return "Cannot tell: no melanoma in this group"
    if not row.flagged:
        return "Not flagged"
    gap = f"{(reference - recall.value) * 100:.1f} points below the whole test split's {percent(reference)}"
    return f"Flagged: melanoma recall {gap}" + ("" if recall.low is not None else "; too few melanomas to rule out chance")


def subgroup_lines(card: ModelCard | None) -> list[SubgroupLine]:
    """The card's per-subgroup table in words (empty when the card has no ``subgroups`` section)."""
    section = card.subgroups if card is not None else None
    if section is None:
        return []
    unit = section.unit or "image"
    out = []
    for row in section.rows:
        label = _GROUPINGS["all"] if row.grouping == "all" else f"{_GROUPINGS.get(row.grouping, row.grouping)}: {row.group}"
        counts = (f"{row.images} image{'' if row.images == 1 else 's'} of {row.lesions} lesion{'' if row.lesions == 1 else 's'}; "
                  f"{row.melanomas} melanoma, {row.malignant} malignant")
        figures = tuple(figure_text(row.figure(metric), unit, lacks) for metric, _, lacks in SUBGROUP_COLUMNS)
        out.append(SubgroupLine(label, counts, figures, flag_text(row, section), row.flagged))
    return out


def subgroup_sentence(card: ModelCard | None) -> str:
    """What the subgroup table shows and how to read it, or that the card has none."""
    section = card.subgroups if card is not None else None
    if section is None:
        return "This model's card records no per-subgroup figures (by sex, age or body site)."
    extra = section.extra
    threshold = extra.get("malignant_threshold")
    drop = section.flag_drop
    left_out = extra.get("sites_left_out") or {}
    return (f"Figures on the held-out test images for each sex, age band and body site. The model saw: {section.inputs}"
            + (f"; probabilities: {extra['probabilities']}" if extra.get("probabilities") else "")
            + "; the malignant flag at its operating point" + (f" of {percent(threshold)}" if threshold is not None else "")
            + f". In brackets: a {percent(section.confidence or 0.95, 0)} bootstrap interval, resampling whole "
            f"{section.unit or 'image'}s ({extra.get('resamples')} resamples, seed {extra.get('seed')}); small groups are noisy"
            + (f", and a figure resting on fewer than {extra['min_cases_for_interval']} {section.unit or 'image'}s, or on "
               "which every resample agrees, gets no interval" if extra.get("min_cases_for_interval") else "") + "."
            + (f" A group is flagged when its melanoma recall is more than {drop * 100:.0f} points below the whole "
               "split's." if drop is not None else "")
            + (f" Body sites with fewer than {extra.get('min_site_images')} test images are left out: "
               + ", ".join(f"{s} ({n})" for s, n in left_out.items()) + "." if left_out else ""))


@dataclass(frozen=True)
class DifferentialLine:
    """One row of the differential's table on /model: a class (or all photos), on validation and on test."""

    label: str
    figures: tuple[str, ...]  # validation photos, coverage, mean size; test photos, coverage, mean size


def differential_tables(card: ModelCard) -> list[tuple[str, list[DifferentialLine]]]:
    """The differential's measured coverage and mean list size, overall and by class, on validation and test:
    one table for the photo alone and, for a model that reads it, one with the patient context."""
    spec = card.differential
    if spec is None:
        return []
    rules = [("Photo alone", spec.image)] + ([("With the patient context", spec.with_context)] if spec.with_context else [])
    tables = []
    for caption, rule in rules:
        val, test = rule.measured("val"), rule.measured("test")

        def cells(*figures: Mapping) -> tuple[str, ...]:
            return tuple(x for f in figures for x in (
                str(f.get("n", "")), percent(f["coverage"]) if f.get("coverage") is not None else "not measured",
                f"{f['mean_size']:.2f}" if f.get("mean_size") is not None else ""))

        lines = [DifferentialLine("All photos", cells(val, test))]
        lines += [DifferentialLine(c.name, cells((val.get("by_class") or {}).get(c.code, {}),
                                                 (test.get("by_class") or {}).get(c.code, {}))) for c in CATALOGUE]
        tables.append((caption, lines))
    return tables


def differential_in_words(card: ModelCard) -> str | None:
    """What the differential is and what it reached on the test photos, in one paragraph."""
    spec = card.differential
    if spec is None:
        return None
    test = spec.image.measured("test")
    text = (f"Every answer lists the lesion types still possible: the smallest list that held the true type "
            f"{percent(spec.coverage, 0)} of the time on the validation photos (split conformal prediction)")
    text += (f", and each class's own threshold set to hold it at least {percent(spec.image.class_floor, 0)} of the "
             "time on its validation photos." if spec.image.class_floor else ".")
    if test.get("coverage") is not None:
        text += (f" On the test photos the list held the true type {percent(test['coverage'])} of the time, with "
                 f"{test['mean_size']:.2f} types on average; {percent(test['single_share'], 0)} of photos got a single "
                 "type" + (f", right {percent(test['single_accuracy'])} of the time." if test.get("single_accuracy")
                           is not None else "."))
    return text
