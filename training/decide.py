"""Ship the chain's student or keep the shipped model: issue #33's decision rule as code.

    python -m training.decide --student ../runs/chain/student --shipped saved_models [--folds-dir saved_models/folds]

The rule was written in ``saved_models/ablation.md`` before any test figure of the student
existed; this module applies it to the two model cards, so the verdict cannot drift from
the words. Every figure is the test split's, photo alone, as the card records it:

1. ship the student if it meets every line of ``BAR``;
2. else ship it only if its balanced accuracy is within ``BA_TOLERANCE`` of the shipped
   model's and it beats the shipped model on both malignant AUC and coverage;
3. else keep the shipped model.

A student the rule would ship must also keep the service's standing bars, which the suite already
holds the shipped model to: issue #35's non-skin bar (``NONSKIN_BAR``: everyday photos refused,
test lesions plain and shifted as other clinics photograph them not refused), read from its card's
``ood``. A student that misses one is kept out whatever its figures: a refused lesion gets no
malignant flag, the worst answer the service can give.

With ``--folds-dir`` it also prints the five fold models' ensemble on the test split, as a
reference only (temperature, flag threshold and uncertain threshold fitted on validation, as
for a shipped model), and how much of the ensemble's gain over the shipped model the student kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path


# The bar: (figure, lowest value that meets it).
BAR = (("balanced_accuracy", 0.73), ("melanoma_recall", 0.72), ("malignant_auc", 0.915),
       ("flag_sensitivity", 0.88), ("flag_specificity", 0.73), ("coverage", 0.60), ("accuracy_answered", 0.90))
BA_TOLERANCE = 0.01  # rule 2: "within 0.01 of v2's balanced accuracy"


@dataclass(frozen=True)
class Decision:
    ship: bool
    rule: str  # which line of the rule decided
    misses: tuple[str, ...]  # the bar's lines the student missed
    service_misses: tuple[str, ...] = ()  # the service's standing bars the student missed


def card_figures(card: dict) -> dict:
    """The test split's figures a card records, photo alone, and with the patient context where it reads one."""
    test = card["metrics"]["test"]
    figures = {"balanced_accuracy": test["balanced_accuracy"], "melanoma_recall": test["per_class"]["mel"]["recall"],
               "malignant_auc": test["malignant"]["auc"], "flag_sensitivity": test["malignant"]["sensitivity"],
               "flag_specificity": test["malignant"]["specificity"],
               "coverage": card["uncertain"]["test"]["coverage"],
               "accuracy_answered": card["uncertain"]["test"]["accuracy_answered"]}
    served = ((card.get("patient_context") or {}).get("served") or {}).get("test") or {}
    if "with_context" in served:
        for key in ("balanced_accuracy", "melanoma_recall"):
            figures[f"context_{key}"] = served["with_context"][key]
    return figures


def bar_misses(figures: dict) -> tuple[str, ...]:
    """The bar's lines ``figures`` miss; with the context read, it must lower neither figure."""
    misses = [name for name, lowest in BAR if figures[name] is None or figures[name] < lowest]
    for key in ("balanced_accuracy", "melanoma_recall"):
        with_context = figures.get(f"context_{key}")
        if with_context is not None and with_context < figures[key]:
            misses.append(f"context_{key}")
    return tuple(misses)


def service_misses(ood: dict | None) -> tuple[str, ...]:
    """The lines of the non-skin bar (``NONSKIN_BAR``) a card's ``ood`` section misses, each as
    'set refused share (bar)'; a card without the check, or without a set's figure, misses it."""
    from training.nonskin_figures import NONSKIN_BAR

    misses = []
    for name, bar in NONSKIN_BAR.items():
        everyday = name == "everyday"
        rate = (ood or {}).get(f"{name}_{'true' if everyday else 'false'}_flag_rate")
        if rate is None or (rate < bar if everyday else rate > bar):
            shown = "no figure" if rate is None else f"{rate:.2%}"
            misses.append(f"{name} refused {shown} ({'>=' if everyday else '<='} {bar:.1%})")
    return tuple(misses)


def decide(student: dict, shipped: dict, standing: tuple[str, ...] = ()) -> Decision:
    """Issue #33's rule on two cards' figures (``card_figures``); ``standing``: the service's bars the
    student misses (``service_misses``), each of which keeps the shipped model."""
    misses = bar_misses(student)
    if not misses:
        verdict = Decision(True, "meets the bar", misses)
    elif (student["balanced_accuracy"] >= shipped["balanced_accuracy"] - BA_TOLERANCE
            and student["malignant_auc"] > shipped["malignant_auc"] and student["coverage"] > shipped["coverage"]):
        verdict = Decision(True, f"misses the bar, but balanced accuracy within {BA_TOLERANCE} and better AUC and coverage",
                           misses)
    else:
        return Decision(False, "misses the bar and the fallback: keep the shipped model", misses)
    if standing:
        return Decision(False, f"the rule says ship ({verdict.rule}), but it misses the service's standing bars",
                        misses, standing)
    return verdict


