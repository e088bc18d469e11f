"""Load a ``.h5`` model with its model card and turn images into ``Prediction`` values.

TensorFlow is imported here and in ``training/`` only. The service builds one Predictor
per process (after gunicorn forks: TensorFlow's thread pools do not survive a fork) and
runs inference through ONNX Runtime on a graph converted from the ``.h5`` at start-up
(parity with TensorFlow checked each time), falling back to a ``tf.function`` with a fixed
input signature. Measured on 2 cores at batch 1: ``Model.predict`` 126 ms, ``tf.function``
24-30 ms, ONNX Runtime 5-6 ms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from server.imaging import PREPROCESSING_ID, model_input
from server.lesions import CLASS_CODES
from server.prediction import ModelInfo, Prediction, prediction_from_probabilities


log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model or its card is missing, corrupt or does not match this service."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path_for(model_path: Path) -> Path:
    """The card sits beside its model as ``model_card.json`` (the trainer's export layout)."""
    return Path(model_path).with_name("model_card.json")


def load_card(card_path: Path) -> dict:
    """Read a model card and check it describes a model this service can serve."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelLoadError(f"model card not found at {card_path}: export the model with `python -m training.train`")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc})") from None
    missing = [k for k in ("name", "version", "classes", "input_size", "preprocessing") if k not in card]
    if missing:
        raise ModelLoadError(f"model card {card_path} lacks {', '.join(missing)}")
    if tuple(card["classes"]) != CLASS_CODES:
        raise ModelLoadError(
            f"model card {card_path} lists classes {card['classes']}, but the service catalogue is {list(CLASS_CODES)}"
        )
    if card["preprocessing"] != PREPROCESSING_ID:
        raise ModelLoadError(
            f"model card {card_path} was trained with preprocessing {card['preprocessing']!r}; "
            f"this service implements {PREPROCESSING_ID!r}"
        )
    return card


def model_info_from_card(card: dict, sha256: str) -> ModelInfo:
    test = card.get("metrics", {}).get("test", {})
    return ModelInfo(
        name=card["name"],
        version=str(card["version"]),
        sha256=sha256,
        input_size=int(card["input_size"]),
        test_balanced_accuracy=test.get("balanced_accuracy"),
    )


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


def check_model_files(model_path, card_path=None) -> tuple[dict, str]:
    """Check the model file and its card belong together, without importing TensorFlow.

    Cheap enough for gunicorn's master to run before forking (``server/boot.py``), so a
    missing file, a bad card or a swapped ``.h5`` stops the service with one line.
    Returns the card and the file's sha256.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelLoadError(
            f"model file not found at {model_path}: train one with `python -m training.train` "
            "or set MODEL_PATH to an exported .h5"
        )
    card = load_card(Path(card_path) if card_path else card_path_for(model_path))
    sha = file_sha256(model_path)
    if card.get("sha256") and card["sha256"] != sha:
        raise ModelLoadError(
            f"{model_path} has sha256 {sha[:12]}…, but its card expects {card['sha256'][:12]}…: "
            "the model and its card do not belong together"
        )
    return card, sha


RUNTIMES = ("auto", "onnxruntime", "tensorflow")
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_tf| on probe images; float32 kernels differ far less


def tensorflow_runner(model, size: int):
    """A ``tf.function`` with a fixed signature: about 5x faster than ``Model.predict`` at batch 1."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
    return lambda batch: fn(batch).numpy()


def onnx_runner(model, size: int, threads: int = 0):
    """Convert the loaded Keras model to ONNX in memory and run it with ONNX Runtime.

    Derived from the ``.h5`` at every start rather than shipped beside it, so the ``.h5``
    stays the single source of truth and no second file can go stale.
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
    return lambda batch: session.run(None, {name: batch})[0]


def parity_gap(runner_a, runner_b, size: int, seed: int = 0) -> float:
    """Largest probability difference between two runners on fixed random probe images."""
    probe = np.random.default_rng(seed).uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    return float(np.abs(np.asarray(runner_a(probe)) - np.asarray(runner_b(probe))).max())


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


class Predictor:
    """A loaded model plus its card. ``predict_image`` is the only way the service predicts."""

    def __init__(self, model, card: dict, sha256: str, runtime: str = "auto", threads: int = 0):
        self.card = card
        self.info = model_info_from_card(card, sha256)
        self.input_size = self.info.input_size
        self.classes = tuple(card["classes"])
        self.malignant_threshold = card.get("thresholds", {}).get("malignant")
        out_units = model.output_shape[-1]
        if out_units != len(self.classes):
            raise ModelLoadError(f"model has {out_units} outputs but its card lists {len(self.classes)} classes")
        self._run, self.runtime = choose_runner(model, self.input_size, runtime, threads)
        self.predict_arrays(np.zeros((1, self.input_size, self.input_size, 3), np.float32))  # warm up, now

    @classmethod
    def from_path(cls, model_path, card_path=None, runtime: str = "auto", threads: int = 0) -> "Predictor":
        """Load and validate; every failure is a ModelLoadError naming the path and the fix."""
        model_path = Path(model_path)
        card, sha = check_model_files(model_path, card_path)
        try:
            import keras

            model = keras.models.load_model(model_path, compile=False)
        except Exception as exc:  # h5py/keras raise many types for a corrupt file
            raise ModelLoadError(f"could not load model {model_path}: {exc.__class__.__name__}: {exc}") from None
        return cls(model, card, sha, runtime, threads)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (n, size, size, 3) float32 -> (n, classes) probabilities."""
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.float32)))

    def predict_arrays_batched(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Like ``predict_arrays`` for many images, in bounded-memory batches (evaluation, batch CLI)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate([self.predict_arrays(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def predict_image(self, img: Image.Image) -> Prediction:
        """An upright RGB image (from ``imaging.open_upload``) -> Prediction."""
        x = model_input(img, self.input_size)[None]
        start = time.perf_counter()
        probs = self.predict_arrays(x)[0]
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        return prediction_from_probabilities(probs, self.info, elapsed_ms, self.classes, self.malignant_threshold)
