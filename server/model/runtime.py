"""Running the model: TensorFlow thread pools, the served two-output graph, ONNX Runtime or TensorFlow.

The service runs inference through ONNX Runtime on a graph converted from the ``.h5``
(parity with TensorFlow checked on fixed probe inputs), falling back to a ``tf.function``
with a fixed input signature. The conversion (tf2onnx) is most of a worker's start-up, so
the converted graphs are cached on disk (``server/model/onnx_cache.py``) with TensorFlow's
outputs on the probes; a start that finds everything cached checks the graphs against
those outputs and never imports TensorFlow (``server/model/serving.py``). A cached graph
that fails its check is discarded and converted again. Measured on 2 cores at batch 1:
``Model.predict`` 126 ms, ``tf.function`` 24-30 ms, ONNX Runtime 5-6 ms. TensorFlow is
imported inside the functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from server.model.files import ModelLoadError
from server.model.onnx_cache import OPSET, OnnxCache

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "tensorflow")
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_tf| on probe images (features: relative); float32 kernels differ far less

_TF_THREADS: dict = {}  # the thread counts asked for, applied when TensorFlow is first needed


def configure_tf_threads(intra_op: int, inter_op: int) -> None:
    """Pin TensorFlow's thread pools (before its first op in the process). Applied at once when
    TensorFlow is already imported, else by ``apply_tf_threads`` on the path that needs it: a
    worker served from the ONNX cache never imports TensorFlow at all."""
    _TF_THREADS.update(intra=intra_op, inter=inter_op)
    if "tensorflow" in sys.modules:
        apply_tf_threads()


def apply_tf_threads() -> None:
    """Apply ``configure_tf_threads``'s setting; call before loading a model with Keras."""
    if not _TF_THREADS:
        return
    import tensorflow as tf

    try:
        if _TF_THREADS["intra"]:
            tf.config.threading.set_intra_op_parallelism_threads(_TF_THREADS["intra"])
        if _TF_THREADS["inter"]:
            tf.config.threading.set_inter_op_parallelism_threads(_TF_THREADS["inter"])
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

    return keras.Model(model.inputs[0], float32_copy(branch)(model.inputs[0]), name="served_imagenet")


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


def patient_width(model) -> int:
    """The width of the model's second input (the patient context), 0 for an image-only model."""
    return int(model.inputs[1].shape[-1]) if len(model.inputs) > 1 else 0


def input_specs(model, size: int) -> list:
    """``tf.TensorSpec``s of the model's inputs: the image, then the patient context when it reads one."""
    import tensorflow as tf

    specs = [tf.TensorSpec((None, size, size, 3), tf.float32, name="image")]
    if patient_width(model):
        specs.append(tf.TensorSpec((None, patient_width(model)), tf.float32, name="patient"))
    return specs


def model_call(model):
    """``model`` in inference mode as a function of one array per input (image, then patient)."""
    if patient_width(model):
        return lambda x, p: model([x, p], training=False)
    return lambda x: model(x, training=False)


def tensorflow_runner(model, size: int):
    """A ``tf.function`` with a fixed signature: about 5x faster than ``Model.predict`` at batch 1.

    The runner takes one array per model input (the image batch, then the patient batch)."""
    import tensorflow as tf

    fn = tf.function(model_call(model), input_signature=input_specs(model, size), reduce_retracing=True)

    def run(*batches):
        out = fn(*batches)
        return tuple(o.numpy() for o in out) if isinstance(out, (list, tuple)) else out.numpy()

    return run


def onnx_graph(model, size: int) -> bytes:
    """Convert the loaded Keras model to a serialised ONNX graph with tf2onnx (seconds: the slow part of a start).

    A two-output model (feature map, probabilities) becomes a two-output graph: one run gives
    both. A model that reads the patient context has a second input, ``patient``.
    """
    import tensorflow as tf
    import tf2onnx

    fn = tf.function(model_call(model))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=tuple(input_specs(model, size)), opset=OPSET)
    return proto.SerializeToString()


