"""The host check before int8 is served by default: a damaged graph is refused with its reason, a good one is
kept, a slow one is refused, and the decision is made once per host and graph, not per request."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from server.imaging import scale_pixels
from server.model import int8_check
from server.model.card import CARD_FILENAME, ModelCard
from server.model.files import file_sha256
from tests.test_int8 import colour_batch, load, quantized, with_card  # noqa: F401 (quantized is a fixture)


@pytest.fixture
def fast_enough(monkeypatch):
    """The tiny fixture model runs int8 no faster than float32 (its overheads dominate), so tests of the
    accuracy side lift the speed condition; ``test_int8_that_is_not_faster_is_not_served`` keeps it."""
    monkeypatch.setattr(int8_check, "INT8_CHECK_MIN_SPEEDUP", 0.0)


def damaged(h5, tmp_path, factor: float):
    """A copy of the run whose int8 classifier has every weight scale multiplied by ``factor``, the card
    re-pinned to the damaged file and marked as having met the bar: only the host check can catch it."""
    import onnx
    from onnx import numpy_helper

    folder = with_card(h5, tmp_path, meets_bar=True)
    card_path = tmp_path / CARD_FILENAME
    card = ModelCard.from_dict(json.loads(card_path.read_text()))
    graph_path = tmp_path / card.int8.classifier.file
    graph = onnx.load(str(graph_path))
    inits = {i.name: i for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type in (2, 3):
            scale = inits[node.input[1]]  # a weight's scale: its input is a stored integer tensor
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    onnx.save(graph, str(graph_path))
    spec = replace(card.int8, classifier=replace(card.int8.classifier, sha256=file_sha256(graph_path)))
    card.replace(int8=spec).write(card_path)
    return folder


def test_the_reference_batch_ships_beside_the_graphs_and_keeps_its_pixels_exactly(quantized):  # noqa: F811
    card = ModelCard.from_dict(json.loads((quantized.parent / CARD_FILENAME).read_text()))
    path = quantized.parent / card.int8.reference.file
    assert card.int8.reference.sha256 == file_sha256(path)
    reference = int8_check.read_reference(path)
    assert reference.inputs.dtype == np.float32 and reference.inputs.shape[1:] == (card.input_size, card.input_size, 3)
    assert reference.probabilities.shape == (len(reference.inputs), len(card.classes))
    np.testing.assert_array_equal(scale_pixels(int8_check.pixels_of(reference.inputs)), reference.inputs)
    assert len(np.unique(reference.inputs)) > 100, "real pictures, not a constant"
    x = colour_batch(8, n=2)
    assert not np.array_equal(scale_pixels(int8_check.pixels_of(x)), x), "arbitrary floats are rounded to pixels"


def test_a_good_int8_graph_is_kept_and_says_why(quantized, tmp_path, fast_enough):  # noqa: F811
    p = load(with_card(quantized, tmp_path, meets_bar=True), "auto", tmp_path / "cache")
    assert p.precision == "int8", p.precision_choice
    assert p.precision_choice.reason.startswith("int8 graphs checked on this CPU")
    figures = p.precision_choice.figures
    assert figures["top_class_changed"] <= 0.10 and figures["mean_probability_change"] < 0.015
    assert figures["cpu"] == int8_check.cpu_flags()


@pytest.mark.parametrize("factor", [1.6, 0.4])
def test_a_damaged_int8_graph_makes_the_service_serve_float32_with_the_reason(
        quantized, tmp_path, caplog, fast_enough, factor):  # noqa: F811
    h5 = damaged(quantized, tmp_path, factor)
    with caplog.at_level(logging.WARNING, logger="server.model.precision"):
        p = load(h5, "auto", tmp_path / "cache")
    assert p.precision == "float32"
    assert "checked on this CPU and not served" in p.precision_choice.reason
    assert any("served in float32: int8 graphs checked" in r.getMessage() for r in caplog.records), caplog.text
    assert load(h5, "int8", tmp_path / "cache").precision == "int8", "INFERENCE_PRECISION=int8 still forces them"


def test_int8_that_is_not_faster_is_not_served(quantized, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(int8_check, "INT8_CHECK_MIN_SPEEDUP", 1000.0)
    p = load(with_card(quantized, tmp_path, meets_bar=True), "auto", tmp_path / "cache")
    assert p.precision == "float32"
    assert "int8 is not faster here" in p.precision_choice.reason
    assert p.precision_choice.figures["int8_ms"] > 0 and p.precision_choice.figures["float32_ms"] > 0


def test_the_check_runs_once_per_host_and_graph_not_per_request(
        quantized, tmp_path, monkeypatch, fast_enough):  # noqa: F811
    calls = []
    real = int8_check.measure
    monkeypatch.setattr(int8_check, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    h5, cache = with_card(quantized, tmp_path, meets_bar=True), tmp_path / "cache"
    p = load(h5, "auto", cache)
    for seed in range(3):
        p.predict_arrays(colour_batch(p.input_size, n=2, seed=seed))
    assert calls == [1], "one check at load, none per request"
    again = load(h5, "auto", cache)
    assert calls == [1], "a second worker on this host reads the cached decision"
    assert again.precision == "int8" and again.precision_choice == p.precision_choice
    monkeypatch.setattr(int8_check, "cpu_flags", lambda: "x86_64 avx2")
    load(h5, "auto", cache)
    assert calls == [1, 1], "another CPU decides again"


def test_without_a_reference_batch_auto_serves_float32(quantized, tmp_path):  # noqa: F811
    h5 = with_card(quantized, tmp_path, meets_bar=True, reference=None)
    p = load(h5, "auto", tmp_path / "cache")
    assert p.precision == "float32" and "no reference batch" in p.precision_choice.reason


@pytest.mark.parametrize("key, value, refused", [
    ("top_class_changed", 0.10, False), ("top_class_changed", 0.13, True),
    ("flag_changed", 0.0625, False), ("flag_changed", 0.08, True), ("mean_probability_change", 0.015, False),
    ("mean_probability_change", 0.016, True), ("branch_feature_gap", 0.2, False), ("branch_feature_gap", 0.3, True),
])
def test_each_limit_refuses_just_beyond_it(key, value, refused):
    figures = {"photos": 48, "top_class_changed": 0.0, "flag_changed": 0.0, "mean_probability_change": 0.0, key: value}
    assert (int8_check.disagreement(figures) is not None) is refused


def test_speed_is_compared_with_a_margin():
    assert int8_check.slower({"int8_ms": 2.0, "float32_ms": 4.0}) is None
    assert "not faster" in int8_check.slower({"int8_ms": 3.9, "float32_ms": 4.0})
    assert "not faster" in int8_check.slower({"int8_ms": 5.0, "float32_ms": 4.0})


def test_the_speed_test_screens_pictures_through_both_predictors(quantized, tmp_path, monkeypatch):  # noqa: F811
    """Timed through ``predict_image``, so the float32 pass of close calls counts against int8."""
    calls = {"int8": 0, "float32": 0}
    real = int8_check.per_photo_ms

    def counting(predictor, pictures):
        calls[predictor.precision] += len(pictures)
        return real(predictor, pictures)

    monkeypatch.setattr(int8_check, "per_photo_ms", counting)
    p = load(with_card(quantized, tmp_path, meets_bar=True), "auto", tmp_path / "cache")
    assert calls["int8"] > 0 and calls["int8"] == calls["float32"], calls
    assert {"int8_ms", "float32_ms"} <= set(p.precision_choice.figures)


def test_readyz_says_which_precision_answers_and_why(quantized, tmp_path, monkeypatch, fast_enough):  # noqa: F811
    from server import create_app

    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path / "cache"))
    h5 = damaged(quantized, tmp_path, 1.6)
    client = create_app({"MODEL_PATH": str(h5), "TESTING": True, "SECRET_KEY": "test-secret",
                         "INFERENCE_PRECISION": "auto", "ONNX_CACHE_DIR": str(tmp_path / "cache")}).test_client()
    ready = client.get("/readyz").json
    assert ready["precision"] == "float32" and "not served" in ready["precision_reason"]
    assert "checked on this CPU and not served" in client.get("/model").get_data(as_text=True)


@pytest.mark.parametrize("probs, close", [
    ([0.90, 0.05, 0.05], False),  # far from every decision (flag threshold 0.4 on class 2, uncertain 0.7)
    ([0.50, 0.47, 0.03], True),  # the top two within 0.05
    ([0.72, 0.20, 0.08], True),  # the top probability within 0.05 of uncertain
    ([0.10, 0.52, 0.38], True),  # P(malignant) within 0.05 of the flag's threshold
    ([0.10, 0.56, 0.34], False),  # 0.06 from each
])
def test_a_close_call_is_one_near_any_decision_the_answer_makes(probs, close):
    from server.model.second_look import close_call

    malignant = np.array([False, False, True])
    assert close_call(np.asarray(probs), malignant, 0.40, 0.70) is close


@pytest.mark.parametrize("probs, close", [
    ([0.80, 0.05, 0.15], False),  # every class a factor 1.25 or more from its minimum of 0.12
    ([0.80, 0.07, 0.13], True),  # class 2 at 0.13: within a factor exp(0.2) = 1.22 of 0.12, in the list
    ([0.80, 0.10, 0.10], True),  # class 1 at 0.10: within that factor below its minimum, out of the list
])
def test_with_a_differential_a_class_near_its_listing_minimum_is_a_close_call(probs, close):
    from server.model.second_look import close_call

    malignant = np.array([False, False, False])
    assert close_call(np.asarray(probs), malignant, None, None, np.array([0.12, 0.12, 0.12])) is close


def test_an_int8_predictor_decides_close_calls_in_float32(quantized, tmp_path, monkeypatch):  # noqa: F811
    """With every picture a close call, an int8 predictor's answers are float32's, to the last digit."""
    from PIL import Image

    from server.model import second_look

    f32, i8 = load(quantized, "float32", tmp_path), load(quantized, "int8", tmp_path)
    pictures = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (120, 130, 90), (30, 30, 200))]
    apart = [i8.predict_image(p).classes for p in pictures]
    assert apart != [f32.predict_image(p).classes for p in pictures], "int8 answers differ from float32 somewhere"
    malignant = np.asarray([c in ("mel", "bcc", "akiec") for c in i8.classes])
    monkeypatch.setattr(i8, "close_call", lambda probs, given: second_look.close_call(probs, malignant, None, None, None, 2.0))
    assert [i8.predict_image(p).classes for p in pictures] == [f32.predict_image(p).classes for p in pictures]


def test_a_host_that_chose_float32_never_loads_the_int8_graphs_again(quantized, tmp_path, monkeypatch):  # noqa: F811
    from server.model import precision

    monkeypatch.setattr(int8_check, "INT8_CHECK_MIN_SPEEDUP", 1000.0)
    h5, cache = with_card(quantized, tmp_path, meets_bar=True), tmp_path / "cache"
    assert load(h5, "auto", cache).precision == "float32"
    loads = []
    real = precision.int8_served
    monkeypatch.setattr(precision, "int8_served", lambda *a, **k: loads.append(1) or real(*a, **k))
    again = load(h5, "auto", cache)
    assert again.precision == "float32" and "not faster" in again.precision_choice.reason
    assert loads == [], "the cached float32 verdict is read before any int8 graph is loaded"
