"""Issue #33's decision rule (training/decide.py): which student ships, and the ensemble's reference row."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from training.decide import BAR, card_figures, chain_complete, decide, ensemble_test_figures, markdown, service_misses
from training.nonskin_figures import NONSKIN_BAR

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"balanced_accuracy": 0.690, "melanoma_recall": 0.673, "malignant_auc": 0.900, "flag_sensitivity": 0.885,
           "flag_specificity": 0.701, "coverage": 0.516, "accuracy_answered": 0.904}
MEETS = {"balanced_accuracy": 0.74, "melanoma_recall": 0.73, "malignant_auc": 0.92, "flag_sensitivity": 0.89,
         "flag_specificity": 0.75, "coverage": 0.62, "accuracy_answered": 0.91,
         "context_balanced_accuracy": 0.76, "context_melanoma_recall": 0.73}


def test_a_student_that_meets_every_line_of_the_bar_ships():
    assert decide(MEETS, SHIPPED).ship and decide(MEETS, SHIPPED).misses == ()


@pytest.mark.parametrize("name", [name for name, _ in BAR])
def test_missing_any_one_line_needs_the_fallback(name):
    lowest = dict(BAR)[name]
    missed = {**MEETS, name: lowest - 0.001}
    assert decide(missed, SHIPPED).misses == (name,)
    # Balanced accuracy within 0.01 of the shipped model's, better AUC and coverage: ships anyway.
    close = {**missed, "balanced_accuracy": min(missed["balanced_accuracy"], SHIPPED["balanced_accuracy"] - 0.009)}
    assert decide(close, SHIPPED).ship
    # Within 0.01 but no better coverage: the shipped model stays.
    assert not decide({**close, "coverage": SHIPPED["coverage"]}, SHIPPED).ship


def test_context_that_lowers_melanoma_recall_is_a_miss_and_a_student_further_behind_is_kept():
    lowered = {**MEETS, "context_melanoma_recall": MEETS["melanoma_recall"] - 0.01}
    assert decide(lowered, SHIPPED).misses == ("context_melanoma_recall",)
    behind = {**SHIPPED, "balanced_accuracy": SHIPPED["balanced_accuracy"] - 0.011, "malignant_auc": 0.95, "coverage": 0.8}
    assert not decide(behind, SHIPPED).ship


KEEPS_THE_SERVICE = {"everyday_true_flag_rate": 0.985, "test_false_flag_rate": 0.0, "shifted_test_false_flag_rate": 0.004}


def test_a_student_the_rule_would_ship_stays_out_when_it_misses_a_standing_bar():
    assert service_misses(KEEPS_THE_SERVICE) == ()
    refuses_a_lesion = service_misses({**KEEPS_THE_SERVICE, "test_false_flag_rate": 1 / 1431})
    assert refuses_a_lesion == ("test refused 0.07% (<= 0.0%)",)
    decision = decide(MEETS, SHIPPED, refuses_a_lesion)
    assert not decision.ship and decision.service_misses == refuses_a_lesion and "meets the bar" in decision.rule
    assert decide(MEETS, SHIPPED, service_misses(KEEPS_THE_SERVICE)).ship


@pytest.mark.parametrize("key, value", [("everyday_true_flag_rate", 0.979), ("shifted_test_false_flag_rate", 0.0058),
                                        ("test_false_flag_rate", None)])
def test_each_line_of_the_nonskin_bar_is_read_from_the_card(key, value):
    ood = {k: v for k, v in KEEPS_THE_SERVICE.items() if k != key or value is not None}
    if value is not None:
        ood[key] = value
    (missed,) = service_misses(ood)
    assert missed.startswith(key.rsplit("_", 3)[0] + " refused")
    assert len(service_misses(None)) == len(NONSKIN_BAR)


def test_the_shipped_model_keeps_the_standing_bars_it_is_held_to():
    card = json.loads((ROOT / "saved_models" / "model_card.json").read_text())
    assert service_misses(card["ood"]) == ()


def test_the_shipped_card_gives_its_own_recorded_figures():
    card = json.loads((ROOT / "saved_models" / "model_card.json").read_text())
    figures = card_figures(card)
    assert figures["balanced_accuracy"] == card["metrics"]["test"]["balanced_accuracy"]
    assert figures["coverage"] == card["uncertain"]["test"]["coverage"]
    served = ((card.get("patient_context") or {}).get("served") or {}).get("test") or {}
    if "with_context" in served:
        assert figures["context_melanoma_recall"] == served["with_context"]["melanoma_recall"]
    else:  # a photo-only model: no context line for the bar to hold it to
        assert not any(name.startswith("context_") for name in figures)
    assert f"| shipped | {card['metrics']['test']['balanced_accuracy']:.3f} |" in markdown({"shipped": figures})


def fake_chain(tmp_path: Path, n_folds: int, done: int, noise: float) -> tuple[Path, Path]:
    """Folds whose logits point at the true class (plus noise), on a made-up split of every class."""
    rng = np.random.default_rng(0)
    k = len(CLASS_CODES)
    labels = {s: np.tile(np.arange(k), n) for s, n in (("train", 12), ("val", 8), ("test", 8))}
    split = pd.concat([pd.DataFrame({"image_id": [f"{s}_{i}" for i in range(len(y))], "split": s,
                                     "dx": [CLASS_CODES[c] for c in y], "lesion_id": [f"L{s}{i}" for i in range(len(y))]})
                       for s, y in labels.items()])
    split.to_csv(tmp_path / "split.csv", index=False)
    train = split[split["split"] == "train"]
    pd.DataFrame({"image_id": train["image_id"], "dx": train["dx"],
                  "fold": np.arange(len(train)) % n_folds}).to_csv(tmp_path / "folds.csv", index=False)
    for f in range(done):
        outputs = {}
        for s, y in labels.items():
            logits = 4.0 * np.eye(k)[y] + noise * rng.standard_normal((len(y), k))
            outputs[s], outputs[f"{s}_mirrored"] = logits.astype(np.float16), logits.astype(np.float16)
        (tmp_path / f"fold_{f}").mkdir()
        np.savez(tmp_path / f"fold_{f}" / "outputs.npz", **outputs)
    return tmp_path, tmp_path / "split.csv"


def test_the_ensemble_reference_waits_for_every_fold_and_the_student(tmp_path):
    folds_dir, _ = fake_chain(tmp_path, n_folds=3, done=2, noise=0.1)
    student = tmp_path / "student"
    student.mkdir()
    (student / "model_card.json").write_text("{}")
    assert not chain_complete(folds_dir, student)


def test_the_ensemble_of_confident_right_members_scores_perfectly_and_noise_lowers_it(tmp_path):
    (tmp_path / "clean").mkdir()
    folds_dir, split = fake_chain(tmp_path / "clean", n_folds=3, done=3, noise=0.1)
    clean = ensemble_test_figures(folds_dir, split)
    assert clean["balanced_accuracy"] == 1.0 and clean["malignant_auc"] == 1.0 and clean["coverage"] == 1.0
    (tmp_path / "noisy").mkdir()
    folds_dir, split = fake_chain(tmp_path / "noisy", n_folds=3, done=3, noise=4.0)
    noisy = ensemble_test_figures(folds_dir, split)
    assert noisy["balanced_accuracy"] < 1.0 and noisy["malignant_auc"] < 1.0
