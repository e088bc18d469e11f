"""The classifier's head in numpy: Grad-CAM's gradient without TensorFlow.

Grad-CAM needs ``d logit[class] / d pooled`` (``explain.head_gradient``), which only
involves the small head between the GAP layer and the softmax Dense: zero or more Dense
layers (ReLU or linear; Dropout is the identity at inference), then the softmax Dense,
whose input may be the image features concatenated with the ``patient`` context. Those
weights are a megabyte or two, so the process that loads the ``.h5`` writes them to the
ONNX cache (``head_arrays``) and a worker that never imports TensorFlow computes the same
gradient from them (``NumpyHead``). A head of any other shape has no numpy form
(``head_arrays`` returns None) and is served by TensorFlow as before.

The patient context enters linearly at the last layer, so it shifts the logits but not
their gradient with respect to the pooled features; its rows are kept all the same, so
``NumpyHead.probabilities`` reproduces the model's output and a start can check the stored
weights against the graph's probe outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _producer(tensor):
    """The layer that made a Keras tensor (None for one it cannot tell)."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _dense_activation(layer) -> str | None:
    return getattr(getattr(layer, "activation", None), "__name__", None)


def head_arrays(model, gap_name: str) -> dict | None:
    """The head's weights as named arrays, walking back from the softmax Dense to the GAP
    layer, or None when some layer on the way has no numpy form here (Keras side; reads
    weights, runs no op)."""
    import keras

    last, gap = model.layers[-1], model.get_layer(gap_name)
    if not isinstance(last, keras.layers.Dense) or _dense_activation(last) != "softmax":
        return None
    kernel = np.asarray(last.kernel.numpy(), np.float32)
    rows = (0, kernel.shape[0])
    tensor, dense = last.input, []
    concat = _producer(tensor)
    if isinstance(concat, keras.layers.Concatenate):  # [features, patient] -> softmax Dense
        parts = list(concat.input)
        widths = [int(t.shape[-1]) for t in parts]
        image = [i for i, t in enumerate(parts) if not isinstance(_producer(t), keras.layers.InputLayer)]
        if len(image) != 1 or concat.axis not in (-1, 1):
            return None
        start = sum(widths[:image[0]])
        rows, tensor = (start, start + widths[image[0]]), parts[image[0]]
    while True:
        layer = _producer(tensor)
        if layer is gap:
            break
        if isinstance(layer, keras.layers.Dropout):
            tensor = layer.input
        elif isinstance(layer, keras.layers.Dense) and _dense_activation(layer) in ("relu", "linear"):
            bias = layer.bias.numpy() if layer.bias is not None else np.zeros(layer.units)
            dense.insert(0, (layer.kernel.numpy(), bias, _dense_activation(layer) == "relu"))
            tensor = layer.input
        else:
            return None
    bias = last.bias.numpy() if last.bias is not None else np.zeros(kernel.shape[1])
    arrays = {"head_out_kernel": kernel, "head_out_bias": np.asarray(bias, np.float32),
              "head_rows": np.asarray(rows, np.int64), "head_relu": np.asarray([d[2] for d in dense], bool)}
    for i, (k, b, _) in enumerate(dense):
        arrays[f"head_dense_{i}_kernel"] = np.asarray(k, np.float32)
        arrays[f"head_dense_{i}_bias"] = np.asarray(b, np.float32)
    return arrays


@dataclass(frozen=True)
class NumpyHead:
    """pooled features (and patient context) -> logits, and d logit[class] / d pooled, in numpy."""

    dense: tuple  # ((kernel (k, m), bias (m,), relu: bool), ...) from the pooled vector on
    out_kernel: np.ndarray  # the softmax Dense's kernel: the features' rows, then the patient's (or before them)
    out_bias: np.ndarray
    rows: tuple[int, int]  # the softmax kernel's rows fed by the image features

    @classmethod
    def from_arrays(cls, arrays: dict) -> "NumpyHead":
        relu = [bool(r) for r in arrays["head_relu"]]
        dense = tuple((arrays[f"head_dense_{i}_kernel"], arrays[f"head_dense_{i}_bias"], r) for i, r in enumerate(relu))
        start, stop = (int(v) for v in arrays["head_rows"])
        return cls(dense, arrays["head_out_kernel"], arrays["head_out_bias"], (start, stop))

    def _hidden(self, pooled: np.ndarray) -> tuple[np.ndarray, list]:
        """The features entering the softmax layer, and each ReLU's open units (float32, as the graph)."""
        h, masks = np.asarray(pooled, np.float32), []
        for kernel, bias, relu in self.dense:
            pre = h @ kernel + bias
            masks.append(pre > 0 if relu else None)
            h = np.maximum(pre, 0.0) if relu else pre
        return h, masks

    def logits(self, pooled: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """(n, classes) pre-softmax scores; ``context``: the patient rows' input, None for nothing given."""
        h, _ = self._hidden(pooled)
        start, stop = self.rows
        out = h @ self.out_kernel[start:stop] + self.out_bias
        if stop - start < len(self.out_kernel):  # the patient's rows: nothing given is all zeros
            other = np.concatenate([self.out_kernel[:start], self.out_kernel[stop:]])
            if context is not None:
                out = out + np.asarray(context, np.float32) @ other
        return out

    def probabilities(self, pooled: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        z = self.logits(pooled, context).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def __call__(self, pooled, classes, context=None) -> np.ndarray:
        """d logit[classes[i]] / d pooled[i], (n, k) float32: ``explain.head_gradient``'s answer.

        Back-propagation by hand: the class's column of the softmax kernel (its feature rows),
        through each Dense layer's transposed kernel, zeroed where its ReLU was closed (as
        TensorFlow's ReLU gradient is, at exactly 0 too). ``context`` does not change it."""
        _, masks = self._hidden(pooled)
        start, stop = self.rows
        grad = self.out_kernel[start:stop].T[np.asarray(classes, np.int64)].astype(np.float64)
        for (kernel, _, _), mask in zip(reversed(self.dense), reversed(masks)):
            if mask is not None:
                grad = grad * mask
            grad = grad @ kernel.T.astype(np.float64)
        return grad.astype(np.float32)
