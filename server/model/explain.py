"""Grad-CAM: where the model looked, as a heatmap over the centre square it was shown.

Both models this service serves end in ``last conv feature map -> GlobalAveragePooling ->
small head`` (MobileNetV2: ``out_relu`` 7x7x1280 -> ``head_pool`` -> dense -> dropout ->
``head_out``; the test fixture: ``conv_identity`` -> GAP -> dense). Grad-CAM weights each
feature channel by the average gradient of the class score over the map's positions.
Because GAP hands every position the same gradient, that average is just
``d score / d pooled / (h*w)``: the gradient is taken on the tiny head alone, from the
pooled vector, and the feature map comes from the same single forward pass that gives
the probabilities (the served graph has it as a second output). No second pass through
the backbone, so explaining costs little more than predicting (``bench/bench_explain.py``).

The class score is the pre-softmax logit of the class (as in Selvaraju et al., 2017).

This module's rendering half is numpy + Pillow only (no matplotlib, no TensorFlow), so
the reports can redraw a heatmap from the compact grid a signed report token carries.
TensorFlow is imported only inside ``feature_layer_names`` and ``head_gradient`` (called by
the Predictor and the runtime). A worker started from the ONNX cache computes the same
gradient in numpy (``server/model/head.py``), whose agreement with ``head_gradient`` is
checked, for every class, before the head's weights are cached.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from server.imaging import centre_square, jpeg_bytes

OVERLAY_ALPHA = 0.45  # heatmap opacity over the photo


# ---------------------------------------------------------------- Grad-CAM maths

def grad_cam(feature_map: np.ndarray, pooled_gradient: np.ndarray) -> np.ndarray:
    """(h, w, k) feature map and d score / d pooled (k,) -> (h, w) map in [0, 1].

    ReLU keeps only positive evidence for the class; the map is scaled by its maximum
    (all zeros when nothing speaks for the class).
    """
    fmap = np.asarray(feature_map, dtype=np.float32)
    h, w = fmap.shape[:2]
    weights = np.asarray(pooled_gradient, dtype=np.float32).reshape(-1) / float(h * w)
    cam = np.maximum(fmap @ weights, 0.0)
    top = float(cam.max())
    return cam / top if top > 0 else np.zeros_like(cam)


def to_grid(cam: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Quantise a [0, 1] map to 0..255 integers: the compact form the JSON and report token carry.

    MobileNetV2's map is 7x7, so a heatmap travels in 49 small integers rather than a picture.
    """
    q = np.clip(np.rint(np.asarray(cam, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return tuple(tuple(int(v) for v in row) for row in q)


def from_grid(grid) -> np.ndarray:
    arr = np.asarray(grid, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0 or arr.min() < 0 or arr.max() > 255:
        raise ValueError("a heatmap grid is a non-empty 2-D array of integers 0..255")
    return arr / 255.0


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (size, size), the model input's shape."""
    img = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------- rendering

def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colormap in numpy: 0 -> dark blue, 0.5 -> green/yellow, 1 -> dark red. Returns uint8 RGB."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, cam: np.ndarray, size: int, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The heatmap blended over the centre square of ``image`` (what the model saw), size x size."""
    square = np.asarray(centre_square(image.convert("RGB"), size), dtype=np.float32)
    heat = upsample(cam, size)
    colours = jet(heat).astype(np.float32)
    # Cold regions stay mostly photo, hot regions mostly colour: the lesion stays readable.
    a = (alpha * (0.35 + 0.65 * heat))[..., None]
    blended = square * (1.0 - a) + colours * a
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def render(image: Image.Image, grid, size: int) -> Image.Image:
    """THE heatmap renderer: a quantised grid drawn over the centre square of ``image``, size x size.

    The predictor draws the JSON's and the result page's PNG with it, the PDF report its JPEG:
    every picture of a heatmap comes from the grid the Prediction carries.
    """
    return overlay(image, from_grid(grid), size)


def heatmap_jpeg(heatmap, thumbnail: bytes | None, size: int = 224) -> bytes | None:
    """A ``Heatmap``'s overlay as a JPEG, drawn from its grid over the thumbnail's centre square.

    The report token carries grids, not pictures: the PDF and the result page's other
    classes redraw them this way. Without a thumbnail, the heatmap's own PNG (or grey).
    """
    if heatmap is None:
        return None
    if thumbnail:
        with Image.open(io.BytesIO(thumbnail)) as im:
            base = im.convert("RGB")
    elif heatmap.png:
        with Image.open(io.BytesIO(heatmap.png)) as im:
            return jpeg_bytes(im.convert("RGB"))
    else:
        base = Image.new("RGB", (size, size), (128, 128, 128))
    return jpeg_bytes(render(base, heatmap.grid, size))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: level 1 costs ~1 ms at 224 px, level 6 several
    return buf.getvalue()


# ---------------------------------------------------------------- the model side (TensorFlow)

def feature_layer_names(model) -> tuple[str, str] | None:
    """(feature map layer, GAP layer) of a model that ends in conv map -> GAP -> head, or None."""
    import keras

    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        return None
    gap = pools[-1]
    source = gap.input._keras_history.operation if hasattr(gap.input, "_keras_history") else None
    if source is None:
        return None
    return source.name, gap.name


def head_gradient(model, gap_name: str):
    """A function (pooled (n, k) float32, class indices (n,), patient (n, w) or None) -> d logit[class] / d pooled, (n, k).

    Runs on the head only (pooled vector, and the patient context when the model reads one,
    -> last Dense), which is a few small matrix products.
    When the last layer is a softmax Dense, its logits are recomputed from its kernel and
    bias (the saved model outputs probabilities); otherwise log-probabilities stand in.
    """
    import keras
    import tensorflow as tf

    gap = model.get_layer(gap_name)
    last = model.layers[-1]
    is_softmax_dense = isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax"
    extra = list(model.inputs[1:])  # the patient context, when the model reads one
    if is_softmax_dense:
        kernel, bias = last.kernel, last.bias
        # GAP straight into the classifier (the test fixture): nothing between them.
        head = (lambda x, training=False: x) if last.input is gap.output and not extra \
            else keras.Model([gap.output, *extra] if extra else gap.output, last.input)
    else:
        head = keras.Model([gap.output, *extra] if extra else gap.output, model.output)
    width = int(gap.output.shape[-1])
    context_width = int(extra[0].shape[-1]) if extra else 1

    @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, context_width], tf.float32)], reduce_retracing=True)
    def gradient(pooled, classes, context):
        with tf.GradientTape() as tape:
            tape.watch(pooled)
            out = head([pooled, context] if extra else pooled, training=False)
            scores = (tf.matmul(out, kernel) + (bias if bias is not None else 0.0)) if is_softmax_dense \
                else tf.math.log(out + 1e-12)
            score = tf.gather(scores, classes, batch_dims=1)
        return tape.gradient(score, pooled)

    def run(pooled, classes, context=None):
        pooled = np.asarray(pooled, np.float32)
        context = np.zeros((len(pooled), context_width), np.float32) if context is None else np.asarray(context, np.float32)
        return gradient(pooled, np.asarray(classes, np.int32), context).numpy()

    return run
