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


def refuses_as_non_skin(score):
    """The one non-skin rule: True where ``score`` (a float or an array) is above the limit."""
    return score > NONSKIN_REFUSE_ABOVE
