"""The differential (issue #34): conformal thresholds fitted on validation, and the list every answer carries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server.lesions import CLASS_CODES
from server.model.card import ModelCard
from server.prediction import ModelInfo, Prediction
from server.prediction_parts import NonSkinAnswer
from server.published import prediction_from_probabilities
from server.thresholds import NONSKIN_UNUSUAL
from tests.conftest import image_bytes
from training.differential import (
    class_thresholds,
    conformal_quantile,
    differential_section,
    fit_rule,
    min_probabilities,
    prediction_sets,
    set_figures,
)

MODEL = ModelInfo(name="m", version="1", sha256="0" * 64, input_size=32)


def exchangeable(n: int, seed: int, rare: tuple[int, ...] = (), signal: float = 2.5):
    """Labels and softmax rows from one generator (so calibration and test photos are exchangeable);
    ``rare`` classes are few and hard: the model gives them little of their own probability."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.05 if k in rare else 1.0 for k in range(7)])
    labels = rng.choice(7, n, p=weights / weights.sum())
    logits = rng.normal(0, 1, (n, 7))
    logits[np.arange(n), labels] += np.where(np.isin(labels, rare), 0.6, signal)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), labels


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1, 20) / 20  # 19 scores: ceil(20 x 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.9) == pytest.approx(18 / 20)
    assert conformal_quantile(scores[:5], 0.9) == float("inf")  # 5 scores cannot promise 90%


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_reaches_the_target_on_exchangeable_data(coverage):
    """The guarantee: averaged over many calibration/test draws, coverage is at least the target; and
    the lists are not trivially everything (the top class always in lifts it a little above)."""
    reached = []
    for seed in range(40):
        cal_p, cal_y = exchangeable(300, seed)
        test_p, test_y = exchangeable(2000, 1000 + seed)
        minimum = min_probabilities(class_thresholds(cal_p, cal_y, 7, coverage, None))
        reached.append(set_figures(prediction_sets(test_p, minimum), test_y, CLASS_CODES)["coverage"])
    assert coverage - 0.005 <= np.mean(reached) <= coverage + 0.07


def test_a_class_floor_lifts_a_rare_class_the_overall_threshold_leaves_behind():
    cal_p, cal_y = exchangeable(20000, 0, rare=(3,))  # about 165 dermatofibromas to calibrate on
    test_p, test_y = exchangeable(60000, 1, rare=(3,))
    overall = set_figures(prediction_sets(test_p, min_probabilities(class_thresholds(cal_p, cal_y, 7, 0.9, None))),
                          test_y, CLASS_CODES)
    floored = set_figures(prediction_sets(test_p, min_probabilities(class_thresholds(cal_p, cal_y, 7, 0.9, 0.9))),
                          test_y, CLASS_CODES)
    assert overall["by_class"]["df"]["coverage"] < 0.8
    assert floored["by_class"]["df"]["coverage"] >= 0.87  # 0.9 in expectation; one draw of about 500
    assert floored["coverage"] >= overall["coverage"] and floored["mean_size"] > overall["mean_size"]


@pytest.mark.parametrize("floor", [None, 0.85])
def test_sets_are_nested_as_the_coverage_rises(floor):
    cal_p, cal_y = exchangeable(500, 3, rare=(3, 6))
    test_p, _ = exchangeable(500, 4, rare=(3, 6))
    sets = [prediction_sets(test_p, min_probabilities(class_thresholds(cal_p, cal_y, 7, c, floor)))
            for c in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)]
    for smaller, larger in zip(sets, sets[1:]):
        assert np.all(larger[smaller])  # every class in the narrower list is in the wider one
    assert sets[0].sum() < sets[-1].sum()


def test_the_floor_is_the_highest_that_keeps_validation_lists_short():
    val = exchangeable(3000, 5, rare=(3,))
    probs, labels = {"val": val[0]}, {"val": val[1]}
    strict = fit_rule(probs, labels, CLASS_CODES, floors=(0.99, 0.9, 0.8), max_mean_size=100)
    assert strict["class_floor"] == 0.99
    tight = fit_rule(probs, labels, CLASS_CODES, floors=(0.99, 0.9, 0.8), max_mean_size=1.0)
    assert tight["class_floor"] is None  # no floor fits: the overall threshold alone
    assert len(set(tight["min_probability"].values())) == 1
    chosen = fit_rule(probs, labels, CLASS_CODES)
    assert chosen["figures"]["val"]["mean_size"] <= 1.85


