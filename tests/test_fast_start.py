"""A worker start from the ONNX cache alone (issue #16): no TensorFlow, the same answers.

A warm cache must give what loading the ``.h5`` with TensorFlow gives: probabilities,
Grad-CAM heatmaps (the numpy head gradient against TensorFlow's), the patient context's
effect, the same errors; and every missing, truncated or altered cache file must be caught
and repaired by the TensorFlow path, never served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.model import predictor as predictor_module
from server.model.explain import feature_layer_names, head_gradient
from server.model.files import ModelLoadError, check_model_files, file_sha256
from server.model.head import NumpyHead, head_arrays
from server.model.onnx_cache import OnnxCache
from server.model.predictor import Predictor
from server.model.runtime import split_branch
from server.patient import MODEL_VECTOR_SIZE
from tests.fast_start_screen import screen
from tests.fixture_model import TINY_BLOCKS, build_colour_model
from training.export import base_card, export_model

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def tiny_mobilenet(with_patient: bool):
    """The shipped model's architecture in miniature: MobileNetV2 (its first blocks) -> GAP -> Dense ReLU -> Dropout
    (-> + patient context) -> softmax Dense, random weights (so ReLUs are open and closed)."""
    from training.model import build_model
    from training.patient_context import with_patient_input

    model = build_model(7, input_size=SIZE, alpha=0.35, weights=None, dense_units=16, dropout=0.3, blocks=TINY_BLOCKS)
    if not with_patient:
        return model
    return with_patient_input(model, np.random.default_rng(4).normal(0, 2, (MODEL_VECTOR_SIZE, 7)))


def export(model, out_dir: Path) -> Path:
    card = base_card(name="fast-start-fixture", version="test", input_size=SIZE, architecture="test fixture",
                     thresholds={"malignant": 0.5})
    return export_model(model, out_dir, card)[0]


@pytest.fixture(scope="module")
def mobilenet_path(tmp_path_factory):
    return export(tiny_mobilenet(with_patient=True), tmp_path_factory.mktemp("mobilenet"))


@pytest.fixture()
def keras_starts(monkeypatch):
    """Counts Predictors built through Keras and TensorFlow (the others came from the cache)."""
    calls = []
    real = predictor_module.serve_keras

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "serve_keras", counted)
    return calls


# ---------------------------------------------------------------- the same service, without TensorFlow

CASES = [("red", (200, 40, 40), {}), ("blue", (40, 50, 210), {"age": "70", "sex": "male"}),
         ("plain", (120, 160, 90), {}), ("face", (120, 160, 90), {"site": "face", "age": "35"})]


def screened(model_path: Path, cache_dir: str) -> dict:
    """The CASES screened by the real app in a fresh interpreter (``cache_dir``: ONNX_CACHE_DIR)."""
    env = {**os.environ, "ONNX_CACHE_DIR": cache_dir, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.fast_start_screen", str(model_path), json.dumps(CASES)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("which", ["model_path", "context_model_path", "mobilenet_path"])
def test_a_warm_cache_serves_the_same_answers_without_importing_tensorflow(which, request, tmp_path, keras_starts):
    model_path = request.getfixturevalue(which)
    # The TensorFlow paths run in this process, which has imported TensorFlow already; only the
    # warm start, which must not import it, needs an interpreter of its own.
    with_tf = screen(model_path, CASES, {"ONNX_CACHE_DIR": ""})  # no cache: Keras, tf2onnx, TensorFlow's gradient
    screen(model_path, CASES, {"ONNX_CACHE_DIR": str(tmp_path)})  # a cold cache: the same path, which fills it
    warm = screened(model_path, str(tmp_path))
    assert len(keras_starts) == 2, "without a warm cache both starts build the model with Keras and TensorFlow"
    assert not warm["tensorflow_after_start"] and not warm["tensorflow_at_the_end"]
    assert warm["runtime"] == with_tf["runtime"] == "onnxruntime"
    for name, _, _ in CASES:
        a, b = warm[name], with_tf[name]
        assert a["patient"] == b["patient"]
        assert [c["code"] for c in a["probabilities"]] == [c["code"] for c in b["probabilities"]]
        np.testing.assert_allclose([c["probability"] for c in a["probabilities"]],
                                   [c["probability"] for c in b["probabilities"]], atol=1e-4)
        assert a["heatmap"]["class"] == b["heatmap"]["class"]
        assert a["heatmap"]["grid"] == b["heatmap"]["grid"], name
    by_code = {name: {c["code"]: c["probability"] for c in warm[name]["probabilities"]} for name in ("plain", "face")}
    moved = max(abs(by_code["face"][code] - by_code["plain"][code]) for code in by_code["plain"])
    assert (moved > 1e-3) == (which != "model_path"), "only a model with a patient input reads the context"


# ---------------------------------------------------------------- Grad-CAM's gradient in numpy

def gradients_agree(model, pooled: np.ndarray, context: np.ndarray | None) -> None:
    classifier, _ = split_branch(model)
    _, gap = feature_layer_names(classifier)
    arrays = head_arrays(classifier, gap)
    assert arrays is not None
    numpy_head, tf_head = NumpyHead.from_arrays(arrays), head_gradient(classifier, gap)
    largest = 0.0
    for c in range(7):
        classes = np.full(len(pooled), c)
        expected = tf_head(pooled, classes, context)
        largest = max(largest, float(np.abs(expected).max()))
        np.testing.assert_allclose(numpy_head(pooled, classes, context), expected, rtol=1e-5, atol=1e-6)
    assert largest > 0.1, "the gradients compared must not all be zero"


@pytest.mark.parametrize("with_patient", [False, True])
def test_the_numpy_gradient_is_tensorflows_through_relu_dropout_and_the_patient_rows(with_patient):
    import keras

    model = tiny_mobilenet(with_patient)
    rng = np.random.default_rng(0)
    pooled = rng.uniform(0, 6, (16, model.get_layer("head_pool").output.shape[-1])).astype(np.float32)
    context = (rng.random((16, MODEL_VECTOR_SIZE)) < 0.3).astype(np.float32) if with_patient else None
    head = NumpyHead.from_arrays(head_arrays(split_branch(model)[0], "head_pool"))
    _, masks = head._hidden(pooled)
    assert 0.1 < masks[0].mean() < 0.9, "the test must exercise open and closed ReLUs"
    gradients_agree(model, pooled, context)
    head_only = keras.Model([model.get_layer("head_pool").output, *model.inputs[1:]], model.output)
    np.testing.assert_allclose(head.probabilities(pooled, context),
                               head_only.predict([pooled, context] if with_patient else pooled, verbose=0), atol=1e-5)


def test_the_numpy_gradient_of_the_colour_fixtures_is_tensorflows():
    from tests.fixture_model import build_colour_context_model

    rng = np.random.default_rng(1)
    gradients_agree(build_colour_model(), rng.uniform(-1, 1, (4, 3)).astype(np.float32), None)
    context = (rng.random((4, MODEL_VECTOR_SIZE)) < 0.3).astype(np.float32)
    gradients_agree(build_colour_context_model(), rng.uniform(-1, 1, (4, 3)).astype(np.float32), context)


def layer_norm_head():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1, name="conv")(inputs))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.LayerNormalization()(x))
    return keras.Model(inputs, outputs)


def separate_softmax_head():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1, name="conv")(inputs))
    return keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(7)(x)))


@pytest.mark.parametrize("build", [layer_norm_head, separate_softmax_head])
def test_a_head_without_a_numpy_form_is_served_by_tensorflow_every_time(build, tmp_path, keras_starts):
    model = build()
    assert head_arrays(model, feature_layer_names(model)[1]) is None
    model_path = export(model, tmp_path / "model")
    first = Predictor.from_path(model_path, onnx_cache=tmp_path / "cache")
    second = Predictor.from_path(model_path, onnx_cache=tmp_path / "cache")
    assert len(keras_starts) == 2 and second.runtime == "onnxruntime"
    assert not list((tmp_path / "cache").glob("*-model-*")), "no record: nothing to start from without TensorFlow"
    x = np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(first.predict_arrays(x), second.predict_arrays(x), atol=1e-6)


# ---------------------------------------------------------------- what is checked on the way

def test_the_same_errors_from_a_warm_cache(model_path, tmp_path, keras_starts):
    Predictor.from_path(model_path, onnx_cache=tmp_path)
    messages = []
    for cache in (tmp_path, None):
        with pytest.raises(ModelLoadError) as caught:
            Predictor.from_path(model_path, tta="sideways", onnx_cache=cache)
        messages.append(str(caught.value))
        assert len(keras_starts) == 1, "only the first load, which filled the cache, built anything with Keras"
    assert messages[0] == messages[1] and "TTA='sideways'" in messages[0]


def test_a_swapped_h5_is_refused_even_with_a_warm_cache(model_path, tmp_path, keras_starts):
    copy = tmp_path / "model"
    copy.mkdir()
    for f in model_path.parent.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    Predictor.from_path(copy / model_path.name, onnx_cache=tmp_path / "cache")
    export(build_colour_model(), tmp_path / "other")
    (copy / model_path.name).write_bytes((tmp_path / "other" / model_path.name).read_bytes())
    with pytest.raises(ModelLoadError, match="do not belong together"):
        Predictor.from_path(copy / model_path.name, onnx_cache=tmp_path / "cache")


def test_a_record_of_another_model_is_never_used(model_path, tmp_path, keras_starts):
    """The record names the sha256 it was written for; a file under another model's name is refused."""
    Predictor.from_path(model_path, onnx_cache=tmp_path)
    sha = file_sha256(model_path)
    mine, theirs = OnnxCache(tmp_path, sha), OnnxCache(tmp_path, "f" * 64)
    theirs.write("classifier", SIZE, mine.read("classifier", SIZE))
    theirs.write_expected("classifier", SIZE, *mine.read_expected("classifier", SIZE))
    theirs.write_record(SIZE, mine.read_record(SIZE))
    card, _ = check_model_files(model_path)
    assert Predictor.from_cache(card, "f" * 64, tmp_path) is None
    assert Predictor.from_cache(card, sha, tmp_path) is not None


