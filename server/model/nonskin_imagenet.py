"""What the ImageNet branch says about a picture: what it names, and whether it shows an everyday object.

- ``ImagenetLabels``: the 1000 class names and the classes training lesions get as their top
  class ("tick", "velvet", "Petri dish"), for saying what a refused image looked like
  (``looks_like``) and, in cards without an object check, for the older rule that refuses an
  unusual image the branch names as an object.
- ``ObjectCheck``: a linear classifier on the pooled features of both networks (the model's
  own and ImageNet's) that tells photos of everyday things (food, animals, vehicles, rooms,
  people) from lesion photos however they were taken. It was fitted on validation lesions
  (plain, made harder, shifted as other clinics photograph them) against the everyday corpus
  and the made pictures (``training/nonskin_object.py``); its threshold lies past every
  validation lesion's cross-fitted score, so it refuses what it says is an object even when
  the picture is not unusual. The ImageNet class names alone could not: lesions photographed
  other ways reach "harvestman", "bubble" or "ping-pong ball" with 0.99, while a strawberry on
  a hand gets no confident class at all.

numpy only: the trainer stores the classifier as plain weights in the non-skin ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECT_WEIGHTS, OBJECT_BIAS = "object_weights", "object_bias"  # the classifier's arrays in the non-skin .npz


@dataclass(frozen=True)
class ImagenetLabels:
    """The ImageNet classes, for saying what a refused image looked like.

    ``lesion_like`` marks the classes that are the top class of more than a few training
    lesions ("tick", "velvet", "Petri dish"...): naming one of those would mislead, so a
    refusal whose top class is one of them names none.
    """

    names: tuple[str, ...]
    lesion_like: frozenset[int]

    def names_an_object(self, probs: np.ndarray, min_probability: float, max_lesion_like: float = 1.0) -> np.ndarray:
        """Per row of (n, classes) probabilities: is the top class at least ``min_probability`` and not
        lesion-like, with at most ``max_lesion_like`` of the probability on the lesion-like classes?"""
        probs = np.atleast_2d(probs)
        top = probs.argmax(axis=1)
        classes = np.fromiter(self.lesion_like, int, len(self.lesion_like))
        lesion_like_mass = probs[:, classes].sum(axis=1)
        return ((probs[np.arange(len(probs)), top] >= min_probability) & ~np.isin(top, classes)
                & (lesion_like_mass <= max_lesion_like))

    def looks_like(self, probs: np.ndarray, min_probability: float) -> str | None:
        """The top class's readable name when it is confident enough and not lesion-like, else None."""
        if not self.names_an_object(probs, min_probability)[0]:
            return None
        return readable_label(self.names[int(np.argmax(probs))])


def readable_label(line: str) -> str:
    """'tabby, tabby cat' -> 'tabby cat': the first synonym, or a later one that spells it out."""
    synonyms = [s.strip() for s in line.split(",") if s.strip()]
    first = synonyms[0]
    longer = [s for s in synonyms[1:] if s.startswith(first + " ")]
    return longer[0] if longer else first


@dataclass(frozen=True)
class ObjectCheck:
    """``decision = features . weights[:d] + imagenet_features . weights[d:] + bias``; above ``threshold``
    the picture is a photo of an everyday object (the standardisation is folded into the weights)."""

    weights: np.ndarray
    bias: float
    threshold: float

    def decisions(self, features: np.ndarray, imagenet_features: np.ndarray) -> np.ndarray:
        """Per row: the classifier's decision (a logit: above 0 it leans to 'everyday object')."""
        x = np.hstack([np.atleast_2d(features), np.atleast_2d(imagenet_features)]).astype(np.float64)
        return x @ np.asarray(self.weights, np.float64) + self.bias

    def is_object(self, features: np.ndarray, imagenet_features: np.ndarray) -> np.ndarray:
        return self.decisions(features, imagenet_features) > self.threshold

    @classmethod
    def from_arrays(cls, arrays: dict, threshold: float | None) -> "ObjectCheck | None":
        """The stored classifier with the card's threshold, or None when either is missing (an older card)."""
        if threshold is None or OBJECT_WEIGHTS not in arrays:
            return None
        return cls(np.asarray(arrays[OBJECT_WEIGHTS], np.float64), float(arrays[OBJECT_BIAS]), float(threshold))