def test_the_section_is_a_valid_card_value_and_serves_the_same_lists():
    val, test = exchangeable(2000, 6), exchangeable(500, 7)
    section = differential_section({"val": val[0], "test": test[0]}, {"val": val[1], "test": test[1]}, CLASS_CODES)
    card = ModelCard.partial({"classes": list(CLASS_CODES), "differential": section})
    assert card.differential.coverage == 0.9
    assert card.differential.image.measured("test")["coverage"] == section["figures"]["test"]["coverage"]
    assert ModelCard.partial(card.to_dict()).to_dict()["differential"] == section
    rule = card.differential.rule_for(with_context=True)  # no context rule: the image's
    lists = prediction_sets(test[0], [rule.min_probability[c] for c in CLASS_CODES])
    for row, expected in zip(test[0][:200], lists[:200]):
        answer = prediction_from_probabilities(row, MODEL, 1.0, min_probability=rule.min_probability, coverage=0.9)
        assert set(answer.differential.codes) == {c for c, x in zip(CLASS_CODES, expected) if x}


def answer(probs, **extra) -> Prediction:
    minimum = {c: 0.2 for c in CLASS_CODES}
    return prediction_from_probabilities(probs, MODEL, 1.0, min_probability=minimum, coverage=0.9, **extra)


def test_uncertain_means_more_than_one_class_and_the_json_carries_the_list():
    one = answer([0.02, 0.02, 0.02, 0.02, 0.05, 0.85, 0.02])
    two = answer([0.02, 0.02, 0.02, 0.02, 0.40, 0.50, 0.02])
    assert one.differential.codes == ("nv",) and not one.uncertain and one.uncertain_message is None
    assert two.differential.codes == ("nv", "mel") and two.uncertain
    body = two.to_dict()
    assert [c["code"] for c in body["differential"]] == ["nv", "mel"]
    assert body["differential"][0] == {"code": "nv", "name": "Melanocytic nevus (mole)", "probability": 0.5}
    assert body["differential_coverage"] == 0.9 and body["uncertain"] is True
    assert "Melanocytic nevus (mole), Melanoma" in body["uncertain_message"]
    assert Prediction.from_dict(body).differential == two.differential  # the report token keeps the list


def test_an_unusual_photo_never_gets_a_list_of_one():
    confident = [0.02, 0.02, 0.02, 0.06, 0.07, 0.79, 0.02]
    assert answer(confident).differential.codes == ("nv",)
    unusual = answer(confident, nonskin=NonSkinAnswer(NONSKIN_UNUSUAL))
    assert unusual.differential.codes == ("nv", "mel") and unusual.uncertain  # its top two, not the leading three
    wide = answer([0.02, 0.02, 0.02, 0.02, 0.40, 0.50, 0.02], nonskin=NonSkinAnswer(NONSKIN_UNUSUAL))
    assert wide.differential.codes == ("nv", "mel")  # already two: unchanged


def test_a_card_without_thresholds_falls_back_to_the_uncertain_threshold():
    sure = prediction_from_probabilities([0.02, 0.02, 0.02, 0.02, 0.1, 0.8, 0.02], MODEL, 1.0, uncertain_threshold=0.7)
    unsure = prediction_from_probabilities([0.02, 0.02, 0.12, 0.02, 0.3, 0.5, 0.02], MODEL, 1.0, uncertain_threshold=0.7)
    assert sure.differential.codes == ("nv",) and sure.to_dict()["differential_coverage"] is None
    assert unsure.differential.codes == ("nv", "mel", "bkl") and unsure.uncertain


# ---------------------------------------------------------------- served: the fixture model with conformal thresholds

@pytest.fixture(scope="module")
def differential_model(model_path, tmp_path_factory):
    """The colour fixture with a ``differential`` section fitted by ``training.differential`` on synthetic,
    exchangeable validation and test answers (the fixture has no data of its own to calibrate on)."""
    d = tmp_path_factory.mktemp("differential")
    for f in model_path.parent.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    val, test = exchangeable(3000, 11, signal=1.5), exchangeable(1000, 12, signal=1.5)
    document = json.loads((d / "model_card.json").read_text())
    document["differential"] = differential_section({"val": val[0], "test": test[0]}, {"val": val[1], "test": test[1]},
                                                    CLASS_CODES)
    (d / "model_card.json").write_text(json.dumps(document))
    return d / model_path.name


@pytest.fixture(scope="module")
def differential_client(differential_model):
    from server import create_app

    return create_app({"MODEL_PATH": str(differential_model), "TESTING": True, "SECRET_KEY": "s"}).test_client()


RED, GREY = (220, 30, 30), (128, 128, 128)  # the colour fixture: sure of one type; unsure of several


def test_every_answer_carries_the_list_and_uncertain_follows_it(differential_client, differential_model):
    card = ModelCard.from_dict(json.loads((differential_model.parent / "model_card.json").read_text()))
    for colour, size in ((RED, 1), (GREY, None)):
        body = differential_client.post("/predict", data=image_bytes(colour, size=(64, 64)),
                                        content_type="image/png").json
        codes = [c["code"] for c in body["differential"]]
        assert body["differential_coverage"] == 0.9
        assert codes == [c["code"] for c in body["probabilities"]][:len(codes)], "most likely first"
        minimum = card.differential.image.min_probability
        assert all(c["probability"] >= minimum[c["code"]] for c in body["differential"][1:])
        assert all(c["probability"] < minimum[c["code"]] for c in body["probabilities"][len(codes):])
        assert body["uncertain"] is (len(codes) > 1)
        assert body["summary"]["kind"] == ("flagged" if body["malignant_flag"] else "uncertain" if len(codes) > 1
                                           else "class")
        if size is not None:
            assert len(codes) == size
        else:
            assert len(codes) >= 2


