"""The training commands' command line: a user's mistake is refused in one line, before any data loads."""

from __future__ import annotations

import pytest

from tests.test_training import TINY_CLI


def test_cli_reports_a_bad_data_dir_in_one_line(tmp_path, capsys):
    from training.train import main

    assert main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--smoke", "--weights", "none"]) == 2
    assert "no HAM10000_metadata.csv" in capsys.readouterr().err


def test_bad_choice_fails_before_any_data_loads_and_help_lists_the_choices(tmp_path, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as exc:  # the data dir does not even exist: argparse refuses first
        main(["--data-dir", str(tmp_path / "absent"), "--imbalance", "foo"])
    assert exc.value.code == 2
    assert "invalid choice: 'foo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "{class_weight,sqrt,sampling,none}" in help_text and "{crossentropy,focal}" in help_text
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--logit-adjustment", "maybe"])
    assert "expected 0 or 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["training.quantize", "training.int8_bar", "training.calibrate", "training.train",
                                     "training.folds", "training.chain"])
def test_each_training_command_names_a_missing_folder_in_one_line_not_a_traceback(tmp_path, capsys, command):
    import importlib

    main = importlib.import_module(command).main
    argv = (["--run-dir", str(tmp_path / "absent"), "--data-dir", str(tmp_path / "absent")]
            if command in ("training.quantize", "training.int8_bar", "training.calibrate")
            else ["--data-dir", str(tmp_path / "absent"), "--out-dir", str(tmp_path / "run"), *TINY_CLI])
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and str(tmp_path / "absent") in error[0]


@pytest.mark.parametrize("option, value, says", [("--epochs", "-1", "--epochs must be at least 0 (got -1)"),
                                                 ("--dropout", "1", "--dropout must be in [0, 1) (got 1.0)"),
                                                 ("--lr", "0", "--lr must be above 0 (got 0.0)"),
                                                 ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
                                                 ("--val-fraction", "0.6", "--val-fraction must be in (0, 0.5)"),
                                                 ("--input-size", "16", "--input-size must be at least 32")])
def test_a_number_outside_its_range_is_refused_before_any_data_loads(tmp_path, capsys, option, value, says):
    from training.train import main

    with pytest.raises(SystemExit) as exc:  # the data dir does not exist: the range is checked first
        main(["--data-dir", str(tmp_path / "absent"), option, value])
    assert exc.value.code == 2 and says in capsys.readouterr().err
