"""The model chain end to end on a tiny network: folds, teacher, student, int8, each step resumable."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from tests.test_training import TINY_CLI, make_dataset
from training.clock import cpu_kind, cpu_name
from training.folds import OUTPUTS


@pytest.mark.slow
def test_chain_runs_every_step_publishes_each_fold_and_resumes_a_cut_fold(tmp_path):
    from training.chain import main

    data = make_dataset(tmp_path / "ham", lesions_per_class=10)
    chain, published = tmp_path / "chain", tmp_path / "published"
    argv = ["--data-dir", str(data), "--out-dir", str(chain), *TINY_CLI, "--head-epochs", "1", "--epochs", "1",
            "--folds", "2", "--publish-dir", str(published)]
    assert main(argv) == 0

    folds, split = pd.read_csv(chain / "folds.csv"), pd.read_csv(chain / "split.csv")
    assert set(folds["image_id"]) == set(split.loc[split["split"] == "train", "image_id"])
    assert folds.groupby("lesion_id")["fold"].nunique().max() == 1
    for k in range(2):
        outputs = np.load(published / f"fold_{k}" / OUTPUTS)
        assert outputs["train"].shape == (len(folds), len(CLASS_CODES))
        assert outputs["test"].shape == ((split["split"] == "test").sum(), len(CLASS_CODES))
        assert not np.allclose(outputs["train"], outputs["train_mirrored"])
        assert json.loads((published / f"fold_{k}" / "figures.json").read_text())["n"] == (folds["fold"] == k).sum()
    with np.load(chain / "teacher.npz") as teacher:
        own = teacher["members"][folds["fold"].to_numpy(), np.arange(len(folds))]
        assert np.array_equal(teacher["oof"], own)  # out of fold: each image from the member that never saw it
    card = json.loads((chain / "student" / "model_card.json").read_text())
    assert card["training"]["config"]["distill_teacher"] == str(chain / "teacher.npz")
    assert card["int8"]["meets_bar"] in (True, False)
    record = json.loads((chain / "chain.json").read_text())
    assert set(record["minutes"]) == {"folds", "teacher", "context", "student", "quantize"} and record["cpu"]
    assert (published / "cpu.txt").read_text().splitlines() == [cpu_kind(), cpu_name()]  # kind and machine, committed
    assert record["minutes"]["student"] == round(card["training"]["durations_s"]["total"] / 60, 1)
    choice = json.loads((chain / "context_folds.json").read_text())["choice"]
    assert json.loads((published / "context_folds.json").read_text())["choice"] == choice  # kept beside the folds
    assert json.loads((published / "folds.json").read_text()) == json.loads((chain / "folds.json").read_text())
    assert {k: card["training"]["config"][k] for k in ("patient_context", "context_sites")} == {
        k: choice[k] for k in ("patient_context", "context_sites")}

    # Rerun after a fold was cut off: only that fold trains again, and from where it stopped.
    student_at = (chain / "student" / "ham10000_mobilenetv2.h5").stat().st_mtime_ns
    fold_0_at = (chain / "fold_0" / OUTPUTS).stat().st_mtime_ns
    first_process = json.loads((chain / "fold_1" / "clock.json").read_text())
    (chain / "fold_1" / OUTPUTS).unlink()
    shutil.rmtree(published / "fold_1")  # a fold cut off was never published
    assert main(argv) == 0
    assert (chain / "fold_0" / OUTPUTS).stat().st_mtime_ns == fold_0_at
    assert (chain / "student" / "ham10000_mobilenetv2.h5").stat().st_mtime_ns == student_at
    log = (chain / "train.log").read_text()
    assert "fold 2 of 2: resuming" in log and "fold 1 of 2: resuming" not in log
    both = json.loads((chain / "fold_1" / "clock.json").read_text())  # the fold's time sums both processes'
    assert both["processes"] == 2 and both["seconds"] > first_process["seconds"] > 0
    assert json.loads((chain / "fold_1" / "figures.json").read_text())["processes"] == 2
    fold_minutes = [json.loads((chain / f"fold_{k}" / "figures.json").read_text())["minutes"] for k in range(2)]
    assert json.loads((chain / "chain.json").read_text())["minutes"]["folds"] == round(sum(fold_minutes), 1)

    # The run folder lost (another machine): the committed folds are reused, not trained again.
    shutil.rmtree(chain / "fold_0")
    assert main(argv) == 0
    assert np.array_equal(np.load(chain / "fold_0" / OUTPUTS)["train"], np.load(published / "fold_0" / OUTPUTS)["train"])
    log = (chain / "train.log").read_text()
    assert "folds [1] reused from" in log and "fold 1 of 2: starting" not in log.split("folds [1] reused from")[1]
