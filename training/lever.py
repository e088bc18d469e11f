"""Is a recipe change worth keeping? Its fold models against the chain's, paired, out of fold.

    python -m training.folds --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 \
        --out-dir ../runs/lever224 --input-size 224 --store-size 256 \
        --publish-dir saved_models/levers/input224                         # the lever's folds, resumable
    python -m training.lever --baseline saved_models/folds --lever saved_models/levers/input224

Issue #33's item 7: a second lever (224-px training, mixup, a stronger augmentation) is tried
on the same five lesion-grouped folds as the chain's recipe, and kept only if its paired
out-of-fold difference has an interval above zero. Each fold's held-out training images are
scored by both fold models (plain and mirrored views averaged, no calibration, as
``training.folds`` reports them); the differences, lever minus baseline, get a 95% interval
from resampling whole lesions. One validation split cannot tell 0.04 apart; the pooled
out-of-fold images (about 7,000) can tell much less.

The rule, fixed before any lever fold exists: keep the lever when, over all the folds, the
interval of balanced accuracy or of malignant AUC lies above zero and that of melanoma recall
does not lie below zero. With folds missing it prints the figures so far and no verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from training.compare import lesion_resamples
from training.folds import FOLDS_CSV, OUTPUTS, held_out_figures
from training.teacher import labels_of

FIGURES = ("balanced_accuracy", "melanoma_recall", "malignant_auc")
GAINS = ("balanced_accuracy", "malignant_auc")  # either interval above zero keeps the lever...
GUARDED = ("melanoma_recall",)  # ...unless this one's lies below zero


def fold_logits(folds_dir: Path, k: int) -> np.ndarray | None:
    """Fold ``k``'s model on the training split, plain and mirrored views averaged; None while unfinished."""
    path = folds_dir / f"fold_{k}" / OUTPUTS
    if not path.is_file():
        return None
    with np.load(path) as z:
        return (z["train"].astype(np.float32) + z["train_mirrored"].astype(np.float32)) / 2


def same_folds(baseline: Path, lever: Path) -> pd.DataFrame:
    """The fold assignment both runs share; a lever on other folds would not be paired."""
    a, b = pd.read_csv(baseline / FOLDS_CSV), pd.read_csv(lever / FOLDS_CSV)
    if not a[["image_id", "fold"]].equals(b[["image_id", "fold"]]):
        raise ValueError(f"{lever / FOLDS_CSV} assigns other folds than {baseline / FOLDS_CSV}: nothing is paired")
    return a


def difference(labels: np.ndarray, base: np.ndarray, lever: np.ndarray) -> dict:
    """Lever minus baseline on one set of held-out images."""
    a, b = held_out_figures(labels, base), held_out_figures(labels, lever)
    return {k: b[k] - a[k] for k in FIGURES}


def paired(baseline: Path, lever: Path, resamples: int = 1000, seed: int = 42) -> dict:
    """Per finished fold and pooled over them: both models' figures and the lever's difference (95%)."""
    folds = same_folds(baseline, lever)
    labels, fold_of, lesions = labels_of(folds), folds["fold"].to_numpy(), folds["lesion_id"].to_numpy()
    n_folds = int(fold_of.max()) + 1
    base = other = None
    done, per_fold = [], []
    for k in range(n_folds):
        a, b = fold_logits(baseline, k), fold_logits(lever, k)
        if a is None or b is None:
            continue
        if base is None:
            base, other = np.zeros_like(a), np.zeros_like(a)
        held = fold_of == k
        base[held], other[held] = a[held], b[held]
        done.append(k)
        per_fold.append({"fold": k, "baseline": held_out_figures(labels[held], a[held]),
                         "lever": held_out_figures(labels[held], b[held])})
    if not done:
        raise FileNotFoundError(f"no fold is finished in both {baseline} and {lever}")
    held = np.isin(fold_of, done)
    y, a, b, groups = labels[held], base[held], other[held], lesions[held]
    point = difference(y, a, b)
    resampled = (difference(y[i], a[i], b[i]) for i in lesion_resamples(groups, resamples, seed))
    draws = np.array([[d[k] for k in FIGURES] for d in resampled])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    change = {k: [round(point[k], 4), round(float(lo), 4), round(float(hi), 4)] for k, lo, hi in zip(FIGURES, low, high)}
    return {"folds_done": done, "folds": n_folds, "images": int(held.sum()), "per_fold": per_fold,
            "pooled": {"baseline": held_out_figures(y, a), "lever": held_out_figures(y, b)}, "change_95": change,
            "verdict": verdict(change) if len(done) == n_folds else None}


def verdict(change: dict) -> str:
    """'keep' or 'drop', by the rule in this module's docstring, from ``change_95`` ([point, low, high])."""
    gains = any(change[k][1] > 0 for k in GAINS)
    harms = any(change[k][2] < 0 for k in GUARDED)
    return "keep" if gains and not harms else "drop"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="A lever's fold models against the chain's, paired out of fold.")
    p.add_argument("--baseline", type=Path, default=Path("saved_models/folds"), help="the chain's folds (committed copy)")
    p.add_argument("--lever", type=Path, required=True, help="the lever's training.folds run folder")
    p.add_argument("--resamples", type=int, default=1000, help="lesion-bootstrap draws")
    args = p.parse_args(argv)
    try:
        result = paired(args.baseline, args.lever, args.resamples)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    done = f"{len(result['folds_done'])} of {result['folds']} folds, {result['images']} held-out images"
    changes = "; ".join(f"{k} {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" for k, v in result["change_95"].items())
    print(f"\nlever minus baseline ({done}): {changes}")
    print(f"verdict: {result['verdict'] or 'none until every fold is done'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
