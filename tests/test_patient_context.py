"""The patient context: parsing and encoding (server/patient.py), a model that reads it
(served through ONNX Runtime, explained by Grad-CAM), the trainer's phase 3 pieces, and
the colour-constancy option the card records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from server.imaging import COLOUR_SHADES_OF_GRAY, colour_of, preprocessing_id, shades_of_gray
from server.model.files import ModelLoadError
from server.model.predictor import Predictor
from server.patient import MODEL_VECTOR_SIZE, SITES, PatientContext, age_band, model_vectors
from server.problems import ServiceError
from tests.fixture_model import CONTEXT_CLASS, CONTEXT_SITE, GREEN_CLASS, RED_CLASS, TINY_BLOCKS


# ---------------------------------------------------------------- parsing and encoding

@pytest.mark.parametrize("age, sex, site, expected", [
    ("70", "male", "back", {"age": 70.0, "sex": "male", "site": "back"}),
    (" 45.5 ", "F", "Lower_Extremity", {"age": 45.5, "sex": "female", "site": "lower extremity"}),
    ("", "unknown", None, {}),
    (None, "", "upper-extremity", {"site": "upper extremity"}),
    (None, None, "Head / Neck", {"site": "head/neck"}),
    (None, None, "anterior_torso", {"site": "anterior torso"}),
])
def test_user_text_becomes_a_context(age, sex, site, expected):
    assert PatientContext.parse(age, sex, site).to_dict() == expected


@pytest.mark.parametrize("field, kwargs", [
    ("age", {"age": "seventy"}), ("age", {"age": "-1"}), ("age", {"age": "121"}), ("age", {"age": "nan"}),
    ("sex", {"sex": "other"}), ("site", {"site": "elbow"}), ("site", {"site": "unknown-ish"}),
])
def test_a_bad_value_is_a_400_naming_its_field(field, kwargs):
    with pytest.raises(ServiceError) as err:
        PatientContext.parse(**kwargs)
    assert err.value.status == 400 and err.value.code == f"invalid_{field}"
    assert err.value.details == {"field": field} and field in err.value.message


def test_the_encoding_is_zero_when_nothing_is_given_and_one_hot_otherwise():
    from server.patient import AGE_SLICE, SEX_SLICE, SITE_SLICE

    assert not PatientContext().model_vector().any()
    v = PatientContext.parse("70", "male", "back").model_vector()
    assert v.shape == (MODEL_VECTOR_SIZE,) and v.dtype == np.float32 and v.sum() == 3.0
    assert v[AGE_SLICE].argmax() == 6 and v[SEX_SLICE].tolist() == [0.0, 1.0] and v[SITE_SLICE].argmax() == SITES.index("back")
    assert PatientContext.parse("14.9").model_vector()[AGE_SLICE].argmax() == 0
    assert PatientContext.parse("15").model_vector()[AGE_SLICE].argmax() == 1
    assert PatientContext.parse("120").model_vector()[AGE_SLICE].argmax() == AGE_SLICE.stop - 1
    # HAM10000's own spellings (NaN age, "unknown") encode as not given, row by row.
    rows = model_vectors([np.nan, 30.0], ["unknown", "female"], ["unknown", SITES[0]])
    assert not rows[0].any() and rows[1].sum() == 3.0


def test_a_general_site_is_read_as_the_sites_it_covers_in_ham10000s_proportions(shared_data_dir):
    """Other clinics record ISIC's coarse sites; the model learnt HAM10000's. "head/neck" must read as
    mostly the face, as HAM10000's head and neck lesions mostly are, and never as a site it does not cover."""
    import pandas as pd

    from server.patient import GENERAL_SITES, HAM10000_SITE_COUNTS, SITE_SLICE, site_words

    head = PatientContext.parse(site="head/neck")
    sites = head.model_vector()[SITE_SLICE]
    assert sites.sum() == pytest.approx(1.0)
    assert sites.argmax() == SITES.index("face")
    assert {SITES[i] for i in np.flatnonzero(sites)} == set(GENERAL_SITES["head/neck"])
    assert PatientContext.parse(site="posterior torso").model_vector()[SITE_SLICE].tolist() == \
        PatientContext.parse(site="back").model_vector()[SITE_SLICE].tolist()
    assert head.describe() == "head or neck; not given: age, sex" and all(site_words(s) for s in GENERAL_SITES)
    assert all(set(covered) <= set(SITES) for covered in GENERAL_SITES.values())
    counts = pd.read_csv(shared_data_dir / "HAM10000_metadata.csv")["localization"].value_counts().to_dict()
    assert HAM10000_SITE_COUNTS == {site: counts[site] for site in SITES}


