"""Every threshold and target the service and the trainer decide with, named once.

The model card records the values a trained model was given (``thresholds``, ``ood``);
the constants here are the targets those values are chosen for and the defaults used
when a card has none. ``training`` imports them from here, never the other way round.
"""

from __future__ import annotations

# The malignant flag's operating point is the highest threshold on P(malignant) that
# still catches this share of the malignant validation lesions.
MALIGNANT_TARGET_SENSITIVITY = 0.90
# "Uncertain" starts below the lowest calibrated top probability whose answers are right
# at least this often on validation.
UNCERTAIN_TARGET_ACCURACY = 0.90
# The uncertain threshold for a card that has none (an older card, or no validated choice).
DEFAULT_UNCERTAIN_BELOW = 0.5
# The non-skin rule: each distance check divides its distance by its own threshold, the
# score is the largest ratio, and a score above this refuses the image (422, no diagnosis).
NONSKIN_REFUSE_ABOVE = 1.0


# A refusal names what the image seemed to show only when the ImageNet classifier gives
# its top class at least this probability (a cat photo: 0.5-0.7; a flat colour: < 0.1).
LOOKS_LIKE_MIN_PROBABILITY = 0.25
# Each distance check's threshold is this percentile of the validation lesions' distances,
# the lowest of the candidates that keeps the combined false refusals within the targets
# below (validation lesions, and validation lesions made harder: darker, brighter, blurred,
# rotated, with a ruler or hair, at 150 px). Floors use the matching low percentile.
NONSKIN_PERCENTILE_CANDIDATES = (99.5, 99.6, 99.7, 99.8, 99.9)
NONSKIN_FLOOR_PERCENTILE = 0.1
# The ImageNet check runs only for images whose own features lie beyond this percentile of
# the validation lesions' distances: the three quarters of lesions that look most typical
# skip it and its cost (a second MobileNetV2 pass), and no validation figure changed.
NONSKIN_IMAGENET_GATE_PERCENTILE = 75
NONSKIN_MAX_FALSE_REFUSALS = 0.01
NONSKIN_MAX_FALSE_REFUSALS_HARD = 0.02


def refuses_as_non_skin(score):
    """The one non-skin rule: True where ``score`` (a float or an array) is above the limit."""
    return score > NONSKIN_REFUSE_ABOVE


# The product's quality bar: what a model must reach on the held-out test split before the
# service may call it good enough (README, "The shipped model"). (card figure, words, minimum);
# ``server.reports.quality`` reads the figures from the card and says, in words, which are met.
QUALITY_BAR = (
    ("balanced_accuracy", "Balanced accuracy", 0.80),
    ("accuracy", "Accuracy", 0.85),
    ("melanoma_recall", "Melanoma recall", 0.80),
    ("malignant_auc", "Malignant AUC", 0.95),
    ("lowest_class_recall", "Lowest class recall", 0.60),
)


# Per-subgroup figures (``training.subgroups``, the card's ``subgroups``): a subgroup is
# flagged when its melanoma recall on the test split is more than this below the whole
# split's (0.10 = ten percentage points).
MELANOMA_RECALL_FLAG_DROP = 0.10
# A body site gets its own row only with at least this many test images.
SUBGROUP_MIN_SITE_IMAGES = 30
# A subgroup figure gets a bootstrap interval only when its denominator holds at least this
# many resampled units (lesions): with 3 melanomas all found, every resample finds every
# melanoma too, and a percentile interval of "100 to 100%" would claim a certainty it lacks.
SUBGROUP_MIN_CASES_FOR_INTERVAL = 10
