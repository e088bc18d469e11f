"""The non-skin check: named Mahalanobis distance checks, each with its own threshold, one rule.

Each ``DistanceCheck`` measures how far one signal of an image lies from the training
images (``features``: the pooled deep features; ``picture``: 12 picture statistics) and
divides that distance by its threshold (a high percentile of the validation distances,
fitted by ``training.calibrate``). The score of an image is the largest of those ratios,
and ``server.thresholds.refuses_as_non_skin`` is the one rule that turns a score into a
refusal. A new signal is one more check: a name, its statistics and its threshold.

numpy only: the trainer fits the statistics and stores them with ``compact_ood`` in the
format ``Mahalanobis.from_arrays`` reads, so writer and reader live together here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURES, PICTURE = "features", "picture"  # the signals a check can read


class Mahalanobis:
    """``d(x) = sqrt((P (x - mean)) . precision . (P (x - mean)))`` with an optional projection
    ``P`` (PCA) and a Ledoit-Wolf shrinkage precision, fitted on the training split."""

    def __init__(self, mean, precision, projection=None):
        self.mean = np.asarray(mean, np.float64)
        self.precision = np.asarray(precision, np.float64)
        self.projection = None if projection is None else np.asarray(projection, np.float64)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(vectors, np.float64)) - self.mean
        if self.projection is not None:
            z = z @ self.projection
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str = "") -> "Mahalanobis":
        """From the stored arrays: the precision whole, or (compact) its scaled upper triangle (float16)."""
        arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if prefix == "":
            arrays = {k: v for k, v in arrays.items() if not k.startswith("image_")}
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

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        return self.stats.distances(vectors)

    def ratios(self, vectors: np.ndarray) -> np.ndarray:
        return self.distances(vectors) / self.threshold


class NonSkinCheck:
    """The checks of one model, combined by one rule: score = the largest distance / threshold."""

    def __init__(self, checks: tuple[DistanceCheck, ...]):
        self.checks = tuple(checks)

    def check(self, name: str) -> DistanceCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def score(self, signals: dict) -> np.ndarray:
        """Per image, the largest ratio over the checks; ``signals`` maps a signal name to (n, d) vectors."""
        return np.max(np.stack([c.ratios(signals[c.signal]) for c in self.checks]), axis=0)

    def signals_needed(self) -> set[str]:
        return {c.signal for c in self.checks}

    @classmethod
    def from_arrays(cls, arrays: dict, threshold: float, image_threshold: float | None) -> "NonSkinCheck":
        """The checks a statistics file holds: deep features always, picture statistics when stored."""
        checks = [DistanceCheck(FEATURES, FEATURES, Mahalanobis.from_arrays(arrays), float(threshold))]
        if "image_mean" in arrays and image_threshold is not None:
            checks.append(DistanceCheck(PICTURE, PICTURE, Mahalanobis.from_arrays(arrays, "image_"), float(image_threshold)))
        return cls(tuple(checks))

    @classmethod
    def load(cls, path: Path, threshold: float, image_threshold: float | None) -> "NonSkinCheck":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return cls.from_arrays(arrays, threshold, image_threshold)


def image_statistics(x: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) model inputs in [-1, 1] -> (n, 12) low-level statistics of the picture.

    The second check: deep features alone let some near-empty pictures through (a flat
    colour, a smooth gradient, a page of text can land near the lesions' mean). A photo of
    skin has a skin-like colour, some texture and few pure-white or pure-black pixels;
    these statistics say so in a few numbers (log or logit scaled so they are roughly
    Gaussian), and a second Mahalanobis distance checks them.
    """
    u = (np.asarray(x, np.float32) + 1.0) * 127.5
    r, g, b = u[..., 0], u[..., 1], u[..., 2]
    # Channel max/min/mean element-wise: numpy's reductions over a last axis of length 3
    # are strided and were half the cost of a whole prediction.
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    grey = (r + g + b) / np.float32(3.0)
    gx, gy = np.abs(np.diff(grey, axis=2)), np.abs(np.diff(grey, axis=1))
    grad = 0.5 * (gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2)))
    sharp = 0.5 * ((gx > 40).mean(axis=(1, 2)) + (gy > 40).mean(axis=(1, 2)))
    white = (mn > 240).mean(axis=(1, 2))
    black = (mx < 15).mean(axis=(1, 2))
    saturation = ((mx - mn) / np.maximum(mx, 1.0)).mean(axis=(1, 2))
    fine = np.abs(grey[:, 1:-1, 1:-1] * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2]
                  - grey[:, 1:-1, 2:]).mean(axis=(1, 2))  # Laplacian: sensor noise and skin texture

    def logit(p):
        p = np.clip(p, 1e-3, 1 - 1e-3)
        return np.log(p / (1 - p))

    return np.stack([
        *(u.mean(axis=(1, 2)) / 255.0).T, *np.log1p(u.std(axis=(1, 2))).T,
        np.log1p(grad), logit(sharp), logit(white), logit(black), logit(saturation), np.log1p(fine),
    ], axis=1)
