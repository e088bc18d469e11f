"""The trainer: lesion-grouped split, resume, weight averaging, a cut backbone, and smoke runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from server.lesions import CLASS_CODES
from tests.fixture_model import TINY_BLOCKS
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


# The trainer's whole pipeline on MobileNetV2's first blocks runs in a third of the time.
TINY_CLI = ["--smoke", "--weights", "none", "--input-size", "32", "--backbone-blocks", str(TINY_BLOCKS)]


def tiny_model():
    """The trainer's network, cut to ``TINY_BLOCKS`` blocks, at 32 px, for tests of its mechanisms."""
    from training.model import build_model

    return build_model(len(CLASS_CODES), 32, 0.35, None, 8, 0.0, seed=1, blocks=TINY_BLOCKS)


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


@pytest.mark.slow
def test_cli_smoke_run_exports_a_model_the_service_serves(dataset, tmp_path):
    from server import create_app
    from training.train import main

    out = tmp_path / "run"
    rc = main(["--data-dir", str(dataset), "--out-dir", str(out), *TINY_CLI, "--head-epochs", "3", "--epochs", "1"])
    assert rc == 0
    for name in ("ham10000_mobilenetv2.h5", "model_card.json", "metrics.json", "report.md", "split.csv",
                 "history.csv", "confusion_matrix.png", "roc.png", "train.log"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"] == list(CLASS_CODES)
    assert card["licence"]["name"].startswith("CC BY-NC")
    assert {"balanced_accuracy", "accuracy", "per_class", "malignant"} <= set(card["metrics"]["test"])
    assert card["data"]["split_by"] == "lesion_id"
    # the calibration step fitted the differential on validation and measured it on test
    assert card["differential"]["coverage"] == 0.9 and set(card["differential"]["min_probability"]) == set(CLASS_CODES)
    assert {"val", "test"} == set(card["differential"]["figures"])
    assert f"its first {TINY_BLOCKS} of 17 blocks" in card["architecture"]  # the card says the network was cut
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
    assert res.json["differential_coverage"] == 0.9 and res.json["uncertain"] is (len(res.json["differential"]) > 1)


@pytest.mark.shared_data
def test_shared_ham10000_split_is_grouped(shared_data_dir):
    df = D.load_metadata(shared_data_dir)
    assert len(df) == 10015
    split = D.split_by_lesion(df, seed=42)
    D.check_split(df, split)
    shares = split.value_counts(normalize=True)
    assert 0.12 < shares["test"] < 0.17 and 0.12 < shares["val"] < 0.17


@pytest.mark.slow
def test_a_cut_off_run_resumes_from_its_last_epoch(dataset, tmp_path):
    from training.train import main

    out = tmp_path / "run"
    common = ["--data-dir", str(dataset), "--out-dir", str(out), *TINY_CLI, "--head-epochs", "1", "--no-test"]
    assert main(common + ["--epochs", "2"]) == 0  # stands for a run cut off after 2 of 3 epochs
    backup = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert backup["epoch"] == 2  # epochs finished
    head = (out / "head.weights.h5").stat().st_mtime
    first = json.loads((out / "clock.json").read_text())
    recipe = json.loads((out / "recipe.json").read_text())
    (out / "recipe.json").write_text(json.dumps({**recipe, "epochs": 3}))  # a 3-epoch run, cut after 2
    assert main(common + ["--epochs", "3", "--resume", "--dropout", "0.5"]) == 2  # another recipe: refused
    assert main(common + ["--epochs", "3", "--resume"]) == 0
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]  # epochs 1-2 kept, only epoch 3 trained again
    assert "learning_rate" in history and "val_balanced_accuracy" in history
    assert (out / "head.weights.h5").stat().st_mtime == head  # phase 1 was not redone
    assert "resuming after epoch 2" in (out / "train.log").read_text()
    # the card's total is the whole run's: the cut process's minutes and the resuming one's
    clock, card = json.loads((out / "clock.json").read_text()), json.loads((out / "model_card.json").read_text())
    assert clock["processes"] == 2 and card["training"]["durations_s"]["total"] > first["seconds"] > 0
    assert clock["seconds"] == pytest.approx(card["training"]["durations_s"]["total"], abs=2.0)


def fine_tune_tiny(model, out_dir, resume: bool = False, ema_momentum: float = 0.0, **options) -> dict:
    """Four fine-tuning epochs on 24 random 32-px images: enough for the weights to move, in seconds."""
    import tensorflow as tf

    from training.losses import make_loss
    from training.phases import fine_tune

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, 32, 32, 3)).astype(np.float32)
    labels = np.arange(24) % len(CLASS_CODES)
    onehot = np.eye(len(CLASS_CODES), dtype=np.float32)[labels]

    def stream(first_draw):
        return tf.data.Dataset.from_tensor_slices((images, onehot, np.ones(24, np.float32))).batch(8).repeat()

    return fine_tune(model, stream, 24, images, labels, batch_size=8, epochs=4, lr=1e-2, warmup_epochs=0.0,
                     weight_decay=0.0, ema_momentum=ema_momentum, loss=make_loss(), out_dir=out_dir, resume=resume,
                     **options)


