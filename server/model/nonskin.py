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
them, with what the ImageNet classifier names (``ImagenetLabels.names_an_object``), into an answer:
usual, unusual (screened with a warning) or refused. The ImageNet classifier's top class
explains a refusal ("looks like: tabby cat") through ``looks_like``.

numpy only: the trainer fits the statistics and stores them with ``compact_ood`` in the
format ``Mahalanobis.from_arrays`` reads, so writer and reader live together here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.thresholds import NONSKIN_NAMED_MAX_LESION_LIKE, NONSKIN_NAMED_MIN_PROBABILITY, nonskin_answer

# The signals a check can read: pooled features, the 12 picture statistics, the ImageNet
# branch's pooled features, and the two picture statistics the floors read.
FEATURES, PICTURE, IMAGENET, FLOORS = "features", "picture", "imagenet", "floors"
# Columns of ``image_statistics`` that ``floor_statistics`` computes on their own, in order.
GRADIENT_COLUMN, SATURATION_COLUMN = 6, 10
TEXTURE_FLOOR, COLOUR_FLOOR, FLAT_SHARE = 0, 1, 2  # columns of ``floor_statistics``
# The picture checks: name -> (column of ``floor_statistics``, is it a ceiling?).
PICTURE_CHECKS = {"texture": (TEXTURE_FLOOR, False), "colour": (COLOUR_FLOOR, False),
                  "noise": (TEXTURE_FLOOR, True), "flat": (FLAT_SHARE, True)}
# Pixels darker than this (0..255 grey) do not count towards the flat share: the black
# surround of a dermatoscope's round field is as flat as a made picture's fill.
FLAT_DARK_BELOW = 40.0


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
            arrays = {k: v for k, v in arrays.items() if not k.startswith(("image_", "imagenet_"))}
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

    def __init__(self, checks: tuple, labels: ImagenetLabels | None = None, imagenet_gate: float | None = None):
        self.checks = tuple(checks)
        self.labels = labels
        self.imagenet_gate = imagenet_gate

    def check(self, name: str) -> DistanceCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def gate_opened_by(self, margin: float) -> NonSkinCheck:
        """The same checks with the ImageNet gate ``margin`` (a share) nearer: for int8 features, which
        lie a few percent nearer the lesions than float32's, so the branch runs wherever float32's would."""
        gate = None if self.imagenet_gate is None else self.imagenet_gate * (1.0 - margin)
        return NonSkinCheck(self.checks, self.labels, gate)

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

    def answers(self, ratios: dict, imagenet_probs=None) -> np.ndarray:
        """Per image, from the checks' ``ratios`` and the ImageNet probabilities (None where the branch
        did not run): the answer of the one rule, ``server.thresholds.nonskin_answer``."""
        named = self.named(ratios, imagenet_probs)
        return np.atleast_1d(nonskin_answer(largest(ratios), self.refusal_score(ratios), named))

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
                    refusal: dict | None = None) -> "NonSkinCheck":
        """The checks the card's thresholds name, with the statistics a file holds.

        ``thresholds``: ``features`` (always), and when present ``picture``, ``imagenet``
        (distance thresholds) and ``texture``, ``colour`` (floors). ``refusal``: by the same
        names, the refusal levels of the checks that have one.
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
        return cls(tuple(checks), labels, imagenet_gate)

    @classmethod
    def load(cls, path: Path, thresholds: dict, imagenet_gate: float | None = None,
             refusal: dict | None = None) -> "NonSkinCheck":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return cls.from_arrays(arrays, thresholds, imagenet_gate, refusal)


def _channels(x: np.ndarray):
    """Model inputs in [-1, 1] -> 0..255 red, green, blue planes (float32)."""
    u = (np.asarray(x, np.float32) + 1.0) * np.float32(127.5)
    return u, u[..., 0], u[..., 1], u[..., 2]


def _extremes(r, g, b):
    # Channel max/min element-wise: numpy's reductions over a last axis of length 3 are
    # strided and were half the cost of a whole prediction.
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def _gradients(grey):
    return np.abs(np.diff(grey, axis=2)), np.abs(np.diff(grey, axis=1))


def _mean_gradient(gx, gy):
    return 0.5 * (gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2)))


def _saturation(mx, mn):
    return ((mx - mn) / np.maximum(mx, 1.0)).mean(axis=(1, 2))


def _logit(p):
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _flat_share(grey, gx, gy):
    """The share of neighbouring pixels that are exactly equal, along the flatter of the two axes, among
    pixels not darker than ``FLAT_DARK_BELOW``: a made picture (a fill, a gradient, a sky) is flat along
    at least one axis; a photo's sensor noise and skin texture leave few equal neighbours either way."""
    lit_x, lit_y = grey[:, :, 1:] >= FLAT_DARK_BELOW, grey[:, 1:] >= FLAT_DARK_BELOW
    return np.maximum(((gx == 0) & lit_x).mean(axis=(1, 2)), ((gy == 0) & lit_y).mean(axis=(1, 2)))


def floor_statistics(x: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) model inputs in [-1, 1] -> (n, 3): the texture, colour and flat share the picture checks read.

    The first two are exactly columns ``GRADIENT_COLUMN`` and ``SATURATION_COLUMN`` of
    ``image_statistics`` (the same functions compute them), at a fraction of its cost: the
    service computes only these.
    """
    _, r, g, b = _channels(x)
    mx, mn = _extremes(r, g, b)
    grey = (r + g + b) / np.float32(3.0)
    gx, gy = _gradients(grey)
    return np.stack([np.log1p(_mean_gradient(gx, gy)), _logit(_saturation(mx, mn)), _logit(_flat_share(grey, gx, gy))],
                    axis=1)


def image_statistics(x: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) model inputs in [-1, 1] -> (n, 12) low-level statistics of the picture.

    Deep features alone let some near-empty pictures through (a flat colour, a smooth
    gradient, a page of text can land near the lesions' mean). A photo of skin has a
    skin-like colour, some texture and few pure-white or pure-black pixels; these
    statistics say so in a few numbers (log or logit scaled so they are roughly Gaussian).
    Older cards check all twelve with a Mahalanobis distance; newer ones put one-sided
    floors on two of them (``floor_statistics``).
    """
    u, r, g, b = _channels(x)
    mx, mn = _extremes(r, g, b)
    grey = (r + g + b) / np.float32(3.0)
    gx, gy = _gradients(grey)
    sharp = 0.5 * ((gx > 40).mean(axis=(1, 2)) + (gy > 40).mean(axis=(1, 2)))
    white = (mn > 240).mean(axis=(1, 2))
    black = (mx < 15).mean(axis=(1, 2))
    fine = np.abs(grey[:, 1:-1, 1:-1] * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2]
                  - grey[:, 1:-1, 2:]).mean(axis=(1, 2))  # Laplacian: sensor noise and skin texture
    return np.stack([
        *(u.mean(axis=(1, 2)) / 255.0).T, *np.log1p(u.std(axis=(1, 2))).T,
        np.log1p(_mean_gradient(gx, gy)), _logit(sharp), _logit(white), _logit(black), _logit(_saturation(mx, mn)),
        np.log1p(fine),
    ], axis=1)
