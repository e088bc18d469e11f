"""training.compare: paired validation figures of two runs, with lesion-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from training.compare import FIGURES, compare, lesion_resamples, markdown_table


def write_run(folder, labels, probs, lesions):
    folder.mkdir()
    np.savez(folder / "predictions.npz", val_labels=labels, val_probs=probs)
    pd.DataFrame({"image_id": [f"i{i}" for i in range(len(labels))], "lesion_id": lesions,
                  "dx": [CLASS_CODES[y] for y in labels], "split": "val"}).to_csv(folder / "split.csv", index=False)


def noisy_probs(labels, signal, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), len(CLASS_CODES)))
    logits[np.arange(len(labels)), labels] += signal
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


@pytest.fixture()
def runs(tmp_path):
    labels = np.repeat(np.arange(len(CLASS_CODES)), 60)
    lesions = np.arange(len(labels)) // 2  # two photos a lesion
    write_run(tmp_path / "weak", labels, noisy_probs(labels, 0.8, 1), lesions)
    write_run(tmp_path / "strong", labels, noisy_probs(labels, 3.0, 2), lesions)
    return tmp_path


def test_a_better_run_shows_a_positive_difference_whose_interval_excludes_zero(runs):
    result = compare([runs / "weak", runs / "strong"], resamples=60)
    weak, strong = result[str(runs / "weak")], result[str(runs / "strong")]
    assert set(weak["figures"]) == set(FIGURES) and "difference_95" not in weak
    assert strong["figures"]["balanced_accuracy"] > weak["figures"]["balanced_accuracy"] + 0.2
    point, low, high = strong["difference_95"]["balanced_accuracy"]
    assert low <= point <= high and low > 0
    assert "| " + str(runs / "strong") + " |" in markdown_table(result)


def test_runs_on_different_splits_are_not_compared(runs, tmp_path):
    labels = np.repeat(np.arange(len(CLASS_CODES)), 60)
    write_run(tmp_path / "other", labels, noisy_probs(labels, 3.0, 3), np.arange(len(labels)))
    with pytest.raises(SystemExit, match="another split"):
        compare([runs / "weak", tmp_path / "other"], resamples=0)


def test_resamples_keep_the_photos_of_a_lesion_together():
    lesions = np.array(["a", "a", "b", "c", "c", "c"])
    for idx in lesion_resamples(lesions, 20, seed=0):
        drawn = lesions[idx]
        for lesion, size in (("a", 2), ("c", 3)):
            assert (drawn == lesion).sum() % size == 0
