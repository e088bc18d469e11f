"""The teacher: the fold models' outputs on every training image, averaged into soft targets.

    python -m training.teacher --folds-dir ../runs/chain      # or saved_models/folds, the committed copies

Reads ``folds.csv`` and each ``fold_<k>/outputs.npz`` (``training.folds``), and writes
``teacher.npz`` beside them: every member's logits on the training split (plain and
mirrored views averaged), each image's out-of-fold logits, its fold and its label. The
student (``--distill-teacher``) turns the members into soft targets at its temperature.

It also prints what the folds measure, so the chain's choices rest on them and not on one
validation split:
- out of fold: each member on the fifth it never saw, their mean and spread, and all
  training images pooled (about 7,000 predictions);
- validation: the members' mean figures against the ensemble's, paired, with a 95%
  interval from resampling whole lesions: the gain a student can hope to keep.
The test split is not read here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from server.lesions import CLASS_CODES
from training.compare import FIGURES, lesion_resamples, validation_figures
from training.distill import TEACHER_FILE, soft_targets
from training.folds import FOLDS_CSV, OUTPUTS, held_out_figures

SHIPPED_SPLIT = Path(__file__).resolve().parent.parent / "saved_models" / "split.csv"


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    return frame["dx"].map(CLASS_CODES.index).to_numpy()


def member_logits(folds_dir: Path, split: str) -> np.ndarray:
    """(members, n, k) logits of every fold model on ``split``, its plain and mirrored views averaged."""
    members = []
    for path in sorted(folds_dir.glob(f"fold_*/{OUTPUTS}"), key=lambda p: int(p.parent.name.split("_")[1])):
        with np.load(path) as z:
            members.append((z[split].astype(np.float32) + z[f"{split}_mirrored"].astype(np.float32)) / 2)
    if not members:
        raise FileNotFoundError(f"no fold_*/{OUTPUTS} in {folds_dir}: run python -m training.folds first")
    return np.stack(members)


def out_of_fold(members: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """Each image's logits from the one member that did not train on it."""
    return members[fold_of, np.arange(members.shape[1])]


def build_teacher(folds_dir: Path) -> Path:
    """Write ``teacher.npz`` from every fold's outputs; all folds must be done."""
    folds = pd.read_csv(folds_dir / FOLDS_CSV)
    members = member_logits(folds_dir, "train")
    fold_of = folds["fold"].to_numpy()
    if members.shape[0] != fold_of.max() + 1:
        raise ValueError(f"{folds_dir} holds {members.shape[0]} finished folds of {fold_of.max() + 1}")
    path = folds_dir / TEACHER_FILE
    np.savez_compressed(path, image_ids=folds["image_id"].to_numpy().astype(str), members=members.astype(np.float16),
                        oof=out_of_fold(members, fold_of).astype(np.float16), fold=fold_of, labels=labels_of(folds))
    return path


def fold_figures(folds_dir: Path, split_csv: Path, resamples: int = 200) -> dict:
    """Out-of-fold figures, and on validation the ensemble against its members, paired by lesion."""
    folds = pd.read_csv(folds_dir / FOLDS_CSV)
    y_train, fold_of = labels_of(folds), folds["fold"].to_numpy()
    train = member_logits(folds_dir, "train")
    per_fold = [held_out_figures(y_train[fold_of == k], train[k][fold_of == k]) for k in range(len(train))]
    summary = {key: {"mean": round(float(np.mean([f[key] for f in per_fold])), 4),
                     "sd": round(float(np.std([f[key] for f in per_fold], ddof=1)), 4) if len(per_fold) > 1 else 0.0}
               for key in ("balanced_accuracy", "melanoma_recall", "malignant_auc")}
    oof = out_of_fold(train, fold_of) if len(train) == fold_of.max() + 1 else None
    split = pd.read_csv(split_csv)
    val = split[split["split"] == "val"]
    y_val, lesions = labels_of(val), val["lesion_id"].to_numpy()
    probs = np.stack([soft_targets(m[None], 1.0) for m in member_logits(folds_dir, "val")])
    ensemble = probs.mean(axis=0)

    def gain(idx) -> list[float | None]:
        single = [validation_figures(y_val[idx], p[idx]) for p in probs]
        both = validation_figures(y_val[idx], ensemble[idx])
        return [None if both[k] is None or any(s[k] is None for s in single)
                else both[k] - float(np.mean([s[k] for s in single])) for k in FIGURES]

    point = gain(np.arange(len(y_val)))
    draws = np.array([gain(idx) for idx in lesion_resamples(lesions, resamples)], dtype=float)
    return {"out_of_fold": {"per_fold": per_fold, **summary,
                            **({"pooled": held_out_figures(y_train, oof)} if oof is not None else {})},
            "validation": {"members": [validation_figures(y_val, p) for p in probs],
                           "ensemble": validation_figures(y_val, ensemble),
                           "ensemble_gain_95": {k: [round(point[i], 4), *np.round(np.nanpercentile(draws[:, i], [2.5, 97.5]), 4).tolist()]
                                                for i, k in enumerate(FIGURES) if point[i] is not None}}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Average the fold models into the student's soft targets; print the folds' figures.")
    p.add_argument("--folds-dir", type=Path, required=True, help="a training.folds run folder, or its committed copy")
    p.add_argument("--split-csv", type=Path, default=None, help="the run's split (default: the folds dir's, else the shipped one)")
    p.add_argument("--resamples", type=int, default=200, help="lesion-bootstrap draws for the ensemble's gain")
    args = p.parse_args(argv)
    split_csv = args.split_csv or next((c for c in (args.folds_dir / "split.csv", SHIPPED_SPLIT) if c.is_file()), None)
    try:
        figures = fold_figures(args.folds_dir, split_csv, args.resamples)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.folds_dir / "teacher_figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    try:
        print(f"soft targets: {build_teacher(args.folds_dir)}")
    except ValueError as exc:
        print(f"no soft targets yet: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
