"""Int8 serving on the colour fixture: the quantize step, its sha256 tie to the ``.h5``, the fallback
to float32, the INFERENCE_PRECISION setting, and /readyz and /model saying which arithmetic answers."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest

from server.model.card import CARD_FILENAME, ModelCard
from server.model.files import ModelLoadError, file_sha256
from server.model.precision import wanted_precision
from server.model.predictor import Predictor
from tests.fixture_model import BLUE_CLASS, GREEN_CLASS, RED_CLASS


def colour_batch(size: int, n: int = 24, seed: int = 0) -> np.ndarray:
    """Flat-ish pictures of random colours with a little noise, as model inputs in [-1, 1]."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(-1, 1, (n, 1, 1, 3))
    return np.clip(colours + rng.normal(0, 0.1, (n, size, size, 3)), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def quantized(model_path, tmp_path_factory):
    """A copy of the fixture's run folder with its int8 graph made by ``training.quantize``."""
    from training.quantize import quantize_run

    folder = tmp_path_factory.mktemp("int8-model")
    for name in (model_path.name, CARD_FILENAME):
        shutil.copy(model_path.parent / name, folder / name)
    card_path = folder / CARD_FILENAME
    card = ModelCard.from_dict(json.loads(card_path.read_text()))
    h5 = folder / model_path.name
    spec = quantize_run(h5, card, file_sha256(h5), colour_batch(card.input_size, seed=1))
    card.replace(int8=spec).write(card_path)
    return h5


def with_card(h5, tmp_path, **changes):
    """A copy of the quantized run folder whose card's int8 section has ``changes``."""
    for path in h5.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    card_path = tmp_path / CARD_FILENAME
    card = ModelCard.from_dict(json.loads(card_path.read_text()))
    card.replace(int8=replace(card.int8, **changes)).write(card_path)
    return tmp_path / h5.name


def load(h5, precision, cache=None):
    return Predictor.from_path(h5, runtime="onnxruntime", onnx_cache=cache, precision=precision)


def test_the_int8_graph_is_quantized_and_tied_to_the_h5_by_sha256(quantized):
    import onnx

    card = ModelCard.from_dict(json.loads((quantized.parent / CARD_FILENAME).read_text()))
    assert card.int8.source_sha256 == file_sha256(quantized) == card.sha256
    graph_path = quantized.parent / card.int8.classifier.file
    assert card.int8.classifier.sha256 == file_sha256(graph_path)
    assert card.int8.branch is None  # the fixture carries no ImageNet branch
    ops = {node.op_type for node in onnx.load(str(graph_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    assert card.int8.meets_bar is None, "nothing measured the bar yet"


def test_int8_answers_stay_close_to_float32(quantized, tmp_path):
    f32, i8 = load(quantized, "float32", tmp_path), load(quantized, "int8", tmp_path)
    assert (f32.precision, i8.precision) == ("float32", "int8")
    x = colour_batch(f32.input_size, seed=2)
    p32, p8 = f32.predict_arrays(x), i8.predict_arrays(x)
    assert not np.array_equal(p32, p8), "int8 answered bit for bit as float32: its graph did not run"
    assert np.abs(p32 - p8).max() < 0.03
    assert (p32.argmax(axis=1) == p8.argmax(axis=1)).mean() >= 0.95
    fm32, fm8 = f32.forward(x)[0], i8.forward(x)[0]  # the feature map Grad-CAM and the non-skin check read
    assert np.abs(fm32 - fm8).max() < 0.02 * np.abs(fm32).max()


@pytest.mark.parametrize("colour, code", [((1.0, -1, -1), RED_CLASS), ((-1, 1.0, -1), GREEN_CLASS),
                                          ((-1, -1, 1.0), BLUE_CLASS)])
def test_int8_picks_the_same_class_on_clear_colours(quantized, tmp_path, colour, code):
    i8 = load(quantized, "int8", tmp_path)
    x = np.broadcast_to(np.asarray(colour, np.float32), (1, i8.input_size, i8.input_size, 3)).copy()
    assert i8.classes[int(i8.predict_arrays(x)[0].argmax())] == code


def test_int8_from_another_h5_falls_back_to_float32_with_a_log_line(quantized, tmp_path, caplog):
    h5 = with_card(quantized, tmp_path, source_sha256="0" * 64)
    with caplog.at_level(logging.WARNING, logger="server.model.precision"):
        p = load(h5, "int8")
    assert p.precision == "float32"
    assert any("quantized from another .h5" in r.getMessage() for r in caplog.records), caplog.text


def test_an_int8_file_that_differs_from_its_sha256_falls_back_to_float32(quantized, tmp_path, caplog):
    h5 = with_card(quantized, tmp_path)
    card = ModelCard.from_dict(json.loads((tmp_path / CARD_FILENAME).read_text()))
    graph = tmp_path / card.int8.classifier.file
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with caplog.at_level(logging.WARNING, logger="server.model.precision"):
        p = load(h5, "int8")
    assert p.precision == "float32"
    assert any("does not match the sha256" in r.getMessage() for r in caplog.records), caplog.text
    graph.unlink()
    assert load(h5, "int8").precision == "float32"


def test_a_card_without_int8_graphs_serves_float32(model_path):
    assert load(model_path, "int8").precision == "float32"


def test_auto_serves_int8_only_where_the_card_says_it_met_the_bar(quantized, tmp_path):
    card = ModelCard.from_dict(json.loads((quantized.parent / CARD_FILENAME).read_text()))
    assert wanted_precision("auto", card).precision == "float32"
    assert wanted_precision(None, card).precision == "float32"
    passed = card.replace(int8=replace(card.int8, meets_bar=True))
    assert wanted_precision("auto", passed).precision == "int8"
    assert wanted_precision("auto", passed).prove, "auto serves int8 only once this CPU has checked it"
    assert wanted_precision("float32", passed).precision == "float32"
    assert wanted_precision("int8", card).precision == "int8"
    assert not wanted_precision("int8", card).prove, "int8 forces the graphs, checked or not"
    with pytest.raises(ModelLoadError, match="INFERENCE_PRECISION"):
        wanted_precision("int4", card)


def test_the_setting_is_read_from_the_environment(monkeypatch):
    from server.config import config_from_env

    monkeypatch.delenv("INFERENCE_PRECISION", raising=False)
    assert config_from_env()["INFERENCE_PRECISION"] == "auto"
    monkeypatch.setenv("INFERENCE_PRECISION", "int8")
    assert config_from_env()["INFERENCE_PRECISION"] == "int8"


def test_readyz_and_the_model_page_say_which_arithmetic_answers(quantized, model_path):
    from server import create_app

    def app_for(h5, precision):
        return create_app({"MODEL_PATH": str(h5), "TESTING": True, "SECRET_KEY": "test-secret",
                           "INFERENCE_PRECISION": precision}).test_client()

    int8 = app_for(quantized, "int8")
    assert int8.get("/readyz").json["precision"] == "int8"
    assert "int8: graphs quantized from this model" in int8.get("/model").get_data(as_text=True)
    plain = app_for(model_path, "auto")
    assert plain.get("/readyz").json["precision"] == "float32"
    assert "float32, the arithmetic the model was trained in" in plain.get("/model").get_data(as_text=True)


def test_int8_weights_round_each_output_channel_on_its_own_scale():
    """One channel's outlier (a batch-norm fold gone wide) costs that channel its small weights, never the others."""
    from training.weight_sensitivity import int8_weights

    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, :, 0, 0] = [56.0, 0.3, -0.2]
    w[1, :, 0, 0] = [1.0, 0.3, -0.2]
    q = int8_weights(w)
    assert q[0, 0, 0, 0] == pytest.approx(56.0) and q[0, 2, 0, 0] == 0.0  # 0.2 < half a step of 56/127
    np.testing.assert_allclose(q[1], w[1], atol=0.5 / 127)


def bar_figures(**changes) -> dict:
    base = {"balanced_accuracy": 0.70, "malignant_auc": 0.90, "coverage": 0.52, "malignant_sensitivity": 0.885}
    return {**base, **changes}


def refusals(changed: int = 0) -> dict:
    return {"lesions": {"float32": 6, "int8": 6, "n": 100, "changed": changed},
            "everyday": {"float32": 40, "int8": 40, "n": 45, "changed": 0}}


@pytest.mark.parametrize("int8_changes, met", [
    ({}, True),
    ({"balanced_accuracy": 0.691}, True), ({"balanced_accuracy": 0.689}, False),
    ({"malignant_auc": 0.896}, True), ({"malignant_auc": 0.894}, False),
    ({"coverage": 0.529}, True), ({"coverage": 0.531}, False), ({"coverage": 0.509}, False),
    ({"malignant_sensitivity": 0.885}, True), ({"malignant_sensitivity": 0.884}, False),
], ids=lambda v: str(v))
def test_the_bar_holds_int8_to_each_limit(int8_changes, met):
    from training.int8_bar import bar

    verdict = bar(bar_figures(), bar_figures(**int8_changes), refusals(), np.array([0.95, 0.97]), 0.1, target=0.90)
    assert verdict["meets_bar"] is met, verdict["checks"]
    assert verdict["sensitivity_floor"] == 0.885  # float32 itself is below the 0.90 target: int8 may not go lower


def test_one_changed_refusal_or_heatmaps_that_wander_fail_the_bar():
    from training.int8_bar import bar

    same = bar_figures()
    assert not bar(same, same, refusals(changed=1), np.array([0.95]), 0.1, 0.90)["meets_bar"]
    assert not bar(same, same, refusals(), np.array([0.95, 0.80]), 0.1, 0.90)["meets_bar"]
    assert not bar(same, same, refusals(), np.array([]), 0.1, 0.90)["meets_bar"]
    assert bar(same, same, refusals(), np.array([0.95]), 0.1, 0.90, same_top_class=0.97)["meets_bar"]
    assert not bar(same, same, refusals(), np.array([0.95]), 0.1, 0.90, same_top_class=0.969)["meets_bar"]


def test_the_bar_screens_uploads_as_the_service_does(quantized, tmp_path):
    """``int8_bar`` reads each picture through ``open_upload`` and ``predict_image`` in each precision."""
    from PIL import Image

    from training.int8_bar import heatmap_correlations, screen_all, top_codes, upload_of

    f32, i8 = load(quantized, "float32", tmp_path), load(quantized, "int8", tmp_path)
    uploads = [upload_of(Image.new("RGB", (64, 48), colour)) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    a = screen_all(f32, uploads, explain=True)
    b = screen_all(i8, uploads, explain=True, explain_codes=top_codes(f32, a))
    assert a.probs.shape == b.probs.shape == (3, len(f32.classes))
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0, atol=1e-3)
    assert [f32.classes[i] for i in a.probs.argmax(axis=1)] == [RED_CLASS, GREEN_CLASS, BLUE_CLASS]
    assert (a.probs.argmax(axis=1) == b.probs.argmax(axis=1)).all()
    assert a.refused.dtype == bool and len(a.refused) == 3
    assert all(g is not None for g in a.grids + b.grids), "explain=True: a Grad-CAM for every picture"
    assert len(heatmap_correlations(a, b)) == 0, "a flat colour gives a flat map, which no correlation can judge"


@pytest.mark.parametrize("score, answer, again", [
    (0.40, "usual", False), (0.84, "usual", False), (0.86, "usual", True),
    (1.20, "unusual", True), (0.50, "unusual", True), (77.0, "refused", True), (None, None, False),
])
def test_int8_screens_again_in_float32_anywhere_near_a_nonskin_level(score, answer, again):
    """A picture int8 places within the margin of unusual, or beyond, gets float32's answer (margin 0.15)."""
    from server.model.second_look import near_a_nonskin_level

    assert near_a_nonskin_level(score, answer) is again


def test_the_imagenet_gate_opens_earlier_for_int8_features():
    from server.model.nonskin import NonSkinCheck

    check = NonSkinCheck((), None, imagenet_gate=40.0)
    assert check.gate_opened_by(0.15).imagenet_gate == pytest.approx(34.0)
    assert check.imagenet_gate == 40.0, "the card's own gate is left as it is"
    assert NonSkinCheck((), None, None).gate_opened_by(0.15).imagenet_gate is None


def test_an_int8_predictor_keeps_float32_beside_it_for_the_second_look(quantized, tmp_path):
    f32, i8 = load(quantized, "float32", tmp_path), load(quantized, "int8", tmp_path)
    x = colour_batch(f32.input_size, seed=3)
    np.testing.assert_array_equal(i8.forward(x, float32=True)[1], f32.forward(x)[1])
    assert not np.array_equal(i8.forward(x)[1], f32.forward(x)[1])
    np.testing.assert_array_equal(f32.forward(x, float32=True)[1], f32.forward(x)[1])  # float32 served: no twin


def test_an_int8_answer_quotes_int8s_own_test_figure_or_names_float32s(quantized, tmp_path):
    from PIL import Image

    measured = with_card(quantized, tmp_path, extra={"bar": {"test": {"int8": {"balanced_accuracy": 0.47}}}})
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    figure = load(measured, "int8", tmp_path).predict_image(image).model.test_figure
    assert (figure.balanced_accuracy, figure.precision, figure.served) == (0.47, "int8", "int8")
    unmeasured = load(quantized, "int8", tmp_path / "cache").predict_image(image).model.test_figure
    assert (unmeasured.precision, unmeasured.served) == ("float32", "int8")
    assert unmeasured.name == "float32, photo alone; int8 served, not measured so"
