"""The trainer: lesion-grouped split, focal loss, and the CLI end to end on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from server.lesions import CLASS_CODES
from training import data as D

CLASS_COLOURS = {
    "akiec": (200, 120, 90), "bcc": (230, 180, 190), "bkl": (150, 110, 60), "df": (170, 140, 120),
    "mel": (40, 30, 35), "nv": (120, 80, 50), "vasc": (190, 30, 50),
}


def make_dataset(root, lesions_per_class=8, photos_per_lesion=2, size=(60, 45), seed=0):
    """A HAM10000-layout folder where each class has its own colour and some lesions repeat."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for code in CLASS_CODES:
        for lesion in range(lesions_per_class):
            lesion_id = f"HAM_{code}_{lesion:03d}"
            for photo in range(photos_per_lesion if lesion % 2 == 0 else 1):
                image_id = f"SYN_{code}_{lesion:03d}_{photo}"
                base = np.array(CLASS_COLOURS[code], float)
                pixels = np.clip(base + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=90)
                rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": code, "dx_type": "synthetic",
                             "age": 50, "sex": "unknown", "localization": "back"})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ham"))


def test_split_has_no_lesion_leak_and_every_class_everywhere(dataset):
    df = D.load_metadata(dataset)
    split = D.split_by_lesion(df, seed=3)
    D.check_split(df, split)  # raises on a leak or a missing class
    per_lesion = df.assign(split=split).groupby("lesion_id")["split"].nunique()
    assert per_lesion.max() == 1
    assert set(split) == {"train", "val", "test"}
    for name in D.SPLITS:
        assert set(df.loc[split == name, "dx"]) == set(CLASS_CODES)


def test_same_seed_same_split_other_seed_other_split(dataset):
    df = D.load_metadata(dataset)
    a, b, c = D.split_by_lesion(df, seed=1), D.split_by_lesion(df, seed=1), D.split_by_lesion(df, seed=2)
    assert (a == b).all()
    assert not (a == c).all()


def test_check_split_catches_a_leaked_lesion(dataset):
    df = D.load_metadata(dataset)
    split = D.split_by_lesion(df, seed=1)
    repeated = df.index[df["lesion_id"].duplicated(keep=False)][:2]
    split[repeated[0]], split[repeated[1]] = "train", "test"
    with pytest.raises(AssertionError, match="more than one split"):
        D.check_split(df, split)


def test_missing_image_is_an_error_not_silently_dropped(tmp_path):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    next((root / "images").iterdir()).unlink()
    with pytest.raises(D.DatasetError, match="missing"):
        D.load_metadata(root)


def test_class_weights_balance_and_oversampling_equalises():
    labels = np.array([0] * 90 + [1] * 10)
    w = D.class_weights(labels, 2)
    assert w[0] * 90 == pytest.approx(w[1] * 10)
    idx = D.epoch_indices(labels, np.random.default_rng(0), oversample=True)
    counts = np.bincount(labels[idx])
    assert len(idx) == len(labels) and abs(counts[0] - counts[1]) <= 1


def test_focal_loss_matches_hand_computed_value():
    from training.losses import make_loss

    y_true = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    y_pred = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], np.float32)
    # FL = -(1 - p_t)^gamma * log(p_t), averaged over the batch (alpha = 1, gamma = 2)
    expected = np.mean([-(1 - 0.7) ** 2 * np.log(0.7), -(1 - 0.5) ** 2 * np.log(0.5)])
    got = float(make_loss("focal", gamma=2.0)(y_true, y_pred))
    assert got == pytest.approx(expected, rel=1e-4)
    ce = float(make_loss("crossentropy")(y_true, y_pred))
    assert ce == pytest.approx(np.mean([-np.log(0.7), -np.log(0.5)]), rel=1e-4)


@pytest.mark.slow
def test_cli_smoke_run_exports_a_model_the_service_serves(dataset, tmp_path):
    from server import create_app
    from training.train import main

    out = tmp_path / "run"
    rc = main(["--data-dir", str(dataset), "--out-dir", str(out), "--smoke", "--weights", "none",
               "--input-size", "32", "--head-epochs", "3", "--epochs", "1"])
    assert rc == 0
    for name in ("ham10000_mobilenetv2.h5", "model_card.json", "metrics.json", "report.md", "split.csv",
                 "history.csv", "confusion_matrix.png", "roc.png", "train.log"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"] == list(CLASS_CODES)
    assert card["licence"]["name"].startswith("CC BY-NC")
    assert {"balanced_accuracy", "accuracy", "per_class", "malignant"} <= set(card["metrics"]["test"])
    assert card["data"]["split_by"] == "lesion_id"
    split = pd.read_csv(out / "split.csv")
    assert split.groupby("lesion_id")["split"].nunique().max() == 1

    app = create_app({"MODEL_PATH": str(out / "ham10000_mobilenetv2.h5"), "SECRET_KEY": "x", "TESTING": True})
    held_out = split.loc[split["split"] == "test", "image_id"].iloc[0]  # a photo like those it learned from
    photo = (dataset / "images" / f"{held_out}.jpg").read_bytes()
    res = app.test_client().post("/predict", data=photo, content_type="image/jpeg")
    assert res.status_code == 200, res.json
    probs = [c["probability"] for c in res.json["probabilities"]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert res.json["model"]["sha256"] == card["sha256"]


def test_cli_reports_a_bad_data_dir_in_one_line(tmp_path, capsys):
    from training.train import main

    assert main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--smoke", "--weights", "none"]) == 2
    assert "no HAM10000_metadata.csv" in capsys.readouterr().err


@pytest.mark.shared_data
def test_shared_ham10000_split_is_grouped(shared_data_dir):
    df = D.load_metadata(shared_data_dir)
    assert len(df) == 10015
    split = D.split_by_lesion(df, seed=42)
    D.check_split(df, split)
    shares = split.value_counts(normalize=True)
    assert 0.12 < shares["test"] < 0.17 and 0.12 < shares["val"] < 0.17


@pytest.mark.slow
def test_phase2_with_weight_ema_keeps_the_average_not_the_last_weights(tmp_path):
    """With ``--ema-momentum`` the kept weights are the running average. With a momentum
    near 1 that average hardly leaves its start, while the raw weights travel: so what is
    kept must stay close to where fine-tuning began."""
    from training.model import build_model, split_model
    from training.train import TrainConfig, fine_tune

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, 32, 32, 3)).astype(np.float32)
    labels = np.arange(24) % len(CLASS_CODES)

    def drift(ema_momentum: float) -> float:
        cfg = TrainConfig(data_dir="", cut="block_9_add", batch_size=8, epochs=2, lr=1e-2, patience=5,
                          ema_momentum=ema_momentum, label_smoothing=0.0)
        model = build_model(len(CLASS_CODES), 32, 0.35, None, 8, 0.0, seed=1)
        bottom, top = split_model(model, cfg.cut)
        acts = bottom(images, training=False).numpy()[None]
        start = [w.copy() for w in top.get_layer("head_out").get_weights()]
        out = tmp_path / f"ema{ema_momentum}"
        out.mkdir()
        fine_tune(model, top, acts, labels, acts, labels, cfg, out)
        end = top.get_layer("head_out").get_weights()
        return float(sum(np.abs(e - s).sum() for e, s in zip(end, start)))

    raw, averaged = drift(0.0), drift(0.9999)
    assert raw > 0
    assert averaged < 0.1 * raw
