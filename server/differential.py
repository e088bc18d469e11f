"""The differential: the short list of lesion types still possible for one photo.

The card's conformal thresholds (``training/differential.py``, fitted on validation) give
each class the lowest calibrated probability at which it stays in the list; with them the
list holds the true type about ``coverage`` of the time on photos like the training ones.
A list of one is a confident answer; a longer one is the model saying how unsure it is,
so ``Prediction.uncertain`` is "more than one class" and nothing else.

Where the measured coverage does not apply, the list widens: a card without conformal
thresholds lists the leading classes (``LEADING_MIN``) unless the top one reaches the
uncertain threshold, and a photo the non-skin check finds unusual (its coverage was measured
on photos like the training ones, not on it) never gets a list of one: its top two at least.
Two, not the leading three: on photos from other clinics, where more photos are unusual,
every widened list adds to the mean size the product promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from server.thresholds import LEADING_MIN


@dataclass(frozen=True)
class Differential:
    """The classes still possible, most likely first, and the coverage their thresholds target.

    ``coverage`` is None when no conformal thresholds made the list (the fallback above)."""

    codes: tuple[str, ...]
    coverage: float | None = None

    @property
    def single(self) -> bool:
        return len(self.codes) == 1


def leading_codes(ranked: Sequence) -> tuple[str, ...]:
    """The top two classes, and the third when it has at least ``LEADING_MIN`` (``ranked``: highest first)."""
    first, second, *rest = ranked
    return (first.code, second.code) + tuple(c.code for c in rest[:1] if c.probability >= LEADING_MIN)


def conformal_codes(ranked: Sequence, min_probability: Mapping[str, float]) -> tuple[str, ...]:
    """The top class, and every other class at or above its own threshold (``ranked``: highest first).

    The top class is always in: a class-conditional threshold can exclude every class of a
    photo, and an empty list would answer nothing.
    """
    top, *rest = ranked
    return (top.code,) + tuple(c.code for c in rest if c.probability >= min_probability.get(c.code, 1.0 + 1e-9))


def differential_of(ranked: Sequence, min_probability: Mapping[str, float] | None, coverage: float | None,
                    uncertain_below: float, unusual: bool = False) -> Differential:
    """The differential of one answer: the conformal list when the card has thresholds (an unusual
    photo's at least its top two), else the top class alone when it reaches ``uncertain_below`` and
    is not unusual, and the leading classes when not (as cards without thresholds always answered)."""
    if not min_probability:
        sure = ranked[0].probability >= uncertain_below and not unusual
        return Differential(codes=(ranked[0].code,) if sure else leading_codes(ranked), coverage=None)
    codes = conformal_codes(ranked, min_probability)
    if unusual and len(codes) < 2:
        codes = (ranked[0].code, ranked[1].code)
    return Differential(codes=codes, coverage=coverage)
