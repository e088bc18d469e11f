"""Which convolutions cannot take int8 weights: each one's weights rounded alone, and the change it makes.

One layer of the shipped MobileNetV2 did most of int8's damage (its folded batch normalisation left one
channel's weights 180 times the median, so the small ones rounded to zero), so ``training.quantize`` keeps
in float32 each convolution whose int8 weights alone move the graph's probabilities by more than its
tolerance, measured here on calibration photos.
"""

from __future__ import annotations

import numpy as np

from training.bias_correction import quiet_session


def probabilities(graph_bytes: bytes, images: np.ndarray, output: int = -1) -> np.ndarray:
    """The graph's last output (its probabilities), or another ``output``, for each image (batch 1),
    patient context "not given"."""
    session = quiet_session(graph_bytes)
    inputs = session.get_inputs()
    rest = {i.name: np.zeros((1, i.shape[-1]), np.float32) for i in inputs[1:]}
    return np.stack([session.run(None, {inputs[0].name: images[k:k + 1], **rest})[output][0].reshape(-1)
                     for k in range(len(images))])


def backbone_nodes(graph) -> list[str]:
    """Names of the nodes the graph's first output depends on, in graph order: what is quantized."""
    producer = {out: node for node in graph.graph.node for out in node.output}
    needed, todo = set(), [graph.graph.output[0].name]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        todo.extend(node.input)
    return [node.name for node in graph.graph.node if node.name in needed]


def int8_weights(w: np.ndarray) -> np.ndarray:
    """Convolution weights (out, in, kh, kw) rounded as per-channel symmetric int8 does, back in float32."""
    scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


def weight_sensitivity(graph, images: np.ndarray) -> dict[str, float]:
    """For each convolution of the backbone: how far its weights alone, rounded to int8, move the graph's
    probabilities (mean |change|) on ``images``."""
    from onnx import numpy_helper

    reference = probabilities(graph.SerializeToString(), images)
    initializers = {i.name: i for i in graph.graph.initializer}
    backbone = set(backbone_nodes(graph))
    out = {}
    for node in graph.graph.node:
        if node.op_type != "Conv" or node.name not in backbone or node.input[1] not in initializers:
            continue
        init = initializers[node.input[1]]
        original = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(int8_weights(original), init.name))
        changed = probabilities(graph.SerializeToString(), images)
        init.CopyFrom(numpy_helper.from_array(original, init.name))
        out[node.name] = float(np.abs(changed - reference).mean())
    return out
