"""Calibration and the "uncertain" answer (issue #6)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server import reports
from server.prediction import ModelInfo
from server.published import prediction_from_probabilities
from server.thresholds import DEFAULT_UNCERTAIN_BELOW
from server.model.predictor import Predictor
from server.model.trust import temperature_scale
from training.calibration import choose_uncertain_threshold, ece, fit_temperature, nll

MODEL = ModelInfo(name="m", version="1", sha256="0" * 64, input_size=32)


def overconfident(n: int, seed: int, sharpen: float = 3.0):
    """Labels and softmax rows whose logits are a true signal times ``sharpen``: right often, but far too sure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    logits = rng.normal(0, 1, (n, 7))
    logits[np.arange(n), labels] += 1.5
    z = logits * sharpen
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), labels


def test_temperature_scaling_lowers_nll_and_ece_on_overconfident_probabilities():
    fit_p, fit_y = overconfident(3000, seed=0)
    test_p, test_y = overconfident(3000, seed=1)
    t = fit_temperature(fit_p, fit_y)
    # The Bayes posterior of this generator is softmax(1.5 x), i.e. of z = 3x at T = 2.
    assert 1.8 < t < 2.2
    after = temperature_scale(test_p, t)
    assert nll(after, test_y) < 0.9 * nll(test_p, test_y)
    assert ece(after, test_y) < 0.5 * ece(test_p, test_y)
    np.testing.assert_array_equal(after.argmax(1), test_p.argmax(1))  # ranking unchanged
    np.testing.assert_allclose(after.sum(1), 1.0)


def test_temperature_one_is_identity_and_ece_of_perfect_calibration_is_small():
    p, y = overconfident(200, seed=2, sharpen=1.0)
    np.testing.assert_allclose(temperature_scale(p, 1.0), p, atol=1e-12)
    assert ece(np.eye(7)[[0, 1, 2]], np.array([0, 1, 2])) == 0.0
    assert ece(np.eye(7)[[0, 1, 2]], np.array([1, 1, 1])) == pytest.approx(2 / 3)


def test_uncertain_flag_fires_exactly_below_the_threshold():
    def with_top(p):
        rest = (1 - p) / 6
        return prediction_from_probabilities([p, rest, rest, rest, rest, rest, rest], MODEL, 1.0,
                                             uncertain_threshold=0.6)

    at = with_top(0.6)
    below = with_top(0.599999)
    assert at.top.probability == 0.6 and not at.uncertain and at.uncertain_message is None
    assert below.uncertain and "dermatologist" in below.uncertain_message
    assert reports.assess(below).uncertain and reports.assess(below).see_dermatologist
    assert not reports.assess(at).uncertain
    body = below.to_dict()
    # a card without conformal thresholds: the list is the leading classes, with no coverage to claim
    assert body["uncertain"] is True and body["uncertain_threshold"] == 0.6 and "one of" in body["uncertain_message"]
    assert [c["code"] for c in body["differential"]] == ["akiec", "bcc", "bkl"] and body["differential_coverage"] is None
    assert [c["code"] for c in at.to_dict()["differential"]] == ["akiec"]
    assert "cannot narrow it down further" in " ".join(reports.text_report(below).split())


def test_uncertain_threshold_falls_back_to_half_without_a_card_value():
    p = prediction_from_probabilities([0.49, 0.31, 0.05, 0.05, 0.05, 0.03, 0.02], MODEL, 1.0)
    assert p.uncertain_below == DEFAULT_UNCERTAIN_BELOW == 0.5 and p.uncertain


def test_choose_uncertain_threshold_is_the_lowest_meeting_the_target():
    # confidences 0.35..0.95; right exactly when confidence >= 0.6
    conf = np.repeat(np.round(np.arange(0.35, 0.96, 0.05), 2), 40)
    labels = np.where(conf >= 0.6, 0, 1)
    probs = np.zeros((len(conf), 7))
    probs[:, 0] = conf
    probs[:, 2:] = ((1 - conf) / 5)[:, None]
    chosen = choose_uncertain_threshold(probs, labels, target=0.9)
    # at 0.55 the wrong 0.55s are answered too (320/360 = 0.89 < 0.9); from 0.56 only right answers remain
    assert chosen["threshold"] == pytest.approx(0.56) and chosen["target_reached"]
    assert chosen["accuracy_answered"] >= 0.9


@pytest.fixture(scope="module")
def calibrated_predictor(model_path, tmp_path_factory):
    """The fixture model with a card that says T = 3, uncertain at 0.7, and TTA flips."""
    d = tmp_path_factory.mktemp("calibrated")
    shutil.copy(model_path, d / model_path.name)
    card = json.loads(model_path.with_name("model_card.json").read_text())
    card["calibration"] = {"temperature": 3.0, "temperature_by_tta": {"off": 3.0, "flips": 2.5, "full": 2.0}}
    card["thresholds"]["uncertain"] = 0.7
    card["tta"] = {"default": "flips"}
    (d / "model_card.json").write_text(json.dumps(card))
    return Predictor.from_path(d / model_path.name, runtime="tensorflow")


def test_predictor_applies_the_cards_temperature_tta_and_threshold(calibrated_predictor, model_path):
    from PIL import Image

    from server.imaging import model_input

    pred = calibrated_predictor
    assert pred.tta == "flips" and pred.temperature == 2.5
    img = Image.new("RGB", (40, 40), (200, 60, 60))
    raw = pred.predict_arrays(model_input(img, pred.input_size)[None])[0]
    out = pred.predict_image(img)
    assert out.temperature == 2.5 and out.tta == "flips" and out.uncertain_threshold == 0.7
    by_code = {c.code: c.probability for c in out.classes}
    expected = temperature_scale(raw[None], 2.5)[0]  # a flat image is its own flip
    for i, code in enumerate(pred.classes):
        assert by_code[code] == pytest.approx(expected[i], abs=2e-6)
    assert out.top.probability < raw.max()  # softened
    assert out.to_dict()["calibration"] == {"temperature": 2.5, "tta": "flips"}
    off = Predictor.from_path(model_path, runtime="tensorflow", tta="off")
    assert off.tta == "off" and off.temperature is None  # the fixture's own card has no calibration


def test_tta_is_on_only_when_its_gain_pays_for_its_cost():
    from training.calibration import choose_tta

    fast = {"off": 10.0, "flips": 25.0, "full": 60.0}
    assert choose_tta({"off": 0.70, "flips": 0.705, "full": 0.708}, fast) == "off"  # gains below one point
    assert choose_tta({"off": 0.70, "flips": 0.715, "full": 0.718}, fast) == "flips"  # cheapest near the best
    assert choose_tta({"off": 0.70, "flips": 0.705, "full": 0.72}, fast) == "off"  # 2 points for 6x the cost
    assert choose_tta({"off": 0.70, "flips": 0.705, "full": 0.73}, fast) == "full"  # 3 points pay for 2.6 doublings
    slow = {"off": 10.0, "flips": 200.0, "full": 500.0}
    assert choose_tta({"off": 0.70, "flips": 0.715, "full": 0.72}, slow) == "off"  # too slow to serve