@pytest.mark.slow
def test_weight_ema_keeps_the_average_not_the_last_weights(tmp_path):
    """With ``--ema-momentum`` the kept weights are the running average. With a momentum
    near 1 that average hardly leaves where it was set (Keras sets it to the weights after
    the first step), while the raw weights travel on: so what is kept must have moved far
    less than the raw weights. Without the swap the two would be equal."""
    def drift(ema_momentum: float) -> float:
        model = tiny_model()
        start = [w.copy() for w in model.get_layer("head_out").get_weights()]
        out = tmp_path / f"ema{ema_momentum}"
        out.mkdir()
        fine_tune_tiny(model, out, ema_momentum=ema_momentum)
        end = model.get_layer("head_out").get_weights()
        return float(sum(np.abs(e - s).sum() for e, s in zip(end, start)))

    raw, averaged = drift(0.0), drift(0.9999)
    assert raw > 0
    assert averaged < 0.5 * raw


@pytest.mark.slow
def test_cli_exports_the_imagenet_branch_and_fits_its_check(dataset, tmp_path):
    """With ImageNet's classifier (from ../shared), the run's one .h5 carries it and the card's check reads it."""
    from tests.conftest import SHARED
    from training.train import main

    weights, labels = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_with_top.h5", SHARED / "weights" / "imagenet_labels.txt"
    if not (weights.is_file() and labels.is_file()):
        pytest.skip(f"ImageNet classifier not found under {SHARED / 'weights'}")
    out = tmp_path / "run"
    assert main(["--data-dir", str(dataset), "--out-dir", str(out), *TINY_CLI, "--head-epochs", "1", "--epochs", "1",
                 "--imagenet-weights", str(weights),
                 "--imagenet-labels", str(labels)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["ood"]["imagenet_threshold"] > 0 and "everyday_true_flag_rate" in card["ood"]
    with np.load(out / card["ood"]["file"]) as stats:
        assert len(stats["imagenet_labels"]) == 1000 and stats["imagenet_labels"][281].startswith("tabby")
    from server.model.predictor import Predictor

    predictor = Predictor.from_path(out / "ham10000_mobilenetv2.h5", runtime="tensorflow")
    assert predictor.ood.check("imagenet") is not None
    _, _, features, probs = predictor.forward_all(np.zeros((1, 32, 32, 3), np.float32))
    assert features.shape == (1, 1280) and probs.shape == (1, 1000)


@pytest.mark.slow
def test_weight_averaging_keeps_the_mean_of_the_last_epochs_and_a_resume_rebuilds_it(tmp_path):
    """``--keep swa``: the kept weights are the mean of the last epochs' snapshots, the schedule
    holds those epochs at the SWA rate, and a run resumed after its last epoch keeps the same mean."""
    from training.phases import SWA_DIR, cosine_with_warmup

    def run(resume: bool):
        model = tiny_model()
        record = fine_tune_tiny(model, tmp_path, resume=resume, keep="swa", swa_epochs=2, swa_lr=1e-3)
        return model, record

    model, record = run(resume=False)
    snapshots = sorted((tmp_path / SWA_DIR).glob("*.weights.h5"))
    assert [p.name for p in snapshots] == ["epoch_003.weights.h5", "epoch_004.weights.h5"]
    assert record["swa_epochs"] == [3, 4] and "val_balanced_accuracy_swa" in record
    kept = model.get_layer("head_out").get_weights()
    each = []
    for path in snapshots:
        model.load_weights(path)
        each.append(model.get_layer("head_out").get_weights())
    assert not np.allclose(each[0][0], each[1][0]), "the SWA epochs must still move"
    for i, w in enumerate(kept):
        np.testing.assert_allclose(w, (each[0][i] + each[1][i]) / 2, rtol=1e-5, atol=1e-6)
    resumed, _ = run(resume=True)
    for a, b in zip(resumed.get_layer("head_out").get_weights(), kept):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # warm-up, cosine down to the SWA rate, then flat at it for the averaged epochs
    schedule = cosine_with_warmup(1e-2, steps_per_epoch=3, epochs=4, warmup_epochs=0.0, flat_epochs=2, floor_lr=1e-3)
    assert float(schedule(6)) == pytest.approx(1e-3) and float(schedule(11)) == pytest.approx(1e-3)
    assert float(schedule(1)) > 1e-3


def test_a_cut_backbone_keeps_its_first_blocks_and_every_kind_of_layer_and_none_keeps_them_all():
    """``--backbone-blocks`` is only for smoke runs and tests; the default must stay the whole network."""
    import keras

    from server.model.explain import feature_layer_names
    from training.model import MOBILENETV2_BLOCKS, build_model

    def gap_input(model) -> str:  # the feature map Grad-CAM and the non-skin check read
        return feature_layer_names(model)[0]

    cut = tiny_model()
    assert gap_input(cut) == "block_2_add" and not any(layer.name.startswith("block_3") for layer in cut.layers)
    kinds = {type(layer) for layer in cut.layers}
    assert {keras.layers.DepthwiseConv2D, keras.layers.Conv2D, keras.layers.Add, keras.layers.ReLU} <= kinds
    assert any(getattr(layer, "strides", None) == (2, 2) for layer in cut.layers if isinstance(layer, keras.layers.DepthwiseConv2D))
    for blocks in (0, MOBILENETV2_BLOCKS):
        whole = build_model(len(CLASS_CODES), 32, 0.35, None, 8, 0.0, blocks=blocks)
        assert gap_input(whole) == "out_relu" and len(whole.layers) > 3 * len(cut.layers)
    assert gap_input(build_model(len(CLASS_CODES), 32, 0.35, None, 8, 0.0, blocks=1)) == "expanded_conv_project_BN"
