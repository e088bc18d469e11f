"""The non-skin check's three answers (issue #24): usual, unusual (screened with a warning), refused.

The rule as a pure function, the checks' refusal levels and ceilings, the Prediction's
unusual-image fields, and the whole path through the API, the result page and both
reports, with the colour fixture model and its stand-in ImageNet branch
(``tests/test_nonskin_imagenet.py``): its card is given an unusual level well inside the
skin-like pictures and refusal levels far outside them, so a skin-like picture is
unusual while a flat colour and a "cat" are still refused.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from server.model.nonskin import FEATURES, FLAT_SHARE, DistanceCheck, FloorCheck, Mahalanobis, NonSkinCheck
from server.model.nonskin_imagenet import ImagenetLabels
from server.prediction import UNUSUAL_IMAGE_MESSAGE, ModelInfo, Prediction
from server.prediction_parts import NonSkinAnswer
from server.published import prediction_from_probabilities
from server.thresholds import NONSKIN_REFUSED, NONSKIN_UNUSUAL, NONSKIN_USUAL, nonskin_answer
from tests.test_nonskin_imagenet import CAT, GREEN_THING, branch_model, green_picture, labels, png  # noqa: F401
from tests.test_ood import skin_like
from tests.test_reports import pdf_text, squash

INFO = ModelInfo(name="m", version="1", sha256="0" * 64, input_size=48)


def test_the_rule_refuses_only_on_evidence_and_warns_on_the_merely_unusual():
    assert nonskin_answer(0.8, 0.5, False) == NONSKIN_USUAL
    assert nonskin_answer(1.0, 0.9, False) == NONSKIN_USUAL  # exactly at the level is not beyond it
    assert nonskin_answer(1.3, 0.9, False) == NONSKIN_UNUSUAL  # far, but nothing says it is not skin
    assert nonskin_answer(1.3, 1.1, False) == NONSKIN_REFUSED  # beyond a refusal level
    assert nonskin_answer(1.3, 0.9, True) == NONSKIN_REFUSED  # unusual, and named as an object
    assert nonskin_answer(0.9, 0.5, True) == NONSKIN_USUAL  # a name alone never refuses a typical photo
    answers = nonskin_answer(np.array([0.5, 1.2, 1.2, 2.0]), np.array([0.2, 0.6, 0.6, 1.5]),
                             np.array([False, False, True, False]))
    assert answers.tolist() == [NONSKIN_USUAL, NONSKIN_UNUSUAL, NONSKIN_REFUSED, NONSKIN_REFUSED]


def test_refusal_levels_sit_beyond_the_unusual_levels_of_each_kind_of_check():
    identity = Mahalanobis(np.zeros(1), np.eye(1))
    distance = DistanceCheck(FEATURES, FEATURES, identity, 2.0, refuse_threshold=3.0)
    floor = FloorCheck("texture", 0, 1.0, refuse_floor=0.5)
    ceiling = FloorCheck("flat", FLAT_SHARE, 0.0, refuse_floor=0.7, ceiling=True)
    assert distance.refuse_factor == pytest.approx(1.5)
    assert floor.refuse_factor == pytest.approx(np.exp(0.5))
    assert ceiling.refuse_factor == pytest.approx(np.exp(0.7))
    values = np.array([[0.8, 0.0, 0.5], [0.3, 0.0, 1.0]])  # columns: texture, colour, flat share
    np.testing.assert_allclose(ceiling.ratios(values), np.exp([0.5, 1.0]))  # above the ceiling fails
    check = NonSkinCheck((distance, floor, ceiling))
    ratios = check.ratios({FEATURES: np.array([[2.5], [2.5]]), "floors": values})
    # the first: unusual on all three, beyond no refusal level; the second: below the texture refusal floor
    assert check.answers(ratios).tolist() == [NONSKIN_UNUSUAL, NONSKIN_REFUSED]
    assert DistanceCheck(FEATURES, FEATURES, identity, 2.0).refuse_factor == 1.0  # an older card: refuses at 1


def test_an_object_is_named_only_with_next_to_nothing_on_the_lesion_like_classes():
    table = ImagenetLabels(tuple(labels()), frozenset({GREEN_THING}))
    cat = np.zeros((2, 1000))
    cat[:, CAT] = 0.6
    cat[0, 1] = 0.4
    cat[1, GREEN_THING] = 0.4  # a "cat" that is also 40% lesion-like: a lesion photographed oddly
    assert table.names_an_object(cat, 0.25, 0.01).tolist() == [True, False]
    assert table.names_an_object(cat, 0.7).tolist() == [False, False]


def prediction(top: float, nonskin: str | None, malignant_threshold: float = 0.3) -> Prediction:
    return prediction_from_probabilities(np.array([top, 0, 0, 0, 1 - top, 0, 0]), INFO, 5.0,
                                         malignant_threshold=malignant_threshold, uncertain_threshold=0.5,
                                         nonskin=None if nonskin is None else NonSkinAnswer(nonskin, 1.2))


def test_an_unusual_image_is_screened_uncertain_with_its_sentence_and_the_malignant_flag():
    unusual = prediction(0.9, NONSKIN_UNUSUAL)
    assert unusual.unusual_image is True and unusual.out_of_distribution is False
    assert unusual.uncertain and not unusual.low_confidence  # uncertain although confident
    assert unusual.uncertain_message.startswith(UNUSUAL_IMAGE_MESSAGE)
    assert unusual.malignant_flag is not None
    data = unusual.to_dict()
    assert data["unusual_image"] is True and data["unusual_message"] == UNUSUAL_IMAGE_MESSAGE and data["uncertain"]
    assert Prediction.from_dict(data).unusual_image is True  # the report token keeps it
    usual = prediction(0.9, NONSKIN_USUAL)
    assert usual.unusual_image is False and not usual.uncertain and usual.to_dict()["unusual_message"] is None
    assert Prediction.from_dict(usual.to_dict()).unusual_image is False
    assert prediction(0.9, None).unusual_image is None  # no check: unknown


@pytest.fixture(scope="module")
def unusual_model(branch_model, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """The branch fixture with its unusual level inside the skin-like pictures, its refusals far outside."""
    d = tmp_path_factory.mktemp("unusual")
    for f in branch_model.parent.iterdir():
        shutil.copy(f, d / f.name)
    document = json.loads((d / "model_card.json").read_text())
    ood = document["ood"]
    ood["refuse_threshold"], ood["imagenet_refuse_threshold"] = 100 * ood["threshold"], 100 * ood["imagenet_threshold"]
    ood["threshold"] /= 100  # every skin-like picture lies beyond it
    ood["texture_refuse_floor"], ood["colour_refuse_floor"] = ood["texture_floor"], ood["colour_floor"]
    (d / "model_card.json").write_text(json.dumps(document))
    return d / branch_model.name


@pytest.fixture(scope="module")
def unusual_client(unusual_model):
    from server import create_app

    return create_app({"MODEL_PATH": str(unusual_model), "TESTING": True, "SECRET_KEY": "s"}).test_client()


def skin_png(seed: int = 7) -> bytes:
    return png(Image.fromarray(skin_like(np.random.default_rng(seed), 1)[0]))


def test_the_api_screens_an_unusual_lesion_and_refuses_a_flat_colour_and_a_cat(unusual_client):
    ok = unusual_client.post("/predict", data=skin_png(), content_type="image/png")
    assert ok.status_code == 200, ok.json
    body = ok.json
    assert body["unusual_image"] is True and body["out_of_distribution"] is False and body["ood_score"] > 1
    assert body["uncertain"] is True and body["unusual_message"] == UNUSUAL_IMAGE_MESSAGE
    assert body["malignant_flag"] in (True, False) and len(body["probabilities"]) == 7
    flat = unusual_client.post("/predict", data=png(Image.new("RGB", (48, 48), (200, 150, 115))), content_type="image/png")
    assert flat.status_code == 422 and flat.json["error"]["code"] == "not_a_skin_lesion"
    cat = unusual_client.post("/predict", data=png(green_picture()), content_type="image/png")
    assert cat.status_code == 422 and cat.json["error"]["looks_like"] == "tabby cat"  # named: refused


def test_the_page_and_both_reports_say_the_sentence(unusual_client):
    from tests.test_pages import html, upload

    page = upload(unusual_client, skin_png())
    assert page.status_code == 200
    text = html(page)
    assert UNUSUAL_IMAGE_MESSAGE in text and "One of: " in text  # an unusual photo lists at least two types
    token = text.split('name="token" value="')[1].split('"')[0]
    csrf = text.split('name="csrf_token" value="')[1].split('"')[0]
    txt = unusual_client.post("/report/txt", data={"token": token, "csrf_token": csrf})
    assert txt.status_code == 200, txt.status_code
    assert squash(UNUSUAL_IMAGE_MESSAGE) in squash(txt.get_data(as_text=True))
    pdf = unusual_client.post("/predict?format=pdf", data=skin_png(), content_type="image/png")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    assert squash(UNUSUAL_IMAGE_MESSAGE) in pdf_text(pdf.data)
