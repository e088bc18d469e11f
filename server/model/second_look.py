"""Served in int8: which pictures get float32's answer instead, through a second, float32 pass.

int8 moves a class probability by 0.007 on average but by up to 0.2 now and then, and a small one by
8% of itself (median; 25% at the 90th percentile), so on its own it changed, against float32, the top
class of 3.0% of validation photos, the malignant flag of 2.2% and the differential's list of 10.7%.
Nearly all of those were close calls. A picture is screened again in float32, and float32's answer
kept, when int8's answer lies near a decision it makes:

- near a non-skin level (``near_a_nonskin_level``): int8 moves the model's own feature distances by a
  few percent, so a picture just beyond a refusal level could come back merely unusual;
- a close call (``close_call``): the top two classes within ``INT8_DECISION_MARGIN`` of each other,
  P(malignant) within it of the flag's threshold, or a class's probability within a factor
  exp(``INT8_LIST_LOG_MARGIN``) of the minimum that lists it in the differential (without a
  differential: the top probability within ``INT8_DECISION_MARGIN`` of the uncertain threshold).

Simulated on the 1,432 validation photos with the shipped card (0.05 and 0.2): 35% take the float32
pass, and against float32 the top class is then the same for 99.4%, the list for 99.1%, the flag for
99.6% (0.05 and 0.3: 42%, 99.4%, 99.4%, 99.6%; 0.03 and 0.1: 22%, 98.7%, 97.0%, 99.3%).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from server.lesions import MALIGNANT_CODES
from server.thresholds import (DEFAULT_UNCERTAIN_BELOW, INT8_DECISION_MARGIN, INT8_LIST_LOG_MARGIN, INT8_NONSKIN_MARGIN,
                               NONSKIN_USUAL)


def near_a_nonskin_level(score: float | None, answer: str | None) -> bool:
    """When int8 finds a picture anything but usual, or any check's ratio within ``INT8_NONSKIN_MARGIN``
    of unusual (``server/thresholds.py``)."""
    if answer is None:
        return False
    return answer != NONSKIN_USUAL or score >= 1.0 - INT8_NONSKIN_MARGIN


def close_call(probs: np.ndarray, malignant: np.ndarray, malignant_threshold: float | None,
               uncertain_threshold: float | None, class_minimums: np.ndarray | None = None,
               margin: float = INT8_DECISION_MARGIN) -> bool:
    """Whether calibrated ``probs`` (one picture's, summing to 1) lie within ``margin`` of a decision the answer
    makes: the top two classes, the malignant flag's threshold (``malignant``: a mask over the classes), and
    which classes the differential lists (``class_minimums``: each class's lowest listed probability), or
    without a differential the uncertain threshold."""
    probs = np.asarray(probs, np.float64)
    top = np.sort(probs)[::-1]
    if top[0] - top[1] < margin or (malignant_threshold is not None
                                    and abs(float(probs[malignant].sum()) - malignant_threshold) < margin):
        return True
    if class_minimums is not None:  # int8 errs by a share of a probability: the list's minimums are small ones
        log_gap = np.abs(np.log(np.clip(probs, 1e-12, None)) - np.log(np.clip(class_minimums, 1e-12, None)))
        return bool(np.any(log_gap < INT8_LIST_LOG_MARGIN))
    return bool(uncertain_threshold is not None and abs(top[0] - uncertain_threshold) < margin)


def malignant_mask(classes) -> np.ndarray:
    """Which of ``classes`` (codes, in the model's order) count towards P(malignant)."""
    return np.asarray([c in MALIGNANT_CODES for c in classes])


def close_calls_of(card, given: bool) -> Callable[[np.ndarray], bool]:
    """The card's close-call rule (a ``ModelCard``'s thresholds and its differential for a photo alone, or with
    ``given`` patient context): calibrated probabilities -> bool."""
    malignant = malignant_mask(card.classes)
    uncertain = DEFAULT_UNCERTAIN_BELOW if card.thresholds.uncertain is None else card.thresholds.uncertain
    rule = card.differential.rule_for(given) if card.differential is not None else None
    minimums = None if rule is None else np.asarray([rule.min_probability[c] for c in card.classes])
    return lambda probs: close_call(probs, malignant, card.thresholds.malignant, uncertain, minimums)
