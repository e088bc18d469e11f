"""The ONNX graph cache: a warm cache skips tf2onnx, a bad file is rebuilt, the key follows the model."""

from __future__ import annotations

import numpy as np
import pytest

from server.model import runtime
from server.model.predictor import Predictor
from server.model.runtime import OnnxCache


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


def test_a_cached_graph_that_fails_parity_is_discarded(model_path, tmp_path, conversions, monkeypatch):
    load(model_path, tmp_path)
    real, gaps = runtime.parity_gap, []

    def first_fails(a, b, size, patient=0, seed=0):
        gaps.append(size)
        return 1.0 if len(gaps) == 1 else real(a, b, size, patient, seed)

    monkeypatch.setattr(runtime, "parity_gap", first_fails)
    p = load(model_path, tmp_path)
    assert len(conversions) == 2 and p.runtime == "onnxruntime"
    assert len(list(tmp_path.glob("*.onnx"))) == 1


def test_the_key_follows_the_model_sha256_the_graph_and_the_input_size(tmp_path):
    a, b = OnnxCache(tmp_path, "a" * 64), OnnxCache(tmp_path, "b" * 64)
    paths = {a.path("classifier", 224), b.path("classifier", 224), a.path("branch", 224), a.path("classifier", 192)}
    assert len(paths) == 4
    assert a.path("classifier", 224) == OnnxCache(tmp_path, "a" * 64).path("classifier", 224)


def test_the_key_follows_the_converter_and_runtime_versions(tmp_path, monkeypatch):
    cache = OnnxCache(tmp_path, "a" * 64)
    before = cache.path("classifier", 224)
    monkeypatch.setattr(runtime, "_versions", lambda: {"tf2onnx": "0", "onnxruntime": "0", "tensorflow": "0"})
    assert cache.path("classifier", 224) != before


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
