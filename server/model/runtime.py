"""Running the model: TensorFlow thread pools, the served two-output graph, ONNX Runtime or TensorFlow.

The service runs inference through ONNX Runtime on a graph converted from the ``.h5``
(parity with TensorFlow checked at every start), falling back to a ``tf.function`` with a
fixed input signature. The conversion (tf2onnx) is most of a worker's start-up, so the
service caches the converted graphs on disk (``OnnxCache``), keyed by the ``.h5``'s sha256
and everything else the graph depends on; a cached graph still has to pass the parity
check, and one that fails it is discarded and converted again. Measured on 2 cores at batch 1: ``Model.predict`` 126 ms,
``tf.function`` 24-30 ms, ONNX Runtime 5-6 ms. TensorFlow is imported inside the
functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.model.files import ModelLoadError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "tensorflow")
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_tf| on probe images; float32 kernels differ far less
OPSET = 17


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


def tensorflow_runner(model, size: int):
    """A ``tf.function`` with a fixed signature: about 5x faster than ``Model.predict`` at batch 1.

    The runner takes one array per model input (the image batch, then the patient batch)."""
    import tensorflow as tf

    two = bool(patient_width(model))
    call = (lambda x, p: model([x, p], training=False)) if two else (lambda x: model(x, training=False))
    fn = tf.function(call, input_signature=input_specs(model, size), reduce_retracing=True)

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

    two = bool(patient_width(model))
    fn = tf.function((lambda x, p: model([x, p], training=False)) if two else (lambda x: model(x, training=False)))
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


def _versions() -> dict:
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {"tf2onnx": tf2onnx.__version__, "onnxruntime": onnxruntime.__version__, "tensorflow": tf.__version__}


@dataclass(frozen=True)
class OnnxCache:
    """Converted ONNX graphs on disk, one file per (model sha256, graph kind, input size, opset, versions).

    The ``.h5`` stays the single source of truth: a graph is only ever a cache of its
    conversion, found by the ``.h5``'s sha256, so a retrained model can never be served an
    old graph, and a graph is re-checked against TensorFlow at every load. Files are
    written to a temporary name and renamed into place, so two workers starting together
    never read a half-written graph (the last rename wins; both wrote the same bytes).
    """

    directory: Path
    model_sha256: str

    def path(self, kind: str, size: int) -> Path:
        key = {"sha256": self.model_sha256, "kind": kind, "size": size, "opset": OPSET, **_versions()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.directory) / f"{self.model_sha256[:16]}-{kind}-{size}-{digest}.onnx"

    def read(self, kind: str, size: int) -> bytes | None:
        try:
            return self.path(kind, size).read_bytes()
        except OSError:
            return None

    def write(self, kind: str, size: int, graph: bytes) -> None:
        """Atomically store a graph; a cache that cannot be written only costs the next start a conversion."""
        target = self.path(kind, size)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(graph)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers may read the cache too
            os.replace(tmp, target)
            tmp = None
        except OSError as exc:
            log.warning("could not cache the ONNX graph in %s (%s); the next start converts again", target.parent, exc)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def discard(self, kind: str, size: int) -> None:
        try:
            self.path(kind, size).unlink()
        except OSError:
            pass


def cached_onnx_runner(model, size: int, threads: int, tf_run, cache: OnnxCache | None, kind: str):
    """(ONNX runner, parity gap against ``tf_run``): the cached graph when it loads and matches
    TensorFlow, else a fresh conversion (stored in the cache when it matches)."""
    width = patient_width(model)
    if cache is not None:
        graph = cache.read(kind, size)
        if graph is not None:
            try:
                run = onnx_session_runner(graph, threads)
                gap = parity_gap(run, tf_run, size, width)
            except Exception as exc:  # a truncated or corrupt file: ONNX Runtime refuses it
                log.warning("cached ONNX graph %s is unusable (%s); converting again", cache.path(kind, size),
                            exc.__class__.__name__)
            else:
                if gap <= PARITY_TOLERANCE:
                    return run, gap
                log.warning("cached ONNX graph %s differs from TensorFlow by %.2e; converting again",
                            cache.path(kind, size), gap)
            cache.discard(kind, size)
    graph = onnx_graph(model, size)
    run = onnx_session_runner(graph, threads)
    gap = parity_gap(run, tf_run, size, width)
    if cache is not None and gap <= PARITY_TOLERANCE:
        cache.write(kind, size, graph)
    return run, gap


def parity_gap(runner_a, runner_b, size: int, patient: int = 0, seed: int = 0) -> float:
    """Largest probability difference between two runners on fixed random probe images
    (with ``patient`` > 0, each with a random context of that width, one of them empty)."""
    rng = np.random.default_rng(seed)
    probe = [rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)]
    if patient:
        context = (rng.random((3, patient)) < 0.3).astype(np.float32)
        context[0] = 0.0
        probe.append(context)
    return float(np.abs(as_pair(runner_a(*probe))[1] - as_pair(runner_b(*probe))[1]).max())


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
