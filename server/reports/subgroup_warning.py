"""When the patient context given puts a lesion in a subgroup the card flags, the answer says so.

``/model`` flags subgroups whose melanoma recall on the test split fell well below the whole split's
(``training/subgroups.py``). An answer for a lesion in such a group that quoted only the whole split's
flag miss rate ("about 1 in 9") would be untrue for that patient's group, so every output puts this
warning next to its key figure, quoting the group's own miss rate with its interval and counts.
Nothing given, or nothing flagged that matches: no warning, and the answer is as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.model.card import ModelCard, SubgroupRow
from server.patient import SITE_WORDS, age_band, covered_sites
from server.prediction import Prediction
from server.reports.wording import percent

_GROUP_WORDS = {"site": lambda g: f"lesions on the {SITE_WORDS.get(g, g)}", "sex": lambda g: f"{g} patients",
                "age": lambda g: f"patients aged {g}"}


@dataclass(frozen=True)
class FlaggedGroup:
    """One flagged subgroup the patient falls in, with the figures an answer quotes for it."""

    grouping: str  # "sex" | "age" | "site"
    group: str  # the card's group: "face", ">=75"
    flag_miss_rate: float | None  # 1 - the group's malignant flag sensitivity on the test split
    miss_low: float | None  # its bootstrap interval (None: too few cases for one)
    miss_high: float | None
    malignant_images: int
    malignant_lesions: int  # the unit the interval resampled
    melanoma_recall: float | None
    melanomas: int

    @property
    def words(self) -> str:
        return _GROUP_WORDS.get(self.grouping, lambda g: g)(self.group)

    def sentence(self) -> str:
        """The group's figures in words: its flag miss rate with interval and counts, and its melanoma recall."""
        if self.flag_miss_rate is None:
            missed = "how often the malignant flag missed is not measured"
        else:
            interval = (f"{percent(self.miss_low)[:-1]} to {percent(self.miss_high)}" if self.miss_low is not None
                        else "no interval: too few")
            missed = (f"the malignant flag missed {percent(self.flag_miss_rate)} ({interval}) of "
                      f"{self.malignant_images} malignant test images ({self.malignant_lesions} lesions)")
        recall = "" if self.melanoma_recall is None else (
            f"; melanoma recall {percent(self.melanoma_recall)} of {self.melanomas} melanomas")
        return f"for {self.words}, {missed}{recall}"

    def to_dict(self) -> dict:
        """The JSON shape: flat, short names (the /docs table shows each dotted path on one line of a phone)."""
        return {"grouping": self.grouping, "group": self.group, "miss": self.flag_miss_rate, "miss_low": self.miss_low,
                "miss_high": self.miss_high, "malignant": self.malignant_images, "lesions": self.malignant_lesions,
                "recall": self.melanoma_recall, "melanomas": self.melanomas}


@dataclass(frozen=True)
class SubgroupWarning:
    """The flagged subgroups a lesion's patient context falls in, and the one message every output shows."""

    groups: tuple[FlaggedGroup, ...]
    overall_miss_rate: float | None  # the whole test split's, which the answer's other sentences quote

    @property
    def message(self) -> str:
        overall = ("" if self.overall_miss_rate is None
                   else f" (all test images: {percent(self.overall_miss_rate)} missed)")
        return ("This patient's group is flagged on /model: " + "; ".join(g.sentence() for g in self.groups)
                + overall + ".")

    def to_dict(self) -> dict:
        return {"message": self.message, "overall_miss": self.overall_miss_rate,
                "groups": [g.to_dict() for g in self.groups]}


def _flagged(row: SubgroupRow) -> FlaggedGroup:
    sensitivity, recall = row.figure("malignant_sensitivity"), row.figure("melanoma_recall")
    flip = (lambda x: None if x is None else 1.0 - x)
    return FlaggedGroup(row.grouping, row.group, flip(sensitivity.value), flip(sensitivity.high), flip(sensitivity.low),
                        row.malignant, sensitivity.cases, recall.value, row.melanomas)


def patient_groups(prediction: Prediction) -> set[tuple[str, str]]:
    """The (grouping, group) pairs the given patient context names, in the card's subgroup labels.

    An ISIC general site names every HAM10000 site it covers: "head/neck" falls in a flagged face group.
    """
    patient = prediction.patient
    sites = {("site", site) for site in covered_sites(patient.site)} if patient.site is not None else set()
    return sites | {pair for pair, known in ((("sex", patient.sex), patient.sex is not None),
                                             (("age", age_band(patient.age)), patient.age is not None)) if known}


def subgroup_warning(prediction: Prediction, card: ModelCard | None,
                     overall_miss_rate: float | None = None) -> SubgroupWarning | None:
    """The warning for this answer, or None: no context given, no subgroup table, or no flagged group matches."""
    if card is None or card.subgroups is None or not prediction.patient.given:
        return None
    wanted = patient_groups(prediction)
    groups = tuple(_flagged(r) for r in card.subgroups.rows if r.flagged and (r.grouping, r.group) in wanted)
    return SubgroupWarning(groups, overall_miss_rate) if groups else None