@pytest.mark.parametrize("age, band", [(None, "unknown"), (0, "<30"), (29.9, "<30"), (30, "30-44"), (59, "45-59"),
                                       (74, "60-74"), (75, ">=75"), (120, ">=75")])
def test_age_bands(age, band):
    assert age_band(age) == band


# ---------------------------------------------------------------- a model that reads it

def red_image(colour=(200, 40, 40)):
    return Image.new("RGB", (48, 40), colour)


@pytest.fixture(scope="module")
def context_predictor(context_model_path):
    return Predictor.from_path(context_model_path)


def test_the_context_reaches_the_model_through_onnx(context_predictor):
    p = context_predictor
    assert p.reads_patient and p.runtime == "onnxruntime"
    assert p.predict_image(red_image()).top.code == RED_CLASS
    assert p.predict_image(red_image(), patient=PatientContext()).top.code == RED_CLASS
    assert p.predict_image(red_image(), patient=PatientContext(site="back")).top.code == RED_CLASS
    assert p.predict_image(red_image(), patient=PatientContext(site=CONTEXT_SITE)).top.code == CONTEXT_CLASS


def test_grad_cam_explains_a_prediction_made_with_context(context_predictor):
    pred = context_predictor.predict_image(red_image(), explain=True, patient=PatientContext(age=60, site=CONTEXT_SITE))
    assert pred.top.code == CONTEXT_CLASS and pred.heatmap is not None and pred.heatmap.class_code == CONTEXT_CLASS


def test_an_image_only_model_ignores_a_context(model_path):
    p = Predictor.from_path(model_path)
    assert not p.reads_patient
    a = p.predict_image(red_image(), patient=PatientContext(site=CONTEXT_SITE))
    assert a.top.code == RED_CLASS and a.classes == p.predict_image(red_image()).classes


def test_batched_evaluation_takes_one_context_per_image(context_predictor):
    p = context_predictor
    x = np.full((2, p.input_size, p.input_size, 3), 0.0, np.float32)
    x[..., 0] = 0.6  # reddish
    context = np.stack([PatientContext().model_vector(), PatientContext(site=CONTEXT_SITE).model_vector()])
    probs = p.predict_arrays_batched(x, batch_size=1, patient=context)
    assert [p.classes[i] for i in probs.argmax(1)] == [RED_CLASS, CONTEXT_CLASS]


# ---------------------------------------------------------------- the trainer's phase 3

def tiny_classifier():
    from training.model import build_model

    return build_model(7, input_size=32, alpha=0.35, weights=None, dense_units=8, dropout=0.3, blocks=TINY_BLOCKS)


def test_the_widened_model_is_the_image_only_one_without_context_and_adds_w_m_with_it():
    from training.patient_context import with_context, with_patient_input

    model = tiny_classifier()
    weights = np.random.default_rng(2).normal(0, 1, (MODEL_VECTOR_SIZE, 7)).astype(np.float32)
    widened = with_patient_input(model, weights)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    context = (np.random.default_rng(1).random((4, MODEL_VECTOR_SIZE)) < 0.3).astype(np.float32)
    image_only = model.predict(x, verbose=0)
    np.testing.assert_allclose(widened.predict([x, np.zeros_like(context)], verbose=0), image_only, atol=1e-6)
    np.testing.assert_allclose(widened.predict([x, context], verbose=0), with_context(image_only, context, weights),
                               atol=1e-5)
    assert not np.allclose(widened.predict([x, context], verbose=0), image_only, atol=1e-3)


