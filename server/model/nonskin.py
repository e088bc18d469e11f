"""The non-skin check: named checks, each with its own threshold, combined by one rule.

Two kinds of check, each giving a ratio that is above 1 when the image fails it:

- ``DistanceCheck``: how far one signal of an image lies from the training images
  (``features``: the model's own pooled features; ``imagenet``: the pooled features of
  the ImageNet network that rides in the same graph, which knows what a cat or a coffee
  cup looks like; ``picture``: 12 picture statistics, in older cards), as a Mahalanobis
  distance over its threshold (a high percentile of the validation distances).
- ``FloorCheck``: a one-sided floor on one picture statistic (``texture``: the mean
  gradient; ``colour``: the saturation). A photo of skin has some texture and some
  colour; a flat colour, a smooth gradient or a greyscale picture has less than almost
  any lesion photo. One-sided, so a brighter, darker or hairier lesion photo cannot fail
  it the way a two-sided distance on the same statistics did. With ``ceiling`` it is the
  other side's limit: ``noise`` (more texture than any lesion photo: pixel noise, text)
  and ``flat`` (the share of neighbouring pixels that are exactly equal along one axis: a
  made picture's fills, gradients and skies; a photo's sensor noise leaves few).

Each check has two levels: its threshold (or floor), beyond which an image is unusual, and
a refusal level further out (``refuse_factor`` times the ratio), beyond which it is clearly
not a lesion photo. All are fitted by ``training.nonskin`` on the training and validation
splits. The score of an image is the largest ratio, its refusal score the largest ratio to
the refusal levels, and ``server.thresholds.nonskin_answer`` is the one rule that turns
them, with what the object check says (``server/model/nonskin_imagenet.py``: a photo of an
everyday object), into an answer: usual, unusual (screened with a warning) or refused. The
ImageNet classifier's top class explains a refusal ("looks like: tabby cat") through ``looks_like``.
The picture statistics the floors and ceilings read are in ``server/model/nonskin_pictures.py``.

numpy only: the trainer fits the statistics and stores them with ``compact_ood`` in the
format ``Mahalanobis.from_arrays`` reads, so writer and reader live together here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.model.nonskin_imagenet import ImagenetLabels, ObjectCheck
from server.thresholds import NONSKIN_NAMED_MAX_LESION_LIKE, NONSKIN_NAMED_MIN_PROBABILITY, nonskin_answer

# The signals a check can read: pooled features, the 12 picture statistics, the ImageNet
# branch's pooled features, and the two picture statistics the floors read.
FEATURES, PICTURE, IMAGENET, FLOORS = "features", "picture", "imagenet", "floors"
TEXTURE_FLOOR, COLOUR_FLOOR, FLAT_SHARE = 0, 1, 2  # columns of ``floor_statistics`` (``nonskin_pictures``)
# The picture checks: name -> (column of ``floor_statistics``, is it a ceiling?).
PICTURE_CHECKS = {"texture": (TEXTURE_FLOOR, False), "colour": (COLOUR_FLOOR, False),
                  "noise": (TEXTURE_FLOOR, True), "flat": (FLAT_SHARE, True)}


class Mahalanobis:
    """``d(x) = sqrt((P (x - mean)) . precision . (P (x - mean)))`` with an optional projection
    ``P`` (PCA) and a Ledoit-Wolf shrinkage precision, fitted on the training split."""

    def __init__(self, mean, precision, projection=None):
        self.mean = np.asarray(mean, np.float64)
        # float32: the product streams the whole 1280x1280 matrix for every image, and half the
        # bytes is half the time (0.24 -> 0.08 ms a distance); the stored precision is float16
        # anyway, and distances moved by 6e-9 relative.
        self.precision = np.asarray(precision, np.float32)
        self.projection = None if projection is None else np.asarray(projection, np.float64)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(vectors, np.float64)) - self.mean
        if self.projection is not None:
            z = z @ self.projection
        z = z.astype(np.float32)
        # (z @ P) * z summed: a BLAS product, ten times faster than einsum's loop at 1280 dims.
        return np.sqrt(np.maximum(((z @ self.precision) * z).sum(axis=1, dtype=np.float64), 0.0))

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str = "") -> "Mahalanobis":
        """From the stored arrays: the precision whole, or (compact) its scaled upper triangle (float16)."""
        arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if prefix == "":
            arrays = {k: v for k, v in arrays.items() if not k.startswith(("image_", "imagenet_", "object_"))}
        if "precision" in arrays:
            precision = np.asarray(arrays["precision"], np.float64)
        else:
            triu = np.asarray(arrays["precision_triu"], np.float64) * float(arrays.get("precision_scale", 1.0))
            dim = int(arrays["dim"])
            precision = np.zeros((dim, dim))
            precision[np.triu_indices(dim)] = triu
            precision = precision + np.triu(precision, 1).T
        return cls(arrays["mean"], precision, arrays.get("projection"))


def compact_ood(stats: dict, dtype=np.float16) -> dict:
    """What is stored: the symmetric precision as its upper triangle in float16 (a quarter of
    float32 whole: 1.6 MB instead of 6.5 MB for 1280 features). ``training.calibrate`` sets the
    threshold on distances computed from these stored values, so rounding cannot shift it."""
    dim = stats["precision"].shape[0]
    out = {k: v for k, v in stats.items() if k != "precision"}
    triu = np.asarray(stats["precision"], np.float64)[np.triu_indices(dim)]
    scale = float(np.abs(triu).max()) or 1.0  # float16 tops out at 65504: store P / max|P|
    out["precision_triu"] = (triu / scale).astype(dtype)
    out["precision_scale"] = np.float64(scale)
    out["dim"] = np.int32(dim)
    return out


def ood_distances(stats: dict, vectors) -> np.ndarray:
    """Mahalanobis distances of ``vectors`` under fitted or stored ``stats`` arrays."""
    return Mahalanobis.from_arrays(stats).distances(vectors)


@dataclass(frozen=True)
class DistanceCheck:
    """One named test: the distance of one signal from the training images, over its threshold."""

    name: str
    signal: str  # FEATURES or PICTURE: which vector of the image it measures
    stats: Mahalanobis
    threshold: float
    refuse_threshold: float | None = None  # a distance beyond which the image is refused (None: the threshold)

    @property
    def refuse_factor(self) -> float:
        """The ratio at which this check refuses (1 without a refusal level of its own)."""
        return 1.0 if self.refuse_threshold is None else self.refuse_threshold / self.threshold

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        return self.stats.distances(vectors)

    def ratios(self, vectors: np.ndarray) -> np.ndarray:
        return self.distances(vectors) / self.threshold


@dataclass(frozen=True)
class FloorCheck:
    """One named one-sided test: a picture statistic below its floor fails (ratio exp(floor - value) > 1),
    or with ``ceiling`` above it (ratio exp(value - floor))."""

    name: str
    column: int  # which column of ``floor_statistics``
    floor: float  # the floor, or with ``ceiling`` the ceiling
    signal: str = FLOORS
    refuse_floor: float | None = None  # a value beyond which the image is refused (None: the floor)
    ceiling: bool = False

    @property
    def sign(self) -> float:
        return -1.0 if self.ceiling else 1.0

    @property
    def refuse_factor(self) -> float:
        """The ratio at which this check refuses, 1 without a refusal level of its own."""
        return 1.0 if self.refuse_floor is None else float(np.exp(self.sign * (self.floor - self.refuse_floor)))

    def ratios(self, vectors: np.ndarray) -> np.ndarray:
        values = np.atleast_2d(np.asarray(vectors, np.float64))[:, self.column]
        return np.exp(np.minimum(self.sign * (self.floor - values), 50.0))


def largest(ratios: dict) -> np.ndarray:
    """Per image, the largest of the checks' ratios: the non-skin score."""
    return np.max(np.stack(list(ratios.values())), axis=0)


