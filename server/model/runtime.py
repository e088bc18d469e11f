"""Running the model: TensorFlow thread pools, the served two-output graph, ONNX Runtime or TensorFlow.

The service runs inference through ONNX Runtime on a graph converted from the ``.h5`` at
start-up (parity with TensorFlow checked each time), falling back to a ``tf.function``
with a fixed input signature. Measured on 2 cores at batch 1: ``Model.predict`` 126 ms,
``tf.function`` 24-30 ms, ONNX Runtime 5-6 ms. TensorFlow is imported inside the
functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import logging

import numpy as np

from server.model.files import ModelLoadError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "tensorflow")
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_tf| on probe images; float32 kernels differ far less


def configure_tf_threads(intra_op: int, inter_op: int) -> None:
    """Pin TensorFlow's thread pools; must run before the first TF op in the process."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # already initialised (e.g. several apps in one test process)
        pass


IMAGENET_BRANCH = "imagenet"  # the nested ImageNet network an exported model may carry (training/export.py)


def split_branch(model):
    """(the classifier alone, the nested ImageNet network or None) of a loaded ``.h5``.

    An exported model may carry the ImageNet network (pooled features, 1000 probabilities)
    as a second and third output beside the class probabilities; everything that reads the
    classifier (Grad-CAM's head, the class count) gets the classifier alone.
    """
    if IMAGENET_BRANCH not in {layer.name for layer in model.layers}:
        return model, None
    import keras

    return keras.Model(model.inputs, model.outputs[0], name=model.name), model.get_layer(IMAGENET_BRANCH)


def float32_copy(branch):
    """The branch computing in float32. It is stored in float16 to keep the ``.h5`` small;
    float16 kernels are slow or missing on CPUs and ONNX Runtime, so it is widened once here."""
    import keras

    def widened(layer):
        if isinstance(layer, keras.Model):  # a nested model: widen its layers too
            return keras.models.clone_model(layer, clone_function=widened)
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(branch, clone_function=widened)
    copy.set_weights([np.asarray(w, np.float32) for w in branch.get_weights()])
    return copy


def served_branch(model, branch):
    """The ImageNet branch alone, in float32, on the model's input: (pooled features, probabilities).

    Served as its own graph, so it runs only for the images the non-skin check asks it about.
    """
    import keras

    return keras.Model(model.inputs, float32_copy(branch)(model.inputs[0]), name="served_imagenet")


def served_model(model):
    """(model returning (feature map, probabilities), feature layer, GAP layer) or (model, None, None).

    The feature map is the GAP layer's input: ``out_relu`` for MobileNetV2, ``conv_identity``
    for the test fixture. A model without GAP is served as before, without explanations or
    the non-skin check.
    """
    from server.model.explain import feature_layer_names

    names = feature_layer_names(model)
    if names is None:
        return model, None, None
    import keras

    both = keras.Model(model.inputs, [model.get_layer(names[0]).output, model.output], name="served")
    return both, names[0], names[1]


def as_pair(out):
    """Runner output -> (feature map or None, probabilities); for the branch, (pooled features, probabilities)."""
    if isinstance(out, (list, tuple)) and len(out) == 2:
        return np.asarray(out[0]), np.asarray(out[1])
    return None, np.asarray(out)


def tensorflow_runner(model, size: int):
    """A ``tf.function`` with a fixed signature: about 5x faster than ``Model.predict`` at batch 1."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)

    def run(batch):
        out = fn(batch)
        return tuple(o.numpy() for o in out) if isinstance(out, (list, tuple)) else out.numpy()

    return run


def onnx_runner(model, size: int, threads: int = 0):
    """Convert the loaded Keras model to ONNX in memory and run it with ONNX Runtime.

    Derived from the ``.h5`` at every start rather than shipped beside it, so the ``.h5``
    stays the single source of truth and no second file can go stale. A two-output model
    (feature map, probabilities) becomes a two-output graph: one run gives both.
    """
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    fn = tf.function(lambda x: model(x, training=False))
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    n_out = len(session.get_outputs())
    if n_out == 1:
        return lambda batch: session.run(None, {name: batch})[0]
    return lambda batch: tuple(session.run(None, {name: batch}))


def parity_gap(runner_a, runner_b, size: int, seed: int = 0) -> float:
    """Largest probability difference between two runners on fixed random probe images."""
    probe = np.random.default_rng(seed).uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    return float(np.abs(as_pair(runner_a(probe))[1] - as_pair(runner_b(probe))[1]).max())


def choose_runner(model, size: int, runtime: str = "auto", threads: int = 0):
    """(runner, name): ONNX Runtime when it converts and matches TensorFlow, else TensorFlow."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"INFERENCE_RUNTIME={runtime!r} is not one of {', '.join(RUNTIMES)}")
    tf_run = tensorflow_runner(model, size)
    if runtime == "tensorflow":
        return tf_run, "tensorflow"
    try:
        ort_run = onnx_runner(model, size, threads)
        gap = parity_gap(ort_run, tf_run, size)
    except Exception as exc:  # converter or runtime missing or failing: TensorFlow still serves
        if runtime == "onnxruntime":
            raise ModelLoadError(f"ONNX Runtime was required but failed: {exc.__class__.__name__}: {exc}") from None
        log.warning("ONNX Runtime unavailable (%s: %s); serving with TensorFlow", exc.__class__.__name__, exc)
        return tf_run, "tensorflow"
    if gap > PARITY_TOLERANCE:
        if runtime == "onnxruntime":
            raise ModelLoadError(f"ONNX output differs from TensorFlow by {gap:.2e} (> {PARITY_TOLERANCE:g})")
        log.warning("ONNX output differs from TensorFlow by %.2e; serving with TensorFlow", gap)
        return tf_run, "tensorflow"
    return ort_run, "onnxruntime"