def test_the_reports_name_every_class_of_the_list(differential_client):
    from tests.test_reports import pdf_text, squash

    body = differential_client.post("/predict", data=image_bytes(GREY, size=(64, 64)), content_type="image/png").json
    names = [c["name"] for c in body["differential"]]
    text = squash(differential_client.post("/predict?format=txt", data=image_bytes(GREY, size=(64, 64)),
                                           content_type="image/png").get_data(as_text=True))
    pdf = pdf_text(differential_client.post("/predict?format=pdf", data=image_bytes(GREY, size=(64, 64)),
                                            content_type="image/png").data)
    listed = "One of: " + ", ".join(names)
    for report in (text, pdf):
        assert listed in report and "about 9 times in 10 on test photos" in report
        assert "none of them" not in report.lower()
    assert body["summary"]["title"] == listed and body["summary"]["key_figure"]["label"] == "Right type among these"


def test_the_model_page_shows_coverage_and_size_by_class_on_validation_and_test(differential_client, differential_model):
    import re

    card = ModelCard.from_dict(json.loads((differential_model.parent / "model_card.json").read_text()))
    body = differential_client.get("/model").get_data(as_text=True)
    rows = dict(re.findall(r'<tr><th scope="row" data-label="True type">([^<]+)</th>(.*?)</tr>', body))
    assert len(rows) == 1 + len(CLASS_CODES)
    for code, name in (("df", "Dermatofibroma"), ("vasc", "Vascular lesion")):
        cells = re.findall(r'<td data-label="([^"]+)">([^<]*)</td>', rows[name])
        figures = {label: value for label, value in cells}
        test = card.differential.image.measured("test")["by_class"][code]
        val = card.differential.image.measured("val")["by_class"][code]
        assert figures["Test coverage"] == f"{test['coverage'] * 100:.1f}%" and figures["Test photos"] == str(test["n"])
        assert figures["Validation mean size"] == f"{val['mean_size']:.2f}"


def test_summary_kind_and_uncertain_follow_the_list_for_any_answer():
    from server.reports import summary

    rng = np.random.default_rng(21)
    minimum = {c: m for c, m in zip(CLASS_CODES, (0.1, 0.12, 0.15, 0.05, 0.1, 0.2, 0.08))}
    for row in rng.dirichlet(np.full(7, 0.4), 300):
        answer = prediction_from_probabilities(row, MODEL, 1.0, malignant_threshold=0.4, min_probability=minimum,
                                               coverage=0.9)
        words = summary(answer)
        several = len(answer.differential.codes) > 1
        assert answer.uncertain is several and words["uncertain"] is several
        assert words["kind"] == ("flagged" if answer.malignant_flag else "uncertain" if several else "class")
        assert words["differential"].startswith("One of: ") is several
        assert (words["key_figure"]["label"] == "Confidence") is (not several and not answer.malignant_flag)


def test_the_run_report_gets_one_differential_section_however_often_it_is_refitted():
    from training.report import DIFFERENTIAL_HEADING, differential_section, splice_section

    val, test = exchangeable(2000, 8), exchangeable(500, 9)
    card = ModelCard.partial({"classes": list(CLASS_CODES), "differential": differential_section_of(val, test)})
    section = differential_section(card)
    assert section[0] == DIFFERENTIAL_HEADING
    assert f"| test | {card.differential.image.measured('test')['coverage']:.3f} |" in "\n".join(section)
    report = "# run\n\n## Later section\n\nkept\n"
    once = splice_section(report, section)
    assert splice_section(once, section) == once and once.count(DIFFERENTIAL_HEADING) == 1 and "kept" in once


def differential_section_of(val, test) -> dict:
    return differential_section({"val": val[0], "test": test[0]}, {"val": val[1], "test": test[1]}, CLASS_CODES)


def test_a_small_run_without_a_floor_or_a_single_list_still_has_its_words_and_table():
    """A smoke run's validation can leave no floor that fits and no list of one: the card, /model's sentence and
    report.md's table say so rather than fail."""
    from server.reports.quality import differential_in_words
    from training.differential import figures_table

    val = exchangeable(60, 13, signal=0.2)
    section = fit_rule({"val": val[0]}, {"val": val[1]}, CLASS_CODES, max_mean_size=1.0)
    section["figures"]["val"]["single_accuracy"] = None
    section["figures"]["test"] = section["figures"]["val"]
    card = ModelCard.partial({"classes": list(CLASS_CODES), "differential": {"coverage": 0.9, **section}})
    assert card.differential.image.class_floor is None
    assert differential_in_words(card).endswith("of photos got a single type.")
    assert "| val |" in "\n".join(figures_table(card.to_dict()["differential"]))