def test_metadata_dropout_drops_whole_contexts_and_single_fields():
    from training.patient_context import dropped

    ones = np.ones((20000, MODEL_VECTOR_SIZE), np.float32)
    out = dropped(ones, np.random.default_rng(0), p_all=0.5, p_field=0.25)
    assert ones.all(), "the input is not changed in place"
    empty = ~out.any(axis=1)
    assert 0.5 + 0.5 * 0.25 ** 3 - 0.02 < empty.mean() < 0.5 + 0.5 * 0.25 ** 3 + 0.02
    kept = out[~empty]
    assert 0.7 < kept[:, 0].mean() < 0.8 and 0.7 < kept[:, -1].mean() < 0.8


def synthetic_split(n: int, seed: int):
    """Contexts where a site decides between two classes the 'image' cannot tell apart."""
    from server.patient import SITE_SLICE

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    context = np.zeros((n, MODEL_VECTOR_SIZE), np.float32)
    site = np.where(rng.random(n) < 0.85, labels, 1 - labels)  # site 0 mostly class 0, site 1 mostly class 1
    context[np.arange(n), SITE_SLICE.start + site] = 1.0
    probs = np.full((n, 7), 0.01)
    probs[:, :2] = 0.47  # the image alone says "one of the two"
    return context, labels, probs / probs.sum(1, keepdims=True)


def test_the_context_weights_learn_from_metadata_and_the_strength_is_chosen_on_validation():
    from sklearn.metrics import balanced_accuracy_score

    from training.patient_context import choose_strength, context_weights, with_context

    ctx, y, _ = synthetic_split(3000, 0)
    weights = context_weights(ctx, y, 7, seed=0)
    assert not weights[ctx.sum(0) == 0].any(), "a value never seen gets no weight"
    vctx, vy, vprobs = synthetic_split(1000, 1)
    strength, scores = choose_strength(vprobs, vctx, vy, weights)
    assert strength > 0 and scores[strength] > scores[0.0] + 0.2
    assert balanced_accuracy_score(vy, with_context(vprobs, vctx, strength * weights).argmax(1)) > 0.8


def test_phase3_keeps_the_image_only_model_when_the_context_does_not_help():
    import pandas as pd

    from training.patient_context import phase3

    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"age": rng.choice([30.0, 60.0], n), "sex": rng.choice(["male", "female"], n),
                       "localization": rng.choice(["back", "face"], n)})
    labels = rng.integers(0, 7, n)  # unrelated to the context
    prepared = type("Prepared", (), {"df": df, "parts": {"train": np.arange(300), "val": np.arange(300, 400)},
                                     "y": {"train": labels[:300], "val": labels[300:]}})
    val_probs = np.eye(7)[labels[300:]] * 0.9 + 0.1 / 7  # the image alone is right
    model = object()
    shipped, record = phase3(model, val_probs, prepared, seed=0)
    assert shipped is model and record["shipped"] == "image only"
    json.dumps(record)


# ---------------------------------------------------------------- colour constancy

