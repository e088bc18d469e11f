"""The differential's thresholds: split conformal prediction on validation, measured on test (issue #34).

    python -m training.differential --run-dir saved_models

Score: 1 - p(true class), on the served (TTA, temperature-scaled) validation probabilities.
A class joins a photo's list when its score is at or below a threshold, i.e. its probability
reaches ``1 - threshold``. Two guarantees, for photos exchangeable with validation:

- overall: the threshold is the ceil((n + 1) x coverage)-th smallest validation score, so a
  new photo's true class is in its list with probability at least ``coverage``;
- per class (Mondrian): each class's own threshold at a floor of coverage, from its own
  validation photos, so a rare class is not left far under the overall figure.

Each class takes the larger of the two. The floor is the highest of
``DIFFERENTIAL_CLASS_FLOORS`` whose validation lists stay within ``DIFFERENTIAL_MAX_MEAN_SIZE``
classes on average (``server/thresholds.py``); nothing is tuned by hand. The test split
only reports. The trainer and ``training.calibrate`` run this after they save the served
probabilities; this CLI does it again for a run from its ``predictions.npz`` (card and ``report.md``).

Written as a small function rather than with MAPIE or crepes: both take an estimator or
produce p-values and sets, while the service needs the thresholds themselves as numbers in
the card, to apply without the library; the one quantile they would compute is below, tested.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from server.model.card import ModelCard
from server.thresholds import DIFFERENTIAL_CLASS_FLOORS, DIFFERENTIAL_MAX_MEAN_SIZE, DIFFERENTIAL_TARGET_COVERAGE

SCORE = "1 - calibrated p(class), served probabilities (TTA, temperature)"


def conformal_quantile(scores, coverage: float) -> float:
    """The ceil((n + 1) x coverage)-th smallest score (inf when n is too small to promise ``coverage``).

    With n exchangeable calibration scores, a new score is at or below it with probability
    at least ``coverage`` (split conformal prediction's finite-sample correction).
    """
    scores = np.sort(np.asarray(scores, np.float64))
    k = math.ceil((len(scores) + 1) * coverage)
    return float("inf") if k > len(scores) else float(scores[k - 1])


def true_class_scores(probs, labels) -> np.ndarray:
    """1 - the probability of each photo's true class: small when the model gave it much."""
    probs = np.asarray(probs, np.float64)
    return 1.0 - probs[np.arange(len(probs)), np.asarray(labels)]


def class_thresholds(probs, labels, n_classes: int, coverage: float, class_floor: float | None) -> np.ndarray:
    """Each class's score threshold: the overall conformal quantile at ``coverage``, or the class's own
    at ``class_floor`` when that is larger (None: the overall one for every class)."""
    scores, labels = true_class_scores(probs, labels), np.asarray(labels)
    overall = conformal_quantile(scores, coverage)
    if class_floor is None:
        return np.full(n_classes, overall)
    return np.array([max(overall, conformal_quantile(scores[labels == k], class_floor)) for k in range(n_classes)])


def min_probabilities(thresholds) -> np.ndarray:
    """Score thresholds as the lowest probability that keeps each class in the list."""
    return np.clip(1.0 - np.asarray(thresholds, np.float64), 0.0, 1.0)


def prediction_sets(probs, min_probability) -> np.ndarray:
    """(n, classes) booleans: each class at or above its minimum, and the top class always
    (``server.differential.conformal_codes`` serves the same rule)."""
    probs = np.asarray(probs, np.float64)
    sets = probs >= np.asarray(min_probability)[None, :]
    sets[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return sets


def set_figures(sets, labels, classes) -> dict:
    """Coverage, mean size, the share of single-class lists and how often those were right; by class too."""
    sets, labels = np.asarray(sets, bool), np.asarray(labels)
    covered, size = sets[np.arange(len(labels)), labels], sets.sum(axis=1)
    single = size == 1
    by_class = {code: {"n": int((labels == k).sum()),
                       "coverage": float(covered[labels == k].mean()) if (labels == k).any() else None,
                       "mean_size": float(size[labels == k].mean()) if (labels == k).any() else None}
                for k, code in enumerate(classes)}
    return {"n": int(len(labels)), "coverage": float(covered.mean()), "mean_size": float(size.mean()),
            "single_share": float(single.mean()),
            "single_accuracy": float(covered[single].mean()) if single.any() else None, "by_class": by_class}


def fit_rule(probs: dict, labels: dict, classes, coverage: float = DIFFERENTIAL_TARGET_COVERAGE,
             floors=DIFFERENTIAL_CLASS_FLOORS, max_mean_size: float = DIFFERENTIAL_MAX_MEAN_SIZE) -> dict:
    """One rule of the card's section: the class floor chosen on validation, its minimum probabilities,
    and the figures on every split in ``probs`` (``val`` required)."""
    n = len(classes)
    chosen, minimum = None, min_probabilities(class_thresholds(probs["val"], labels["val"], n, coverage, None))
    for floor in floors:
        candidate = min_probabilities(class_thresholds(probs["val"], labels["val"], n, coverage, floor))
        if prediction_sets(probs["val"], candidate).sum(axis=1).mean() <= max_mean_size:
            chosen, minimum = floor, candidate
            break
    return {"class_floor": chosen, "min_probability": {c: float(m) for c, m in zip(classes, minimum)},
            "figures": {s: set_figures(prediction_sets(p, minimum), labels[s], classes) for s, p in probs.items()}}


def differential_section(served: dict, labels: dict, classes, served_context: dict | None = None,
                         coverage: float = DIFFERENTIAL_TARGET_COVERAGE) -> dict:
    """The card's ``differential``: the rule for the image alone and, for a model that reads it, with the context."""
    rule = (f"split conformal at {coverage:.0%} on validation (score {SCORE}); each class takes the larger of the "
            f"overall threshold and its own at the highest floor of {', '.join(f'{f:.0%}' for f in DIFFERENTIAL_CLASS_FLOORS)} "
            f"whose validation lists hold at most {DIFFERENTIAL_MAX_MEAN_SIZE:g} classes on average")
    out = {"coverage": coverage, **fit_rule(served, labels, classes, coverage), "score": SCORE, "rule": rule}
    if served_context:
        out["with_context"] = fit_rule(served_context, labels, classes, coverage)
    return out


def card_with_differential(card: ModelCard, npz_path: Path, reads_context: bool) -> ModelCard:
    """The card with its ``differential`` fitted from a run's ``predictions.npz`` (served probabilities)."""
    with np.load(npz_path) as saved:
        splits = [s for s in ("val", "test") if f"{s}_probs_served" in saved]
        if "val" not in splits:
            raise SystemExit(f"{npz_path} has no val_probs_served: run training.calibrate first")
        served = {s: saved[f"{s}_probs_served"] for s in splits}
        labels = {s: saved[f"{s}_labels"] for s in splits}
        context = {s: saved[f"{s}_probs_with_context_served"] for s in splits
                   if f"{s}_probs_with_context_served" in saved} if reads_context else {}
    section = differential_section(served, labels, card.classes, context if "val" in context else None)
    return ModelCard.from_dict({**card.to_dict(), "differential": section})


def _shown(value) -> str:
    """A figure of the table, or a dash where there was nothing to measure (no photo of a class, no single list)."""
    return "-" if value is None else f"{value:.3f}"


def figures_table(section: dict) -> list[str]:
    """The fitted rule's figures as Markdown rows: coverage and mean size, overall and by class."""
    rows = []
    for name, rule in (("image", section), ("with context", section.get("with_context"))):
        if not rule:
            continue
        rows += [("" if not rows else "\n") + f"{name}: class floor {rule.get('class_floor')}, min probability "
                 + ", ".join(f"{c} {p:.3f}" for c, p in rule["min_probability"].items()) + "\n",
                 "| split | coverage | mean size | single share | single right | " + " | ".join(
                     rule["figures"]["val"]["by_class"]) + " |", "|---" * (5 + len(rule["min_probability"])) + "|"]
        for split, f in rule["figures"].items():
            by = " | ".join(f"{_shown(v['coverage'])} ({v['n']})" for v in f["by_class"].values())
            rows.append(f"| {split} | {f['coverage']:.3f} | {f['mean_size']:.2f} | {f['single_share']:.3f} | "
                        f"{_shown(f['single_accuracy'])} | {by} |")
    return rows


def main(argv=None) -> int:
    from server.model.files import CARD_FILENAME

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a calibrated run (or saved_models/): model_card.json, predictions.npz")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    card = ModelCard.from_dict(json.loads((run_dir / CARD_FILENAME).read_text()))
    reads = bool(card.patient_context and card.patient_context.reads)
    card = card_with_differential(card, run_dir / "predictions.npz", reads)
    card.write(run_dir / CARD_FILENAME)
    report = run_dir / "report.md"
    if report.is_file():  # the run's report gets the section, the rest of it as the trainer wrote it
        from training.report import differential_section, splice_section

        report.write_text(splice_section(report.read_text(), differential_section(card)))
    print("\n".join(figures_table(card.to_dict()["differential"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
