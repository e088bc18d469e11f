"""Load a ``.h5`` model with its model card and turn images into ``Prediction`` values.

TensorFlow is imported here and in ``training/`` only. The service builds one Predictor
per process (after gunicorn forks: TensorFlow's thread pools do not survive a fork) and
runs inference through ONNX Runtime on a graph converted from the ``.h5`` at start-up
(parity with TensorFlow checked each time), falling back to a ``tf.function`` with a fixed
input signature. Measured on 2 cores at batch 1: ``Model.predict`` 126 ms, ``tf.function``
24-30 ms, ONNX Runtime 5-6 ms.

Since issue #6 the served graph has two outputs, the last convolutional feature map (the
input of the GAP layer) and the probabilities, so one forward pass serves the prediction,
the non-skin check (pooled features) and Grad-CAM (``server/explain.py``). On top of the
raw model output ``predict_image`` applies, all from the model card:

- test-time augmentation (``TTA``: off | flips | full; the card's choice unless set),
  averaging the probabilities of flipped/rotated copies in one batch;
- temperature scaling (``calibration.temperature``, fitted on validation): the
  probabilities a Prediction carries are calibrated;
- the "uncertain" threshold (``thresholds.uncertain``) and the malignant operating point;
- the non-skin check: Mahalanobis distances of the pooled features and of a few picture
  statistics from the training distribution (``ood``: statistics in an .npz beside the
  card, pinned by sha256).
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
from server.prediction import DEFAULT_UNCERTAIN_BELOW, ModelInfo, Prediction, prediction_from_probabilities


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
TTA_MODES = ("off", "flips", "full")
DEFAULT_TTA = "off"  # when neither TTA nor the card chooses


def served_model(model):
    """(model returning (feature map, probabilities), feature layer, GAP layer) or (model, None, None).

    The feature map is the GAP layer's input: ``out_relu`` for MobileNetV2, ``conv_identity``
    for the test fixture. A model without GAP is served as before, without explanations or
    the non-skin check.
    """
    from server.explain import feature_layer_names

    names = feature_layer_names(model)
    if names is None:
        return model, None, None
    import keras

    both = keras.Model(model.inputs, [model.get_layer(names[0]).output, model.output], name="served")
    return both, names[0], names[1]


def _as_pair(out):
    """Runner output -> (feature map or None, probabilities)."""
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
    return float(np.abs(_as_pair(runner_a(probe))[1] - _as_pair(runner_b(probe))[1]).max())


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


# ---------------------------------------------------------------- calibration, TTA, non-skin check

def temperature_scale(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise: the model outputs probabilities, and log p are its logits
    up to a per-row constant, which softmax ignores. T > 1 softens over-confident rows."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def tta_views(x: np.ndarray, mode: str) -> np.ndarray:
    """(n, s, s, 3) -> (n * v, s, s, 3): the copies averaged for test-time augmentation, view-major.

    off: the image; flips: + horizontal and vertical flips; full: the 8 flips/rotations by 90°.
    View 0 is always the image itself (its features serve Grad-CAM and the non-skin check).
    """
    if mode == "off":
        return x
    if mode == "flips":
        views = [x, x[:, :, ::-1], x[:, ::-1]]
    elif mode == "full":
        views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    else:
        raise ValueError(f"TTA must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return np.ascontiguousarray(np.concatenate(views, axis=0))


def tta_count(mode: str) -> int:
    return {"off": 1, "flips": 3, "full": 8}[mode]


class OodStats:
    """The non-skin check: Mahalanobis distance of pooled features from the training set.

    ``d(x) = sqrt((P (x - mean)) . precision . (P (x - mean)))`` with an optional projection
    ``P`` (PCA) and a Ledoit-Wolf shrinkage precision, both fitted on the training split by
    ``training.calibrate``; an image is out of distribution when ``d`` exceeds the threshold
    (a high percentile of the validation distances).
    """

    def __init__(self, mean, precision, threshold: float, projection=None):
        self.mean = np.asarray(mean, np.float64)
        self.precision = np.asarray(precision, np.float64)
        self.projection = None if projection is None else np.asarray(projection, np.float64)
        self.threshold = float(threshold)

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(pooled, np.float64)) - self.mean
        if self.projection is not None:
            z = z @ self.projection
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))

    @classmethod
    def from_card(cls, card: dict, card_dir: Path) -> "tuple[OodStats, OodStats | None] | None":
        """(feature statistics, image statistics or None) from the card's ``ood`` and its .npz, or None."""
        spec = card.get("ood")
        if not spec:
            return None
        path = Path(card_dir) / spec["file"]
        if not path.is_file():
            raise ModelLoadError(f"the model card's non-skin statistics {path} are missing: run training.calibrate")
        if spec.get("sha256") and file_sha256(path) != spec["sha256"]:
            raise ModelLoadError(f"{path} does not match the sha256 its model card records")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        image = cls.from_arrays(arrays, spec["image_threshold"], "image_") if "image_mean" in arrays else None
        return cls.from_arrays(arrays, spec["threshold"]), image

    @classmethod
    def from_arrays(cls, arrays: dict, threshold: float, prefix: str = "") -> "OodStats":
        """From the stored arrays: the precision whole, or (compact) its scaled upper triangle (float16)."""
        arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if prefix == "":
            arrays = {k: v for k, v in arrays.items() if not k.startswith("image_")}
        if "precision" in arrays:
            precision = np.asarray(arrays["precision"], np.float64)
        else:
            triu = np.asarray(arrays["precision_triu"], np.float64) * float(arrays.get("precision_scale", 1.0))
            dim = int(arrays["dim"])
            precision = np.zeros((dim, dim))
            precision[np.triu_indices(dim)] = triu
            precision = precision + np.triu(precision, 1).T
        return cls(arrays["mean"], precision, threshold, arrays.get("projection"))


