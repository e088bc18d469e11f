"""A second lever on the chain's folds (training/lever.py): paired out of fold, kept only on an interval above zero."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from training.lever import paired, verdict

K = len(CLASS_CODES)


def folds_run(root: Path, noise: float, folds_done: int, n_folds: int = 3, shuffle: bool = False) -> Path:
    """A training.folds-shaped folder: 40 images a class, two photos a lesion, logits toward the truth plus noise."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(K), 40)
    fold = (np.arange(len(labels)) // 2) % n_folds
    if shuffle:
        fold = np.roll(fold, 2)
    root.mkdir(parents=True)
    pd.DataFrame({"image_id": [f"img{i}" for i in range(len(labels))], "lesion_id": [f"L{i // 2}" for i in range(len(labels))],
                  "dx": [CLASS_CODES[c] for c in labels], "fold": fold}).to_csv(root / "folds.csv", index=False)
    for k in range(folds_done):
        logits = (2.0 * np.eye(K)[labels] + noise * rng.standard_normal((len(labels), K))).astype(np.float16)
        (root / f"fold_{k}").mkdir()
        np.savez(root / f"fold_{k}" / "outputs.npz", train=logits, train_mirrored=logits)
    return root


def test_a_lever_that_predicts_better_on_every_fold_is_kept(tmp_path):
    result = paired(folds_run(tmp_path / "base", 2.5, 3), folds_run(tmp_path / "lever", 0.3, 3), resamples=200)
    assert result["folds_done"] == [0, 1, 2] and result["images"] == 40 * K
    assert result["change_95"]["balanced_accuracy"][1] > 0 and result["verdict"] == "keep"
    assert result["pooled"]["lever"]["balanced_accuracy"] > result["pooled"]["baseline"]["balanced_accuracy"]


def test_the_same_models_again_are_dropped_and_a_partial_lever_gets_no_verdict(tmp_path):
    base = folds_run(tmp_path / "base", 1.5, 3)
    same = paired(base, base, resamples=50)
    assert same["change_95"]["balanced_accuracy"] == [0.0, 0.0, 0.0] and same["verdict"] == "drop"
    partial = paired(base, folds_run(tmp_path / "lever", 0.3, 1), resamples=50)
    in_fold_0 = int((pd.read_csv(base / "folds.csv")["fold"] == 0).sum())
    assert partial["folds_done"] == [0] and partial["images"] == in_fold_0 and partial["verdict"] is None


def test_a_lever_on_other_folds_is_not_paired(tmp_path):
    with pytest.raises(ValueError, match="other folds"):
        paired(folds_run(tmp_path / "base", 1.0, 3), folds_run(tmp_path / "lever", 1.0, 3, shuffle=True))


@pytest.mark.parametrize("change, expected", [
    ({"balanced_accuracy": [0.02, 0.005, 0.03], "melanoma_recall": [0.0, -0.05, 0.05], "malignant_auc": [0, -0.01, 0.01]}, "keep"),
    ({"balanced_accuracy": [0.0, -0.01, 0.01], "melanoma_recall": [0.0, -0.05, 0.05], "malignant_auc": [0.01, 0.002, 0.02]}, "keep"),
    ({"balanced_accuracy": [0.03, 0.01, 0.05], "melanoma_recall": [-0.06, -0.1, -0.01], "malignant_auc": [0, -0.01, 0.01]}, "drop"),
    ({"balanced_accuracy": [0.02, -0.001, 0.04], "melanoma_recall": [0.0, -0.05, 0.05], "malignant_auc": [0, -0.01, 0.01]}, "drop"),
])
def test_the_rule_needs_a_gain_above_zero_and_no_melanoma_recall_below(change, expected):
    assert verdict(change) == expected


@pytest.mark.slow
def test_a_levers_fold_is_published_when_done_and_reused_on_another_machine(tmp_path):
    """``training.folds --publish-dir``: a lever's finished fold is copied where it is committed, and a run
    folder that lacks it (a new machine) takes it from there instead of training it again."""
    from tests.test_training import TINY_CLI, make_dataset
    from training.folds import OUTPUTS
    from training.folds import main as folds_main

    data = make_dataset(tmp_path / "ham", lesions_per_class=10)
    published = tmp_path / "published"
    argv = ["--data-dir", str(data), *TINY_CLI, "--head-epochs", "1", "--epochs", "1", "--folds", "2", "--fold", "0",
            "--publish-dir", str(published)]
    assert folds_main([*argv, "--out-dir", str(tmp_path / "first")]) == 0
    assert (published / "fold_0" / OUTPUTS).is_file() and not (published / "fold_1").exists()
    assert (published / "folds.csv").read_text() == (tmp_path / "first" / "folds.csv").read_text()
    assert folds_main([*argv, "--out-dir", str(tmp_path / "second")]) == 0
    log = (tmp_path / "second" / "train.log").read_text()
    assert "folds [1] reused from" in log and "fold 1 of 2: starting" not in log
    with np.load(published / "fold_0" / OUTPUTS) as a, np.load(tmp_path / "second" / "fold_0" / OUTPUTS) as b:
        assert np.array_equal(a["train"], b["train"])
