"""The ONNX graph cache: a warm cache skips tf2onnx, a bad file is rebuilt, the key follows the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.model import onnx_cache, runtime
from server.model.onnx_cache import OnnxCache
from server.model.predictor import Predictor
from tests.fixture_model import build_colour_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def conversions(monkeypatch):
    """Counts tf2onnx conversions (the real ones still run)."""
    calls = []
    real = runtime.onnx_graph

    def counted(model, size):
        calls.append(size)
        return real(model, size)

    monkeypatch.setattr(runtime, "onnx_graph", counted)
    return calls


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory):
    """The colour fixture with other weights: the same inputs and outputs, other answers."""
    from training.export import base_card, export_model

    model = build_colour_model()
    kernel, bias = model.get_layer("classes").get_weights()
    model.get_layer("classes").set_weights([-kernel, bias])
    card = base_card(name="other-fixture", version="test", input_size=model.inputs[0].shape[1],
                     architecture="colour fixture, negated", thresholds={"malignant": 0.5})
    return export_model(model, tmp_path_factory.mktemp("other-model"), card)[0]


def load(model_path, cache_dir):
    return Predictor.from_path(model_path, runtime="onnxruntime", onnx_cache=cache_dir)


def probe(p):
    return np.random.default_rng(3).uniform(-1, 1, (2, p.input_size, p.input_size, 3)).astype(np.float32)


def test_a_warm_cache_skips_the_conversion_and_serves_the_same_answers(model_path, tmp_path, conversions):
    first = load(model_path, tmp_path)
    assert len(conversions) == 1 and first.runtime == "onnxruntime"
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    second = load(model_path, tmp_path)
    assert len(conversions) == 1, "the second load converted again"
    assert second.runtime == "onnxruntime"
    np.testing.assert_allclose(second.predict_arrays(probe(second)), first.predict_arrays(probe(first)), atol=1e-6)


def test_a_corrupt_cached_graph_is_converted_again_and_replaced(model_path, tmp_path, conversions):
    load(model_path, tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])  # a truncated write, say
    p = load(model_path, tmp_path)
    assert len(conversions) == 2 and p.runtime == "onnxruntime"
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"
    load(model_path, tmp_path)  # the rebuilt file is whole: the next load takes it
    assert len(conversions) == 2


def test_a_cached_graph_of_another_model_fails_parity_and_is_replaced(model_path, other_model_path, tmp_path,
                                                                      conversions):
    """A graph that loads but computes something else (here: another model's, same inputs)
    fails the stored-output check without TensorFlow, then parity against TensorFlow, and is converted again."""
    load(other_model_path, tmp_path / "other")
    load(model_path, tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    (foreign,) = (tmp_path / "other").glob("*.onnx")
    cached.write_bytes(foreign.read_bytes())
    p = load(model_path, tmp_path)
    assert len(conversions) == 3 and p.runtime == "onnxruntime"
    np.testing.assert_allclose(p.predict_arrays(probe(p)), Predictor.from_path(model_path).predict_arrays(probe(p)),
                               atol=1e-6)
    assert cached.read_bytes() != foreign.read_bytes()


def test_the_key_follows_the_model_sha256_the_graph_and_the_input_size(tmp_path):
    a, b = OnnxCache(tmp_path, "a" * 64), OnnxCache(tmp_path, "b" * 64)
    paths = {a.path("classifier", 224), b.path("classifier", 224), a.path("branch", 224), a.path("classifier", 192)}
    assert len(paths) == 4
    assert a.path("classifier", 224) == OnnxCache(tmp_path, "a" * 64).path("classifier", 224)


def test_the_key_follows_the_converter_and_runtime_versions(tmp_path, monkeypatch):
    cache = OnnxCache(tmp_path, "a" * 64)
    before = cache.path("classifier", 224), cache.expect_path("classifier", 224), cache.record_path(224)
    monkeypatch.setattr(onnx_cache, "versions", lambda: {"tf2onnx": "0", "onnxruntime": "0", "tensorflow": "0"})
    after = cache.path("classifier", 224), cache.expect_path("classifier", 224), cache.record_path(224)
    assert not set(before) & set(after)


def test_the_versions_are_read_without_importing_tensorflow():
    """The key must be computable by a worker that never imports TensorFlow or tf2onnx."""
    code = ("import json, sys; from server.model.onnx_cache import versions; v = versions(); "
            "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules, sorted(sys.modules); "
            "print(json.dumps(v))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # What they are, checked here: this process has imported TensorFlow already, the fresh one need not.
    import onnxruntime
    import tensorflow
    import tf2onnx

    assert json.loads(done.stdout) == {"tensorflow": tensorflow.__version__, "tf2onnx": tf2onnx.__version__,
                                       "onnxruntime": onnxruntime.__version__}, done.stdout


def test_an_unwritable_cache_still_serves(model_path, tmp_path, conversions):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = load(model_path, blocker / "onnx")
    assert p.runtime == "onnxruntime" and len(conversions) == 1


def test_the_app_reads_the_cache_folder_from_the_environment(monkeypatch, tmp_path):
    from server.config import config_from_env

    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path))
    assert config_from_env()["ONNX_CACHE_DIR"] == str(tmp_path)
    monkeypatch.setenv("ONNX_CACHE_DIR", "off")
    assert config_from_env()["ONNX_CACHE_DIR"] == ""
    monkeypatch.delenv("ONNX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert config_from_env()["ONNX_CACHE_DIR"] == str(tmp_path / "lesion-screening" / "onnx")


def test_the_gap_is_infinite_for_nan_or_other_shapes_and_relative_for_features():
    """A graph answering NaN must never count as matching (NaN compares as neither near nor far)."""
    probs, fmap = np.full((2, 7), 1 / 7, np.float32), np.full((2, 3, 3, 4), 6.0, np.float32)
    assert runtime.outputs_gap([probs, fmap], [probs, fmap]) == 0.0
    assert runtime.outputs_gap([probs * np.nan, fmap], [probs, fmap]) == float("inf")
    assert runtime.outputs_gap([probs[:1], fmap], [probs, fmap]) == float("inf")
    assert runtime.outputs_gap([probs], [probs, fmap]) == float("inf")
    assert runtime.outputs_gap([probs + 2e-4, fmap], [probs, fmap]) == pytest.approx(2e-4, rel=1e-3)
    assert runtime.outputs_gap([probs, fmap + 6e-4], [probs, fmap]) == pytest.approx(1e-4, rel=1e-3)
