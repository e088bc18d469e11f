"""Post-hoc logit adjustment (Menon et al., ICLR 2021), chosen on validation, folded into the graph.

A classifier trained on imbalanced data (here 67% nevi, 1% dermatofibromas) is biased
towards the common classes. Subtracting ``tau * log(prior)`` from its logits shifts the
decision towards the rare ones; ``tau = 1`` is the Bayes-optimal correction for balanced
error when the probabilities are right, and ``tau`` is chosen on validation because they
are not exactly right. The shift is a constant per class, so it is folded into the bias
of the last Dense layer: the exported ``.h5`` carries it, and nothing in the service changes.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score

TAU_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2))


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of the training labels (a tiny floor keeps log finite for an absent class)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.maximum(counts, 0.5) / counts.sum()


def shifted(probs: np.ndarray, shift) -> np.ndarray:
    """softmax(log p + shift): a constant (or per-row) change of the logits, applied to probabilities."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) + shift
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def adjust(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """softmax(log p - tau * log prior): the same change the folded bias makes to the model."""
    return shifted(probs, -tau * np.log(prior))


def choose_tau(val_probs: np.ndarray, val_labels: np.ndarray, prior: np.ndarray,
               grid=TAU_GRID) -> tuple[float, dict[float, float]]:
    """The tau with the best validation balanced accuracy (the smallest on a tie) and every tau's figure."""
    scores = {float(t): float(balanced_accuracy_score(val_labels, adjust(val_probs, prior, t).argmax(1))) for t in grid}
    best = max(scores.values())
    return min(t for t, s in scores.items() if s == best), scores


def fold_into_bias(model, prior: np.ndarray, tau: float, layer: str = "head_out") -> None:
    """Subtract ``tau * log(prior)`` from the bias of the softmax layer, in place."""
    if tau == 0:
        return
    dense = model.get_layer(layer)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, (bias - tau * np.log(prior)).astype(bias.dtype)])