class NonSkinCheck:
    """The checks of one model, combined by one rule: score = the largest ratio over the checks.

    ``imagenet_gate``: the ImageNet check runs only for an image whose own features lie
    further than this from the training images (a high percentile of the validation
    lesions' distances, ``NONSKIN_IMAGENET_GATE_PERCENTILE``). A picture that is not a
    lesion is far out on its own features as well, so the ImageNet branch costs nothing
    for the real lesions that look most typical, and cannot refuse them either.
    """

    def __init__(self, checks: tuple, labels: ImagenetLabels | None = None, imagenet_gate: float | None = None,
                 objects: ObjectCheck | None = None):
        self.checks = tuple(checks)
        self.labels = labels
        self.imagenet_gate = imagenet_gate
        self.objects = objects

    def check(self, name: str) -> DistanceCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def gate_opened_by(self, margin: float) -> NonSkinCheck:
        """The same checks with the ImageNet gate ``margin`` (a share) nearer: for int8 features, which
        lie a few percent nearer the lesions than float32's, so the branch runs wherever float32's would."""
        gate = None if self.imagenet_gate is None else self.imagenet_gate * (1.0 - margin)
        return NonSkinCheck(self.checks, self.labels, gate, self.objects)

    def ratios(self, signals: dict) -> dict[str, np.ndarray]:
        """Each check's ratios by name, for the checks whose signal is given (``signals`` maps a
        signal name to (n, d) vectors). The ImageNet check's ratio is 0 where its gate is shut."""
        out = {c.name: c.ratios(signals[c.signal]) for c in self.checks if c.signal != IMAGENET and c.signal in signals}
        imagenet = self.check(IMAGENET)
        if imagenet is not None and signals.get(IMAGENET) is not None:
            out[IMAGENET] = np.where(self.imagenet_runs(out), imagenet.ratios(signals[IMAGENET]), 0.0)
        return out

    def imagenet_runs(self, ratios: dict) -> np.ndarray:
        """Per image, from the other checks' ``ratios``: must the ImageNet check run?"""
        features = ratios[FEATURES]
        if self.check(IMAGENET) is None:
            return np.zeros(len(features), bool)
        if self.imagenet_gate is None:
            return np.ones(len(features), bool)
        return features * self.check(FEATURES).threshold > self.imagenet_gate

    def score(self, signals: dict) -> np.ndarray:
        """Per image, the largest ratio over the checks: above 1, the image is unusual."""
        return largest(self.ratios(signals))

    def refusal_score(self, ratios: dict) -> np.ndarray:
        """Per image, from the checks' ``ratios``: the largest ratio to their refusal levels."""
        factors = {c.name: c.refuse_factor for c in self.checks}
        return largest({name: r / factors[name] for name, r in ratios.items()})

    def answers(self, ratios: dict, imagenet_probs=None, objects=None) -> np.ndarray:
        """Per image, from the checks' ``ratios``, the ImageNet probabilities (None where the branch did not
        run) and ``object_photos`` (None: not asked): the answer of the one rule, ``server.thresholds.nonskin_answer``.
        A card with an object check refuses on it alone; an older one on the ImageNet top class (``named``)."""
        n = len(ratios[FEATURES])
        named = self.named(ratios, imagenet_probs) if self.objects is None else np.zeros(n, bool)
        objects = np.zeros(n, bool) if objects is None else np.asarray(objects, bool)
        return np.atleast_1d(nonskin_answer(largest(ratios), self.refusal_score(ratios), named, objects))

    def object_photos(self, ratios: dict, features, imagenet_features) -> np.ndarray:
        """Per image: did the ImageNet branch run (its gate open) and the object check find an everyday object?"""
        n = len(ratios[FEATURES])
        if self.objects is None or imagenet_features is None:
            return np.zeros(n, bool)
        return self.imagenet_runs(ratios) & self.objects.is_object(features, imagenet_features)

    def named(self, ratios: dict, imagenet_probs) -> np.ndarray:
        """Per image: did the ImageNet branch run (its gate open) and name an everyday object, with next to
        nothing on the classes lesions get (``NONSKIN_NAMED_MIN_PROBABILITY``, ``NONSKIN_NAMED_MAX_LESION_LIKE``)?"""
        n = len(ratios[FEATURES])
        if imagenet_probs is None or self.labels is None:
            return np.zeros(n, bool)
        return self.imagenet_runs(ratios) & self.labels.names_an_object(
            imagenet_probs, NONSKIN_NAMED_MIN_PROBABILITY, NONSKIN_NAMED_MAX_LESION_LIKE)

    def signals_needed(self) -> set[str]:
        return {c.signal for c in self.checks}

    @classmethod
    def from_arrays(cls, arrays: dict, thresholds: dict, imagenet_gate: float | None = None,
                    refusal: dict | None = None, object_threshold: float | None = None) -> "NonSkinCheck":
        """The checks the card's thresholds name, with the statistics a file holds.

        ``thresholds``: ``features`` (always), and when present ``picture``, ``imagenet``
        (distance thresholds) and ``texture``, ``colour`` (floors). ``refusal``: by the same
        names, the refusal levels of the checks that have one. ``object_threshold``: the object check's
        (``ObjectCheck``), which a file that stores its classifier needs.
        """
        refusal = {k: float(v) for k, v in (refusal or {}).items() if v is not None}
        checks = []
        for name, prefix in ((FEATURES, ""), (PICTURE, "image_"), (IMAGENET, "imagenet_")):
            if thresholds.get(name) is not None and (name == FEATURES or f"{prefix}mean" in arrays):
                checks.append(DistanceCheck(name, name, Mahalanobis.from_arrays(arrays, prefix), float(thresholds[name]),
                                            refusal.get(name)))
        for name, (column, ceiling) in PICTURE_CHECKS.items():
            if thresholds.get(name) is not None:
                checks.append(FloorCheck(name, column, float(thresholds[name]), refuse_floor=refusal.get(name),
                                         ceiling=ceiling))
        labels = None
        if "imagenet_labels" in arrays:
            names = tuple(str(n) for n in arrays["imagenet_labels"])
            labels = ImagenetLabels(names, frozenset(int(i) for i in arrays.get("imagenet_lesion_like", [])))
        return cls(tuple(checks), labels, imagenet_gate, ObjectCheck.from_arrays(arrays, object_threshold))

    @classmethod
    def load(cls, path: Path, thresholds: dict, imagenet_gate: float | None = None,
             refusal: dict | None = None, object_threshold: float | None = None) -> "NonSkinCheck":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return cls.from_arrays(arrays, thresholds, imagenet_gate, refusal, object_threshold)