def ensemble_test_figures(folds_dir: Path, split_csv: Path) -> dict:
    """The fold models' averaged probabilities on the test split, with what a shipped model gets:
    logit adjustment, temperature, flag threshold and uncertain threshold, all fitted on validation."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from server.model.trust import temperature_scale
    from server.thresholds import MALIGNANT_TARGET_SENSITIVITY
    from training.calibration import choose_uncertain_threshold, fit_temperature, selective_figures
    from training.distill import soft_targets
    from training.evaluate import choose_malignant_threshold, is_malignant, malignant_scores, screening_figures
    from training.posthoc import adjust, choose_tau, class_prior
    from training.teacher import labels_of, member_logits

    split = pd.read_csv(split_csv)
    y = {name: labels_of(split[split["split"] == name]) for name in ("train", "val", "test")}
    probs = {name: soft_targets(member_logits(folds_dir, name), 1.0) for name in ("val", "test")}  # the members' mean
    prior = class_prior(y["train"], probs["val"].shape[1])
    tau, _ = choose_tau(probs["val"], y["val"], prior)
    probs = {name: adjust(p, prior, tau) for name, p in probs.items()}
    t = fit_temperature(probs["val"], y["val"])
    val, test = temperature_scale(probs["val"], t), temperature_scale(probs["test"], t)
    threshold = choose_malignant_threshold(y["val"], val, MALIGNANT_TARGET_SENSITIVITY)
    screening = screening_figures(y["test"], test, threshold)
    selective = selective_figures(test, y["test"], choose_uncertain_threshold(val, y["val"])["threshold"])
    return {"tau": tau, "balanced_accuracy": screening["balanced_accuracy"],
            "melanoma_recall": screening["melanoma_recall"],
            "malignant_auc": float(roc_auc_score(is_malignant(y["test"]), malignant_scores(test))),
            "flag_sensitivity": screening["malignant_sensitivity"], "flag_specificity": screening["malignant_specificity"],
            "coverage": selective["coverage"], "accuracy_answered": selective["accuracy_answered"]}


def chain_complete(folds_dir: Path, student_dir: Path) -> bool:
    """Every fold's outputs and the student's card exist: only then may the ensemble meet the test split."""
    import pandas as pd

    from training.folds import FOLDS_CSV, OUTPUTS

    if not (folds_dir / FOLDS_CSV).is_file() or not (student_dir / "model_card.json").is_file():
        return False
    n_folds = int(pd.read_csv(folds_dir / FOLDS_CSV)["fold"].max()) + 1
    return all((folds_dir / f"fold_{k}" / OUTPUTS).is_file() for k in range(n_folds))


def markdown(rows: dict[str, dict]) -> str:
    """One row a model, one column a line of the bar."""
    names = [name for name, _ in BAR]
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
             "| bar | " + " | ".join(f">= {lowest}" for _, lowest in BAR) + " |"]
    for model, figures in rows.items():
        lines.append(f"| {model} | " + " | ".join("-" if figures.get(n) is None else f"{figures[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Apply issue #33's decision rule to the student's and the shipped model's cards.")
    p.add_argument("--student", type=Path, required=True, help="the student's run folder (its model_card.json)")
    p.add_argument("--shipped", type=Path, default=Path("saved_models"), help="the shipped model's folder")
    p.add_argument("--folds-dir", type=Path, help="the fold models' outputs, for the ensemble's reference row")
    args = p.parse_args(argv)
    try:
        student_card = json.loads((args.student / "model_card.json").read_text())
        student, shipped = card_figures(student_card), card_figures(json.loads((args.shipped / "model_card.json").read_text()))
    except (OSError, KeyError) as exc:
        print(f"error: a card lacks what the rule reads: {exc}", file=sys.stderr)
        return 2
    rows = {"shipped": shipped, "student": student}
    if args.folds_dir and not chain_complete(args.folds_dir, args.student):
        print(f"error: the ensemble's test figures wait for the whole chain: every fold in {args.folds_dir} "
              f"and the student's card (the test split is scored once, after the student)", file=sys.stderr)
        return 2
    if args.folds_dir:
        rows["ensemble (reference)"] = ensemble_test_figures(args.folds_dir, args.shipped / "split.csv")
    print(markdown(rows))
    if args.folds_dir:
        kept = {n: (student[n] - shipped[n]) / (rows["ensemble (reference)"][n] - shipped[n])
                for n in ("balanced_accuracy", "malignant_auc", "coverage")
                if abs(rows["ensemble (reference)"][n] - shipped[n]) > 1e-9}
        print("share of the ensemble's gain over the shipped model the student kept: "
              + ", ".join(f"{n} {v:.0%}" for n, v in kept.items()))
    decision = decide(student, shipped, service_misses(student_card.get("ood")))
    print(f"\ndecision: {'ship the student' if decision.ship else 'keep the shipped model'} ({decision.rule}); "
          f"bar lines missed: {', '.join(decision.misses) or 'none'}; "
          f"service bars missed: {', '.join(decision.service_misses) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
