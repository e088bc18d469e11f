"""Shipping a run copies its model files and leaves no earlier model's file beside them."""

from __future__ import annotations

import hashlib
import json

import pytest

from training.ship import ShipError, main, ship


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_run(folder, int8: bool = True, context: bool = False, checkpoints: bool = True):
    """A finished run's folder as the trainer leaves it: the model, its card and records, and checkpoints
    (``checkpoints=False``: a model folder as shipped)."""
    folder.mkdir(parents=True)
    if checkpoints:
        (folder / "backup").mkdir()
        (folder / "backup" / "state.h5").write_bytes(b"optimizer")
        for name in ("head.weights.h5", "best.weights.h5", "kept.weights.h5"):
            (folder / name).write_bytes(b"checkpoint")
    model = b"new model"
    (folder / "ham10000_mobilenetv2.h5").write_bytes(model)
    card = {"model_file": "ham10000_mobilenetv2.h5", "sha256": digest(model), "int8": None}
    if int8:
        card["int8"] = {}
        for part in ("classifier", "branch", "reference"):
            name, data = f"ham10000_mobilenetv2.int8-{part}.onnx", f"int8 {part}".encode()
            (folder / name).write_bytes(data)
            card["int8"][part] = {"file": name, "sha256": digest(data)}
    if context:
        (folder / "phase3_fusion_head.json").write_text("{}")
    for name in ("metrics.json", "report.md", "split.csv", "ood_stats.npz", "train.log"):
        (folder / name).write_text(name)
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_shipping_copies_the_model_and_removes_the_last_models_other_files(tmp_path):
    target = make_run(tmp_path / "saved_models", context=True, checkpoints=False)  # the model in service reads patient context
    (target / "ablation.md").write_text("every trial")
    (target / "folds").mkdir()
    (target / "folds" / "folds.csv").write_text("kept")
    run = make_run(tmp_path / "run", int8=False)  # the new one reads none and has no int8 graphs yet

    assert main([str(run), "--to", str(target)]) == 0
    assert (target / "ham10000_mobilenetv2.h5").read_bytes() == b"new model"
    assert not (target / "phase3_fusion_head.json").exists(), "a head the new model does not have would be stale"
    assert not list(target.glob("*.int8-*")), "int8 graphs of the last model must not sit beside the new one"
    assert not list(target.glob("*.weights.h5")) and not (target / "backup").exists()
    assert (target / "ablation.md").read_text() == "every trial" and (target / "folds" / "folds.csv").is_file()
    assert sorted(p.name for p in target.iterdir() if p.is_file()) == sorted(
        [p.name for p in run.iterdir() if p.is_file() and not p.name.endswith(".weights.h5")] + ["ablation.md"])


def test_a_dry_run_changes_nothing(tmp_path, capsys):
    target = make_run(tmp_path / "saved_models", context=True, checkpoints=False)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    assert main([str(make_run(tmp_path / "run")), "--to", str(target), "--dry-run"]) == 0
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    assert "would remove 1 earlier model files: phase3_fusion_head.json" in capsys.readouterr().out


@pytest.mark.parametrize("damage, why", [
    (lambda run: (run / "model_card.json").unlink(), "has no model_card.json"),
    (lambda run: (run / "ham10000_mobilenetv2.h5").write_bytes(b"another model"), "is not the model"),
    (lambda run: (run / "ham10000_mobilenetv2.int8-branch.onnx").write_bytes(b"stale"), "is not the int8 graph"),
])
def test_a_run_that_is_not_what_its_card_says_is_refused_untouched(tmp_path, damage, why):
    target = make_run(tmp_path / "saved_models", checkpoints=False)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    run = make_run(tmp_path / "run")
    damage(run)
    with pytest.raises(ShipError, match=why):
        ship(run, target)
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
