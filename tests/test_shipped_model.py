"""The shipped model: its files agree with each other, and the figures its card quotes are its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from server.decoding import open_upload
from server.imaging import PREPROCESSING_ID, model_input
from server.lesions import CLASS_CODES
from server.model.files import file_sha256

SAVED = Path(__file__).resolve().parents[1] / "saved_models"
MODEL = SAVED / "ham10000_mobilenetv2.h5"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SAVED / "model_card.json").read_text())


def test_the_card_pins_the_shipped_files(card):
    assert card["sha256"] == file_sha256(MODEL)
    assert MODEL.stat().st_size < 20_000_000
    assert card["classes"] == list(CLASS_CODES)
    assert card["preprocessing"] == PREPROCESSING_ID
    assert card["input_size"] in (160, 192, 224)
    ood = card["ood"]
    assert file_sha256(SAVED / ood["file"]) == ood["sha256"]
    assert ood["imagenet_threshold"] > 0 and ood["texture_floor"] and ood["colour_floor"]  # every check fitted
    assert {"malignant", "uncertain"} <= set(card["thresholds"])
    assert card["training"]["hardware"].split("TensorFlow ")[1]  # the TensorFlow version that trained it


def test_the_quoted_test_figures_are_recomputed_from_the_saved_predictions(card):
    with np.load(SAVED / "predictions.npz") as saved:
        probs, labels = saved["test_probs"], saved["test_labels"]
    split = pd.read_csv(SAVED / "split.csv")
    test = split[split["split"] == "test"]
    assert len(labels) == len(test) == card["metrics"]["test"]["n"]
    assert list(labels) == [CLASS_CODES.index(dx) for dx in test["dx"]]
    assert balanced_accuracy_score(labels, probs.argmax(1)) == pytest.approx(card["metrics"]["test"]["balanced_accuracy"])
    metrics = json.loads((SAVED / "metrics.json").read_text())
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(card["metrics"]["test"]["balanced_accuracy"])
    # No lesion of the test split was seen in training or used for a choice.
    assert not set(test["lesion_id"]) & set(split.loc[split["split"] != "test", "lesion_id"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_shipped_model_reproduces_its_saved_test_predictions_through_the_upload_path(card, shared_data_dir):
    """Five held-out photos a class, read as uploads are: the same probabilities the figures came from."""
    from server.model.predictor import Predictor

    split = pd.read_csv(SAVED / "split.csv")
    test = split[split["split"] == "test"].reset_index(drop=True)
    picks = np.concatenate([test.index[test["dx"] == code][:5] for code in CLASS_CODES])
    predictor = Predictor.from_path(MODEL, runtime="tensorflow", tta="off", ood=False)
    batch = np.stack([model_input(open_upload((shared_data_dir / "images" / f"{test.loc[i, 'image_id']}.jpg").read_bytes()),
                                  predictor.input_size) for i in picks])
    probs = predictor.predict_arrays(batch)
    with np.load(SAVED / "predictions.npz") as saved:
        assert np.abs(probs - saved["test_probs"][picks]).max() < 1e-4
    hits = (probs.argmax(1) == [CLASS_CODES.index(d) for d in test.loc[picks, "dx"]]).mean()
    assert hits > 1 / len(CLASS_CODES)  # far above chance on balanced picks, or the wrong model shipped


@pytest.fixture(scope="module")
def shipped_client():
    from server import create_app

    app = create_app({"MODEL_PATH": str(MODEL), "SECRET_KEY": "test", "TESTING": True, "INFERENCE_RUNTIME": "tensorflow"})
    return app.test_client()


@pytest.fixture(scope="module")
def served_client():
    """The shipped model as gunicorn's workers serve it: ONNX Runtime, the precision the host check chose."""
    from server import create_app

    return create_app({"MODEL_PATH": str(MODEL), "SECRET_KEY": "test", "TESTING": True}).test_client()


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, "PNG", compress_level=1)  # lossless all the same, 3.6x faster
    return buf.getvalue()


def nonskin_corpus(size: int = 224):
    """The named corpus (training/nonskin_corpus.py): everyday photographs and made pictures (made at ``size``
    and with the seed the card's figures were measured with)."""
    pytest.importorskip("skimage.data")
    from training import nonskin_corpus, nonskin_everyday

    return nonskin_everyday.everyday_photos() + nonskin_corpus.made_pictures(size, seed=42)


@pytest.mark.slow
def test_the_shipped_model_answers_the_nonskin_corpus_as_its_card_says(served_client, card):
    """Every everyday photograph and made picture is refused with a 422, except at most those the card lists
    as passed, which are screened as unusual images (200, uncertain, with the warning).

    The card's figures on this corpus are cross-fitted: what object checks fitted without each photo said
    of it. The shipped check was fitted on every photo, so it lets through no more than they did. The
    distance thresholds, floors and ceilings were fitted on HAM10000's training and validation images only.
    """
    passed = set(card["ood"]["everyday_passed"]) | set(card["ood"]["made_passed"])
    refused, screened = set(), {}
    for name, kind, img in nonskin_corpus(card["input_size"]):
        res = served_client.post("/predict", data=png_bytes(np.asarray(img)), content_type="image/png")
        if res.status_code == 422 and res.get_json()["error"]["code"] == "not_a_skin_lesion":
            refused.add(name)
        else:
            body = res.get_json()
            screened[name] = (res.status_code, body.get("unusual_image"), body.get("uncertain"))
    assert set(screened) <= passed, sorted(set(screened) - passed)
    assert all(answer == (200, True, True) for answer in screened.values()), screened
    assert len(refused) + len(screened) == card["ood"]["nonskin_images"]


