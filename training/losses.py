"""Loss choices for an imbalanced 7-class problem.

Keras ships a tested categorical focal loss (Lin et al. 2017); we configure it rather than
write our own. ``tests/test_training.py`` checks it against a hand-computed value.
"""

from __future__ import annotations

LOSSES = ("crossentropy", "focal")


def make_loss(name: str = "crossentropy", label_smoothing: float = 0.0, gamma: float = 2.0):
    """Cross-entropy, or focal loss with focusing parameter ``gamma`` (2 in the paper).

    Focal loss down-weights easy examples (most nevi) so gradients come from hard ones;
    class weights or oversampling address the class counts themselves. ``alpha`` is left
    at 1 here because class balance is handled by those, not twice.
    """
    import keras

    if name == "crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=gamma, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
