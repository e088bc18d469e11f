"""Compare training runs on validation, paired, with the noise of the difference.

    python -m training.compare saved_models runs/v3 [--bootstrap 1000]

One validation split of 1,432 images cannot rank levers that differ by less than about
0.03 in balanced accuracy, so a single figure per run is not enough to choose between
them. For each run folder this prints the screening figures of its ``predictions.npz``
validation probabilities, each chosen the way the trainer chooses them (temperature,
uncertain threshold and malignant operating point all fitted on validation itself, so
every run is treated alike), and for every run after the first the difference from the
first with a 95% interval from resampling whole lesions (``split.csv``'s ``lesion_id``).
The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from server.model.trust import temperature_scale
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY
from training.calibration import choose_uncertain_threshold, fit_temperature
from training.evaluate import choose_malignant_threshold, is_malignant, malignant_scores, normalised_rows, screening_figures

FIGURES = ("balanced_accuracy", "melanoma_recall", "malignant_auc", "flag_specificity", "coverage")


def validation_figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The issue's five figures on one set of validation probabilities, every choice made on them."""
    from sklearn.metrics import roc_auc_score

    probs = normalised_rows(probs)
    served = temperature_scale(probs, fit_temperature(probs, labels))
    threshold = choose_malignant_threshold(labels, served, MALIGNANT_TARGET_SENSITIVITY)
    figures = screening_figures(labels, served, threshold)
    malignant = is_malignant(labels)
    return {"balanced_accuracy": figures["balanced_accuracy"], "melanoma_recall": figures["melanoma_recall"],
            "malignant_auc": float(roc_auc_score(malignant, malignant_scores(served))) if 0 < malignant.mean() < 1 else None,
            "flag_specificity": figures["malignant_specificity"],
            "coverage": choose_uncertain_threshold(served, labels)["coverage"]}


def lesion_resamples(lesions: np.ndarray, n: int, seed: int = 42):
    """Index arrays that resample whole lesions with replacement (photos of one lesion stay together)."""
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(lesions, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    for _ in range(n):
        yield np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])


def load_run(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, lesion ids) of a run's validation split."""
    import pandas as pd

    with np.load(run_dir / "predictions.npz") as z:
        labels, probs = z["val_labels"], z["val_probs"]
    split = pd.read_csv(run_dir / "split.csv")
    lesions = split.loc[split["split"] == "val", "lesion_id"].to_numpy()
    if len(lesions) != len(labels):
        raise SystemExit(f"error: {run_dir}: split.csv lists {len(lesions)} validation images, predictions {len(labels)}")
    return labels, probs, lesions


def compare(run_dirs: list[Path], resamples: int = 1000) -> dict:
    """Each run's figures, and each later run's difference from the first with a lesion-bootstrap interval."""
    runs = [load_run(d) for d in run_dirs]
    labels, _, lesions = runs[0]
    for d, (other_labels, _, other_lesions) in zip(run_dirs[1:], runs[1:]):
        if not (np.array_equal(labels, other_labels) and np.array_equal(lesions, other_lesions)):
            raise SystemExit(f"error: {d} was validated on another split than {run_dirs[0]}: no paired comparison")
    out = {str(d): {"figures": validation_figures(labels, probs)} for d, (_, probs, _) in zip(run_dirs, runs)}
    if len(runs) > 1 and resamples:
        samples = {str(d): [] for d in run_dirs[1:]}
        for idx in lesion_resamples(lesions, resamples):
            base = validation_figures(labels[idx], runs[0][1][idx])
            for d, (_, probs, _) in zip(run_dirs[1:], runs[1:]):
                this = validation_figures(labels[idx], probs[idx])
                samples[str(d)].append([None if this[k] is None or base[k] is None else this[k] - base[k]
                                        for k in FIGURES])
        for d, rows in samples.items():
            out[d]["difference_95"] = {}
            for i, k in enumerate(FIGURES):
                values = np.array([r[i] for r in rows if r[i] is not None], float)
                point = out[d]["figures"][k] - out[str(run_dirs[0])]["figures"][k]
                low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
                out[d]["difference_95"][k] = [round(point, 4), round(float(low), 4), round(float(high), 4)]
    return out


def markdown_table(result: dict) -> str:
    """The comparison as the ablation table ``report.md`` and the closing notes quote."""
    head = "| run | " + " | ".join(k.replace("_", " ") for k in FIGURES) + " |"
    lines = [head, "|" + "---|" * (len(FIGURES) + 1)]
    for run, row in result.items():
        cells = [f"{row['figures'][k]:.3f}" if row["figures"][k] is not None else "n/a" for k in FIGURES]
        if "difference_95" in row:
            cells = [f"{c} ({d[0]:+.3f}, {d[1]:+.3f} to {d[2]:+.3f})" for c, d in
                     zip(cells, (row["difference_95"][k] for k in FIGURES))]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (predictions.npz, split.csv); the first is the reference")
    p.add_argument("--bootstrap", type=int, default=1000, help="lesion resamples for the intervals (0: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    args = p.parse_args(argv)
    result = compare(args.runs, args.bootstrap)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print("Validation, each run's choices made on validation; after the first run: its figure (difference from the "
              "first, 95% interval of the difference over lesion resamples).")
        print(markdown_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