def onnx_session_runner(graph: bytes, threads: int = 0):
    """An ONNX Runtime session on a serialised graph, as a runner (one array per input -> output or tuple)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(session.get_outputs()) == 1:
        return lambda *batches: session.run(None, dict(zip(names, batches)))[0]
    return lambda *batches: tuple(session.run(None, dict(zip(names, batches))))


def probe_inputs(size: int, patient: int = 0, seed: int = 0) -> list:
    """Fixed random probe images (and with ``patient`` > 0 a random context each, the first
    empty): what parity is checked on, at conversion and, from the cache, at every start."""
    rng = np.random.default_rng(seed)
    probe = [rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)]
    if patient:
        context = (rng.random((3, patient)) < 0.3).astype(np.float32)
        context[0] = 0.0
        probe.append(context)
    return probe


def as_outputs(out) -> list:
    """A runner's output as a list of arrays (one per graph output)."""
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


def outputs_gap(outputs, expected) -> float:
    """Largest difference between two runs' outputs, each scaled by its largest expected value
    when above 1: for probabilities the absolute gap (the parity the service promises), for
    a feature map the gap relative to its activations. Different or non-finite outputs: infinite."""
    if len(outputs) != len(expected) or any(a.shape != b.shape for a, b in zip(outputs, expected)):
        return float("inf")
    gaps = [float(np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, float(np.abs(b).max())))
            for a, b in zip(outputs, expected)]
    return max(gaps) if np.all(np.isfinite(gaps)) else float("inf")  # NaN would compare as "close"


def parity_gap(runner, probe, expected) -> float:
    """How far ``runner`` is from the ``expected`` outputs on the ``probe`` inputs."""
    return outputs_gap(as_outputs(runner(*probe)), expected)


def cached_onnx_runner(model, size: int, threads: int, tf_run, cache: OnnxCache | None, kind: str):
    """(ONNX runner, parity gap against ``tf_run``): the cached graph when it loads and matches
    TensorFlow, else a fresh conversion. A graph that matches is cached with TensorFlow's
    outputs on the probe inputs, which let a later start check it without TensorFlow."""
    probe = probe_inputs(size, patient_width(model))
    expected = as_outputs(tf_run(*probe))
    if cache is not None:
        graph = cache.read(kind, size)
        if graph is not None:
            try:
                run = onnx_session_runner(graph, threads)
                gap = parity_gap(run, probe, expected)
            except Exception as exc:  # a truncated or corrupt file: ONNX Runtime refuses it
                log.warning("cached ONNX graph %s is unusable (%s); converting again", cache.path(kind, size),
                            exc.__class__.__name__)
            else:
                if gap <= PARITY_TOLERANCE:
                    cache.write_expected(kind, size, probe, expected)
                    return run, gap
                log.warning("cached ONNX graph %s differs from TensorFlow by %.2e; converting again",
                            cache.path(kind, size), gap)
            cache.discard(kind, size)
    graph = onnx_graph(model, size)
    run = onnx_session_runner(graph, threads)
    gap = parity_gap(run, probe, expected)
    if cache is not None and gap <= PARITY_TOLERANCE:
        cache.write(kind, size, graph)
        cache.write_expected(kind, size, probe, expected)
    return run, gap


def choose_runner(model, size: int, runtime: str = "auto", threads: int = 0, cache: OnnxCache | None = None,
                  kind: str = "classifier"):
    """(runner, name): ONNX Runtime when it converts (or ``cache`` holds the graph) and matches TensorFlow,
    else TensorFlow. ``kind`` names the graph in the cache (classifier, branch)."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"INFERENCE_RUNTIME={runtime!r} is not one of {', '.join(RUNTIMES)}")
    tf_run = tensorflow_runner(model, size)
    if runtime == "tensorflow":
        return tf_run, "tensorflow"
    try:
        ort_run, gap = cached_onnx_runner(model, size, threads, tf_run, cache, kind)
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