def damage(path: Path, how: str) -> None:
    """Delete, truncate, or alter what the file says while keeping it readable."""
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        key = "out_1" if "out_1" in arrays else "head_out_bias"
        arrays[key] = arrays[key].copy()
        arrays[key][..., 0] += 0.05  # one class only: a shift of every logit alike changes no probability
        with open(path, "wb") as f:
            np.savez(f, **arrays)


@pytest.mark.parametrize("which", ["expect", "record"])
@pytest.mark.parametrize("how", ["missing", "truncated", "altered"])
def test_a_damaged_file_falls_back_to_tensorflow_and_is_rewritten(which, how, model_path, tmp_path, keras_starts):
    first = Predictor.from_path(model_path, onnx_cache=tmp_path)
    cache = OnnxCache(tmp_path, file_sha256(model_path))
    path = cache.expect_path("classifier", SIZE) if which == "expect" else cache.record_path(SIZE)
    damage(path, how)
    again = Predictor.from_path(model_path, onnx_cache=tmp_path)
    assert len(keras_starts) == 2, "a damaged file was trusted"
    x = np.random.default_rng(5).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(again.predict_arrays(x), first.predict_arrays(x), atol=1e-6)
    Predictor.from_path(model_path, onnx_cache=tmp_path)
    assert len(keras_starts) == 2, "the TensorFlow path did not repair the cache"
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