def image_statistics(x: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) model inputs in [-1, 1] -> (n, 12) low-level statistics of the picture.

    The second half of the non-skin check: deep features alone let some near-empty pictures
    through (a flat colour, a smooth gradient, a page of text can land near the lesions'
    mean). A photo of skin has a skin-like colour, some texture and few pure-white or
    pure-black pixels; these statistics say so in a few numbers (log or logit scaled so
    they are roughly Gaussian), and a second Mahalanobis distance checks them.
    """
    u = (np.asarray(x, np.float32) + 1.0) * 127.5
    r, g, b = u[..., 0], u[..., 1], u[..., 2]
    # Channel max/min/mean element-wise: numpy's reductions over a last axis of length 3
    # are strided and were half the cost of a whole prediction.
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    grey = (r + g + b) / np.float32(3.0)
    gx, gy = np.abs(np.diff(grey, axis=2)), np.abs(np.diff(grey, axis=1))
    grad = 0.5 * (gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2)))
    sharp = 0.5 * ((gx > 40).mean(axis=(1, 2)) + (gy > 40).mean(axis=(1, 2)))
    white = (mn > 240).mean(axis=(1, 2))
    black = (mx < 15).mean(axis=(1, 2))
    saturation = ((mx - mn) / np.maximum(mx, 1.0)).mean(axis=(1, 2))
    fine = np.abs(grey[:, 1:-1, 1:-1] * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2]
                  - grey[:, 1:-1, 2:]).mean(axis=(1, 2))  # Laplacian: sensor noise and skin texture

    def logit(p):
        p = np.clip(p, 1e-3, 1 - 1e-3)
        return np.log(p / (1 - p))

    return np.stack([
        *(u.mean(axis=(1, 2)) / 255.0).T, *np.log1p(u.std(axis=(1, 2))).T,
        np.log1p(grad), logit(sharp), logit(white), logit(black), logit(saturation), np.log1p(fine),
    ], axis=1)


class Predictor:
    """A loaded model plus its card. ``predict_image`` is the only way the service predicts."""

    def __init__(self, model, card: dict, sha256: str, runtime: str = "auto", threads: int = 0,
                 tta: str | None = None, ood: bool = True, card_dir: Path | None = None):
        self.card = card
        self.info = model_info_from_card(card, sha256)
        self.input_size = self.info.input_size
        self.classes = tuple(card["classes"])
        thresholds = card.get("thresholds", {})
        self.malignant_threshold = thresholds.get("malignant")
        self.uncertain_threshold = thresholds.get("uncertain")
        out_units = model.output_shape[-1]
        if out_units != len(self.classes):
            raise ModelLoadError(f"model has {out_units} outputs but its card lists {len(self.classes)} classes")
        self.tta = self._resolve_tta(tta, card)
        self.temperature = self._temperature_for(card, self.tta)
        served, self.feature_layer, gap_layer = served_model(model)
        self._run, self.runtime = choose_runner(served, self.input_size, runtime, threads)
        self._gradient = None
        if gap_layer is not None:
            from server.explain import head_gradient

            self._gradient = head_gradient(model, gap_layer)
        stats = OodStats.from_card(card, card_dir) if (ood and card_dir is not None) else None
        self.ood, self.ood_image = stats if stats else (None, None)
        if self.ood is not None and self.feature_layer is None:
            raise ModelLoadError("the card has non-skin statistics but the model has no pooled feature layer")
        fmap, _ = self.forward(np.zeros((1, self.input_size, self.input_size, 3), np.float32))  # warm up, now
        if self._gradient is not None and fmap is not None:
            self._gradient(fmap.mean(axis=(1, 2)), [0])  # trace the head gradient now, not on the first request

    @staticmethod
    def _resolve_tta(tta: str | None, card: dict) -> str:
        chosen = (tta or "").strip().lower() or "auto"
        if chosen == "auto":
            chosen = (card.get("tta") or {}).get("default", DEFAULT_TTA)
        if chosen not in TTA_MODES:
            raise ModelLoadError(f"TTA={chosen!r} is not one of auto, {', '.join(TTA_MODES)}")
        return chosen

    @staticmethod
    def _temperature_for(card: dict, tta: str) -> float | None:
        """The temperature fitted for this TTA mode (each mode's averaged output has its own)."""
        cal = card.get("calibration") or {}
        by_tta = cal.get("temperature_by_tta") or {}
        value = by_tta.get(tta, cal.get("temperature"))
        return float(value) if value is not None else None

    @classmethod
    def from_path(cls, model_path, card_path=None, runtime: str = "auto", threads: int = 0,
                  tta: str | None = None, ood: bool = True) -> "Predictor":
        """Load and validate; every failure is a ModelLoadError naming the path and the fix."""
        model_path = Path(model_path)
        card, sha = check_model_files(model_path, card_path)
        try:
            import keras

            model = keras.models.load_model(model_path, compile=False)
        except Exception as exc:  # h5py/keras raise many types for a corrupt file
            raise ModelLoadError(f"could not load model {model_path}: {exc.__class__.__name__}: {exc}") from None
        card_dir = (Path(card_path) if card_path else card_path_for(model_path)).parent
        return cls(model, card, sha, runtime, threads, tta=tta, ood=ood, card_dir=card_dir)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Preprocessed (n, size, size, 3) -> (feature maps (n, h, w, k) or None, raw probabilities (n, classes))."""
        return _as_pair(self._run(np.ascontiguousarray(batch, dtype=np.float32)))

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (n, size, size, 3) float32 -> (n, classes) raw model probabilities
        (no TTA, no temperature: what the trainer evaluates and calibrates)."""
        return self.forward(batch)[1]

    def predict_arrays_batched(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Like ``predict_arrays`` for many images, in bounded-memory batches (evaluation, batch CLI)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate([self.predict_arrays(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        return temperature_scale(probs, self.temperature) if self.temperature else np.asarray(probs, np.float64)

    def class_index(self, code: str) -> int:
        if code not in self.classes:
            raise ValueError(f"explain_class must be one of {', '.join(self.classes)}; got {code!r}")
        return self.classes.index(code)

    def heatmap(self, image: Image.Image, feature_map: np.ndarray, class_index: int):
        """Grad-CAM of one class over the centre square the model saw -> ``Heatmap``."""
        from server import explain
        from server.prediction import Heatmap

        pooled = feature_map.mean(axis=(0, 1))[None]
        grad = self._gradient(pooled, [class_index])[0]
        cam = explain.grad_cam(feature_map, grad)
        grid = explain.to_grid(cam)
        png = explain.png_bytes(explain.overlay(image, explain.from_grid(grid), self.input_size))
        return Heatmap(class_code=self.classes[class_index], grid=grid, png=png)

    def ood_score(self, x: np.ndarray, feature_map: np.ndarray) -> float | None:
        """The non-skin score of one image: the larger of its two Mahalanobis distances (deep
        features; picture statistics) each divided by its threshold. Above 1: not a skin lesion."""
        if self.ood is None:
            return None
        score = float(self.ood.distances(feature_map.mean(axis=(0, 1)))[0]) / self.ood.threshold
        if self.ood_image is not None:
            score = max(score, float(self.ood_image.distances(image_statistics(x))[0]) / self.ood_image.threshold)
        return score

    def predict_image(self, img: Image.Image, explain: bool = False, explain_class: str | None = None) -> Prediction:
        """An upright RGB image (from ``imaging.open_upload``) -> Prediction.

        ``explain`` adds a Grad-CAM heatmap for ``explain_class`` (default: the top class);
        an image the non-skin check flags gets none (it gets no diagnosis either).
        """
        wanted = self.class_index(explain_class) if explain_class else None  # bad class: fail before work
        x = model_input(img, self.input_size)[None]
        start = time.perf_counter()
        fmap, probs = self.forward(tta_views(x, self.tta))
        probs = self.calibrated(probs.mean(axis=0, keepdims=True))[0]
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        score = self.ood_score(x, fmap[0]) if fmap is not None else None
        heatmap, explain_ms = None, None
        out_of_distribution = score is not None and score > 1.0
        if explain and fmap is not None and self._gradient is not None and not out_of_distribution:
            t = time.perf_counter()
            heatmap = self.heatmap(img, fmap[0], wanted if wanted is not None else int(np.argmax(probs)))
            explain_ms = round((time.perf_counter() - t) * 1000.0, 2)
        return prediction_from_probabilities(
            probs, self.info, elapsed_ms, self.classes, self.malignant_threshold,
            uncertain_threshold=DEFAULT_UNCERTAIN_BELOW if self.uncertain_threshold is None else self.uncertain_threshold,
            temperature=self.temperature, tta=self.tta,
            ood_score=score,
            heatmap=heatmap, explain_ms=explain_ms,
        )
