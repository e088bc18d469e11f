"""Empirical bias correction on hand-made one-convolution graphs: the shift it measures and puts back."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from training.bias_correction import channel_means, correct_biases  # noqa: E402

RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
SCALE = np.full(4, 0.01, np.float32)  # the int32 bias's scale, as input scale x weight scale would give


def conv_graph(bias: np.ndarray, int32_bias: bool = False):
    """x (N, 3, 8, 8) -> Conv (4 channels, 3x3, padded) -> y; the bias float, or int32 behind a DequantizeLinear."""
    nodes, inits = [], [numpy_helper.from_array(WEIGHTS, "w")]
    if int32_bias:
        inits += [numpy_helper.from_array(np.round(bias / SCALE).astype(np.int32), "b_q"),
                  numpy_helper.from_array(SCALE, "b_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], axis=0, name="bias_dq"))
    else:
        inits.append(numpy_helper.from_array(bias, "b"))
    nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "one-conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def images(n: int = 30) -> np.ndarray:
    return RNG.normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


def test_channel_means_are_over_images_and_positions():
    from onnxruntime import InferenceSession

    x = images(30)  # more than one batch, the last one short
    y = InferenceSession(conv_graph(BIAS).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    means = channel_means(conv_graph(BIAS), x, ["y"])[0]
    np.testing.assert_allclose(means, y.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("int32_bias", [False, True], ids=["float bias", "int32 bias"])
@pytest.mark.parametrize("share", [1.0, 0.5])
def test_the_measured_shift_is_put_back_by_its_share(int32_bias, share):
    x = images()
    shift = np.array([0.25, -0.4, 0.0, 0.12], np.float32)  # what rounding would have moved each channel by
    reference, shifted = conv_graph(BIAS), conv_graph(BIAS + shift, int32_bias)
    corrected, shifts = correct_biases(reference, shifted, x, share=share)
    assert shifts == {"conv": pytest.approx(np.abs(shift).mean(), abs=0.01)}
    left = channel_means(corrected, x, ["y"])[0] - channel_means(reference, x, ["y"])[0]
    np.testing.assert_allclose(left, (1 - share) * shift, atol=0.006)  # int32: up to half a scale step off


def test_nothing_moves_where_int8_already_matches():
    x = images()
    corrected, shifts = correct_biases(conv_graph(BIAS), conv_graph(BIAS, int32_bias=True), x)
    assert shifts["conv"] < 0.006
    bias = numpy_helper.to_array(next(i for i in corrected.graph.initializer if i.name == "b_q"))
    np.testing.assert_array_equal(bias, np.round(BIAS / SCALE).astype(np.int32))
