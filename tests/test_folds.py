"""The fold chain's instrument: lesion-grouped folds over the training split, each fold's logits, resumable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from server.lesions import CLASS_CODES
from training.folds import assign_folds, held_out_figures, softmax


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


def test_the_fold_commands_help_lists_their_own_options_with_the_recipes(capsys):
    from training import chain, folds

    for main, own in ((folds.main, ("--fold", "--folds", "--publish-dir")), (chain.main, ("--folds", "--publish-dir"))):
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        help_text = capsys.readouterr().out
        assert all(flag in help_text for flag in own) and "--input-size" in help_text
    assert folds.main(["--data-dir", "absent", "--folds", "1"]) == 2
    assert "--folds must be at least 2" in capsys.readouterr().err


def test_a_run_folder_resumed_with_another_recipe_is_refused_naming_each_setting(tmp_path):
    from training.config import RecipeChanged, TrainConfig, settle_recipe

    started = TrainConfig(data_dir="/a", out_dir=str(tmp_path), input_size=224, store_size=256)
    settle_recipe(started, tmp_path, resume=False)
    settle_recipe(TrainConfig(data_dir="/elsewhere", out_dir=str(tmp_path), input_size=224, store_size=256,
                              weights="imagenet", version="2027.01.01"), tmp_path, resume=True)  # paths, dates: same recipe
    with pytest.raises(RecipeChanged, match=r"--input-size 224 \(this command: 192\), --store-size 256 \(this command: 224\)"):
        settle_recipe(TrainConfig(data_dir="/a", out_dir=str(tmp_path)), tmp_path, resume=True)
    settle_recipe(TrainConfig(data_dir="/a", out_dir=str(tmp_path)), tmp_path, resume=False)  # a fresh run starts over
    settle_recipe(TrainConfig(data_dir="/a", out_dir=str(tmp_path)), tmp_path, resume=True)


def test_a_run_clock_adds_each_process_time_to_what_earlier_ones_recorded(tmp_path):
    from training.clock import RunClock

    first = RunClock(tmp_path)
    first.started -= 90.0  # a process that trained for a minute and a half, then was cut
    first.save()
    second = RunClock(tmp_path)
    assert second.processes == 2 and second.before == pytest.approx(90.0, abs=0.2)
    assert 1.5 <= second.minutes() < 1.6
    second.save()
    assert RunClock(tmp_path).processes == 3


INTEL = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
AMD = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n"


def test_a_timing_names_the_cpus_kind_and_its_machine_since_one_kind_runs_at_several_speeds():
    from training.clock import cpu_kind, cpu_name, cpu_summary

    assert (cpu_kind(INTEL), cpu_name(INTEL)) == ("avx512_vnni", "Intel(R) Xeon(R) Platinum 8488C")
    assert (cpu_kind(AMD), cpu_name(AMD)) == ("avx2", "AMD EPYC")
    assert cpu_summary(AMD).endswith("-core AMD EPYC (avx2)")
    assert cpu_kind("flags : fpu sse2\n") == "unknown" and cpu_name("flags : fpu\n")  # never empty
