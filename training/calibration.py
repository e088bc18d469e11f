"""Fitting the trust figures on validation: temperature, the uncertain threshold, the TTA choice.

The maths they are fitted for (``temperature_scale``, ``tta_views``) is the service's own,
in ``server/model/trust.py``; the targets are in ``server/thresholds.py``.
"""

from __future__ import annotations

import time

import numpy as np

from server.model.trust import TTA_MODES, temperature_scale, tta_views
from server.thresholds import DEFAULT_UNCERTAIN_BELOW, UNCERTAIN_TARGET_ACCURACY

ECE_BINS = 15
TTA_MIN_GAIN = 0.01
TTA_MAX_FORWARD_MS = 150.0  # one image's TTA batch on the serving CPU; /predict must stay interactive


def nll(probs, labels) -> float:
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels)], 1e-12, 1.0)
    return float(-np.log(p).mean())


def ece(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins on [0, 1]."""
    probs = np.asarray(probs, np.float64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = pred == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def fit_temperature(probs, labels) -> float:
    """The T minimising the NLL of softmax(log p / T) (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    res = minimize_scalar(lambda log_t: nll(temperature_scale(probs, np.exp(log_t)), labels),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def choose_uncertain_threshold(probs, labels, target: float = UNCERTAIN_TARGET_ACCURACY,
                               grid=None, min_answered: int = 20) -> dict:
    """The lowest t (grid of 0.01) whose answers with top probability >= t reach ``target`` accuracy.

    Returns t with the coverage (share answered) and accuracy of the answered at t. When no
    t reaches the target with at least ``min_answered`` answers, the most selective grid
    point with that many answers is used and ``target_reached`` is false.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    grid = np.round(np.arange(0.30, 0.951, 0.01), 2) if grid is None else np.asarray(grid)
    rows = []
    for t in grid:
        answered = conf >= t
        if answered.sum() >= min_answered:
            rows.append((float(t), float(answered.mean()), float(correct[answered].mean())))
    if not rows:
        return {"threshold": DEFAULT_UNCERTAIN_BELOW, "target_accuracy": target, "target_reached": False, "coverage": None,
                "accuracy_answered": None}
    hit = next((r for r in rows if r[2] >= target), None)
    t, coverage, acc = hit if hit else rows[-1]
    return {"threshold": t, "target_accuracy": target, "target_reached": hit is not None,
            "coverage": coverage, "accuracy_answered": acc}


def selective_figures(probs, labels, t: float) -> dict:
    conf, correct = np.asarray(probs).max(axis=1), np.asarray(probs).argmax(axis=1) == np.asarray(labels)
    answered = conf >= t
    return {"coverage": float(answered.mean()),
            "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
            "accuracy_uncertain": float(correct[~answered].mean()) if (~answered).any() else None}


def tta_latency_ms(predictor, repeats: int = 30) -> dict:
    """Median time of one image's forward pass with each TTA mode (batch = its views)."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, predictor.input_size, predictor.input_size, 3)).astype(np.float32)
    out = {}
    for mode in TTA_MODES:
        batch = tta_views(x, mode)
        predictor.forward(batch)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            predictor.forward(batch)
            times.append((time.perf_counter() - t) * 1000.0)
        out[mode] = float(np.median(times))
    return out


def choose_tta(val_ba: dict, latency_ms: dict | None = None, min_gain: float = TTA_MIN_GAIN,
               max_ms: float = TTA_MAX_FORWARD_MS) -> str:
    """Cheapest mode gaining >= ``min_gain`` validation balanced accuracy over no TTA for every
    doubling of its cost, within 0.005 of the best mode, whose forward pass for one image stays
    within ``max_ms``; else "off".

    Charging the gain per doubling is what "enough to pay for its cost" means here: 8 views
    cost 8x the CPU, i.e. an eighth of the throughput, and a gain of one or two points on
    a validation split holding 17 dermatofibromas (one image = 0.008) is within its noise.
    """
    best = max(val_ba[m] for m in TTA_MODES)
    for mode in ("flips", "full"):  # cheapest first
        affordable = latency_ms is None or latency_ms[mode] <= max_ms
        doublings = 1.0 if latency_ms is None else max(1.0, float(np.log2(latency_ms[mode] / latency_ms["off"])))
        if affordable and val_ba[mode] - val_ba["off"] >= min_gain * doublings and val_ba[mode] >= best - 0.005:
            return mode
    return "off"
