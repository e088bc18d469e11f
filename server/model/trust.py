"""The TensorFlow-free maths that makes a raw model output trustworthy: temperature and TTA.

The service applies it to every prediction (``server/model/predictor.py``) and the
trainer fits it (``training/calibrate.py``): both import it from here, so what is fitted
is exactly what is served.
"""

from __future__ import annotations

import numpy as np

TTA_MODES = ("off", "flips", "full")
DEFAULT_TTA = "off"  # when neither TTA nor the card chooses
TTA_VIEWS = {"off": 1, "flips": 3, "full": 8}
FLIP_VIEWS = (0, 4, 6)  # in tta_views("full") order: the image, its horizontal flip, its vertical flip


def temperature_scale(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise: the model outputs probabilities, and log p are its logits
    up to a per-row constant, which softmax ignores. T > 1 softens over-confident rows."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def tta_views(x: np.ndarray, mode: str) -> np.ndarray:
    """(n, s, s, 3) -> (n * v, s, s, 3): the copies averaged for test-time augmentation, view-major.

    off: the image; flips: + horizontal and vertical flips; full: the 8 flips/rotations by 90°.
    View 0 is always the image itself (its features serve Grad-CAM and the non-skin check).
    """
    if mode == "off":
        return x
    if mode == "flips":
        views = [x, x[:, :, ::-1], x[:, ::-1]]
    elif mode == "full":
        views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    else:
        raise ValueError(f"TTA must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return np.ascontiguousarray(np.concatenate(views, axis=0))


def tta_count(mode: str) -> int:
    return TTA_VIEWS[mode]


def tta_average(view_probs: np.ndarray, mode: str) -> np.ndarray:
    """(n, 8, classes) probabilities of the ``full`` views -> (n, classes) as ``mode`` averages them."""
    if mode == "off":
        return view_probs[:, 0]
    if mode == "flips":
        return view_probs[:, list(FLIP_VIEWS)].mean(axis=1)
    return view_probs.mean(axis=1)