@pytest.mark.slow
def test_a_refused_cat_is_called_a_cat(shipped_client):
    skimage_data = pytest.importorskip("skimage.data")
    res = shipped_client.post("/predict", data=png_bytes(skimage_data.chelsea()), content_type="image/png")
    assert res.status_code == 422
    error = res.get_json()["error"]
    assert error["code"] == "not_a_skin_lesion" and "cat" in error["looks_like"], error
    assert f"looks like: {error['looks_like']}" in error["message"]


@pytest.mark.slow
@pytest.mark.shared_data
def test_held_out_lesions_made_harder_are_still_screened(shipped_client, shared_data_dir):
    """Three held-out photos in each of the corpus's harder ways (darker, ruler, hair...) get an answer."""
    from PIL import Image

    from training.nonskin_corpus import HARD_KINDS, harden

    split = pd.read_csv(SAVED / "split.csv")
    ids = split.loc[split["split"] == "test", "image_id"].iloc[:3]
    for kind in HARD_KINDS:
        for i, image_id in enumerate(ids):
            photo = Image.open(shared_data_dir / "images" / f"{image_id}.jpg").convert("RGB")
            res = shipped_client.post("/predict", data=png_bytes(np.asarray(harden(photo, kind, i))),
                                      content_type="image/png")
            assert res.status_code == 200, (kind, image_id, res.get_json())


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_shipped_model_screens_a_held_out_lesion(shipped_client, shared_data_dir):
    split = pd.read_csv(SAVED / "split.csv")
    image_id = split.loc[(split["split"] == "test") & (split["dx"] == "nv"), "image_id"].iloc[0]
    res = shipped_client.post("/predict", data=(shared_data_dir / "images" / f"{image_id}.jpg").read_bytes(),
                              content_type="image/jpeg")
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["out_of_distribution"] is False


def test_the_quoted_patient_context_figures_are_recomputed_from_the_saved_predictions(card):
    """Without context the served figures are the image-only ones; with it, the saved served rows give the card's.
    A photo-only model's card has no context section: its served rows give its test figure."""
    with np.load(SAVED / "predictions.npz") as saved:
        labels, plain, told = saved["test_labels"], saved["test_probs_served"], saved.get("test_probs_with_context_served")
    if card.get("patient_context") is None:
        assert told is None
        assert balanced_accuracy_score(labels, plain.argmax(1)) == pytest.approx(card["metrics"]["test"]["balanced_accuracy"])
        return
    spec = card["patient_context"]
    served = spec["served"]["test"]
    assert balanced_accuracy_score(labels, plain.argmax(1)) == pytest.approx(served["without_context"]["balanced_accuracy"])
    assert served["without_context"]["balanced_accuracy"] == pytest.approx(card["metrics"]["test"]["balanced_accuracy"])
    if spec["reads"]:
        assert balanced_accuracy_score(labels, told.argmax(1)) == pytest.approx(served["with_context"]["balanced_accuracy"])
        assert spec["shipped"] == "image + patient context" and spec["val_gain"] >= 0.01


@pytest.mark.slow
@pytest.mark.shared_data
def test_curl_with_the_patient_fields_gives_the_saved_with_context_answer(shipped_client, card, shared_data_dir):
    """Held-out photos posted with their own age, sex and site answer as the card's with-context figures were computed;
    posted without, as the image-only ones."""
    if not (card.get("patient_context") or {}).get("reads"):
        pytest.skip("the shipped model does not read the patient context")
    meta = pd.read_csv(shared_data_dir / "HAM10000_metadata.csv").set_index("image_id")
    split = pd.read_csv(SAVED / "split.csv")
    test = split[split["split"] == "test"].reset_index(drop=True)
    picks = np.concatenate([test.index[test["dx"] == code][:2] for code in CLASS_CODES])
    with np.load(SAVED / "predictions.npz") as saved:
        plain, told = saved["test_probs_served"], saved["test_probs_with_context_served"]
    for i in picks:
        row = meta.loc[test.loc[i, "image_id"]]
        photo = (shared_data_dir / "images" / f"{test.loc[i, 'image_id']}.jpg").read_bytes()
        fields = {k: str(v) for k, v in (("age", row["age"]), ("sex", row["sex"]), ("site", row["localization"]))
                  if not pd.isna(v) and v != "unknown"}
        for data, expected in ((fields, told[i]), ({}, plain[i])):
            res = shipped_client.post("/predict", data={"image": (__import__("io").BytesIO(photo), "lesion.jpg"), **data},
                                      content_type="multipart/form-data")
            assert res.status_code == 200, res.get_json()
            got = {c["code"]: c["probability"] for c in res.get_json()["probabilities"]}
            assert max(abs(got[c] - expected[k]) for k, c in enumerate(CLASS_CODES)) < 2e-3, (i, data)


def test_the_shipped_int8_graphs_belong_to_the_h5_met_the_bar_and_are_served_by_default(card):
    from server.model.card import ModelCard
    from server.model.precision import wanted_precision

    int8 = card["int8"]
    assert int8["source_sha256"] == file_sha256(MODEL)
    for graph in (int8["classifier"], int8["branch"]):
        path = SAVED / graph["file"]
        assert path.stat().st_size < 20_000_000 and file_sha256(path) == graph["sha256"]
    assert int8["meets_bar"] is True and int8["bar"]["split"] == "test"
    assert all(int8["bar"]["checks"].values()), int8["bar"]["checks"]
    assert wanted_precision("auto", ModelCard.from_dict(card)).precision == "int8"