def test_shades_of_gray_removes_a_colour_cast():
    rng = np.random.default_rng(0)
    scene = rng.integers(60, 200, (32, 32, 3)).astype(np.float32)
    cast = np.clip(scene * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    plain = np.clip(scene, 0, 255).astype(np.uint8)
    a, b = shades_of_gray(cast).astype(float), shades_of_gray(plain).astype(float)
    assert np.abs(a - b).mean() < 0.2 * np.abs(cast.astype(float) - plain.astype(float)).mean()


def test_the_card_names_the_colour_and_the_service_applies_it(tmp_path, model_path):
    from server.model.files import card_path_for, check_model_files

    assert colour_of(preprocessing_id(COLOUR_SHADES_OF_GRAY)) == COLOUR_SHADES_OF_GRAY
    assert colour_of("squash/nearest") is None
    green = red_image((40, 200, 40))
    assert Predictor.from_path(model_path).predict_image(green).top.code == GREEN_CLASS
    model = tmp_path / model_path.name
    model.write_bytes(model_path.read_bytes())
    card = json.loads(card_path_for(model_path).read_text())
    card_file = card_path_for(model)
    card_file.write_text(json.dumps({**card, "preprocessing": preprocessing_id(COLOUR_SHADES_OF_GRAY)}))
    check_model_files(model)
    # Shades of Gray turns a flat green picture grey: the colour fixture can no longer see green.
    assert Predictor.from_path(model).predict_image(green).top.code != GREEN_CLASS
    card_file.write_text(json.dumps({**card, "preprocessing": "exif-rgb8/centre-square/clahe/mobilenet_v2[-1,1]"}))
    with pytest.raises(ModelLoadError, match="shades-of-gray"):
        check_model_files(model)


# ---------------------------------------------------------------- through the service

@pytest.fixture(scope="module")
def context_client(context_model_path):
    from server import create_app

    app = create_app({"MODEL_PATH": str(context_model_path), "TESTING": True, "SECRET_KEY": "test-secret"})
    return app.test_client()


def post_red(client, **fields):
    import io

    buf = io.BytesIO()
    red_image().save(buf, format="PNG")
    return client.post("/predict", data={"image": (io.BytesIO(buf.getvalue()), "lesion.png"), **fields},
                       content_type="multipart/form-data")


def test_curl_with_and_without_the_fields_both_answer_and_the_model_reads_them(context_client):
    plain = post_red(context_client)
    assert plain.status_code == 200 and plain.json["prediction"]["code"] == RED_CLASS and plain.json["patient"] == {}
    told = post_red(context_client, age="70", sex="male", site=CONTEXT_SITE)
    assert told.status_code == 200 and told.json["prediction"]["code"] == CONTEXT_CLASS
    assert told.json["patient"] == {"age": 70, "sex": "male", "site": CONTEXT_SITE}
    bad = post_red(context_client, site="elbow")
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_site"


def test_pages_say_whether_the_model_reads_the_context(client, context_model_path):
    from markupsafe import escape

    from server.model.files import card_path_for
    from server.reports.context import IGNORES, READS

    page = client.get("/model").get_data(as_text=True)
    reads = str(escape(READS))
    assert str(escape(IGNORES)) in page and reads not in page and 'id="context-table"' not in page
    served = {"without_context": {"balanced_accuracy": 0.70, "accuracy": 0.71, "melanoma_recall": 0.60,
                                  "malignant": {"auc": 0.90, "sensitivity": 0.90, "specificity": 0.60}},
              "with_context": {"balanced_accuracy": 0.72, "accuracy": 0.73, "melanoma_recall": 0.62,
                               "malignant": {"auc": 0.91, "sensitivity": 0.91, "specificity": 0.62}}}
    card_file = card_path_for(context_model_path)
    original = card_file.read_text()
    try:
        card_file.write_text(json.dumps({**json.loads(original), "patient_context": {
            "shipped": "image + patient context", "reads": ["age", "sex", "site"], "strength": 1.0,
            "served": {"test": served}}}))
        from server import create_app

        app = create_app({"MODEL_PATH": str(context_model_path), "TESTING": True, "SECRET_KEY": "test-secret"})
        page = app.test_client().get("/model").get_data(as_text=True)
    finally:
        card_file.write_text(original)
    assert reads in page and 'id="context-table"' in page
    assert "70.0%" in page and "72.0%" in page and "+2.0 points" in page and "0.910" in page
