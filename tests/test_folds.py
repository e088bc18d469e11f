"""The fold chain's instrument: lesion-grouped folds over the training split, each fold's logits, resumable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from tests.test_training import TINY_CLI, make_dataset
from training.folds import OUTPUTS, assign_folds, held_out_figures, softmax


def test_every_image_in_one_fold_whole_lesions_and_every_class_in_each():
    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(300), 2)[:500]
    labels = (lesions % len(CLASS_CODES)).astype(int)
    fold_of = assign_folds(labels, lesions, n_folds=5, seed=1)
    assert set(np.unique(fold_of)) == set(range(5))
    assert pd.Series(fold_of).groupby(lesions).nunique().max() == 1
    for k in range(5):
        assert set(labels[fold_of == k]) == set(range(len(CLASS_CODES)))
    assert (assign_folds(labels, lesions, 5, seed=1) == fold_of).all()
    assert not (assign_folds(labels, rng.permutation(lesions), 5, seed=2) == fold_of).all()


def test_held_out_figures_are_those_of_the_softmax_of_the_logits():
    labels = np.array([CLASS_CODES.index(c) for c in ("mel", "mel", "nv", "bcc")])
    logits = np.zeros((4, len(CLASS_CODES)))
    logits[0, CLASS_CODES.index("mel")] = 5  # right
    logits[1, CLASS_CODES.index("nv")] = 5  # a missed melanoma
    logits[2, CLASS_CODES.index("nv")] = 5
    logits[3, CLASS_CODES.index("bcc")] = 5
    figures = held_out_figures(labels, logits)
    assert figures["melanoma_recall"] == 0.5
    assert figures["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)
    assert np.allclose(softmax(logits).sum(1), 1)


@pytest.mark.slow
def test_fold_run_predicts_every_training_image_once_out_of_fold_and_resumes(tmp_path):
    from training.folds import main

    data = make_dataset(tmp_path / "ham", lesions_per_class=10)
    out = tmp_path / "chain"
    argv = ["--data-dir", str(data), "--out-dir", str(out), *TINY_CLI, "--head-epochs", "1", "--epochs", "2",
            "--keep", "swa", "--swa-epochs", "1", "--folds", "2"]
    assert main(argv) == 0
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1]
    assert folds.groupby("lesion_id")["fold"].nunique().max() == 1
    split = pd.read_csv(out / "split.csv")
    assert set(folds["image_id"]) == set(split.loc[split["split"] == "train", "image_id"])
    for k in range(2):
        outputs = np.load(out / f"fold_{k}" / OUTPUTS)
        assert outputs["train"].shape == (len(folds), len(CLASS_CODES))
        assert outputs["val"].shape == ((split["split"] == "val").sum(), len(CLASS_CODES))
        assert not np.allclose(outputs["train"], outputs["train_mirrored"])
        figures = json.loads((out / f"fold_{k}" / "figures.json").read_text())
        assert figures["n"] == (folds["fold"] == k).sum()
    summary = json.loads((out / "folds.json").read_text())
    assert len(summary["folds"]) == 2 and set(summary["balanced_accuracy"]) == {"mean", "sd"}

    # A finished fold is not trained again; a fold cut off after its epochs resumes instead of restarting.
    done_at = (out / "fold_0" / OUTPUTS).stat().st_mtime_ns
    (out / "fold_1" / OUTPUTS).unlink()
    assert main(argv) == 0
    assert (out / "fold_0" / OUTPUTS).stat().st_mtime_ns == done_at
    assert (out / "fold_1" / OUTPUTS).is_file()
    log = (out / "train.log").read_text()
    assert "fold 2 of 2: resuming" in log and "fold 1 of 2: resuming" not in log
