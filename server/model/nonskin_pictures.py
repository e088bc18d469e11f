"""The picture statistics the non-skin check reads: texture, colour and the flat share (and, in older
cards, twelve statistics checked together). numpy only, on model inputs in [-1, 1]."""

from __future__ import annotations

import numpy as np

# Columns of ``image_statistics`` that ``floor_statistics`` computes on their own, in order.
GRADIENT_COLUMN, SATURATION_COLUMN = 6, 10
# Pixels darker than this (0..255 grey) do not count towards the flat share: the black
# surround of a dermatoscope's round field is as flat as a made picture's fill.
FLAT_DARK_BELOW = 40.0


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
