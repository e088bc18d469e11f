"""A loaded model with its card: images in, ``Prediction`` values out.

TensorFlow is imported (through ``server/model/runtime.py`` and ``explain.py``) only when the ONNX
cache cannot serve the ``.h5`` without it (``server/model/serving.py``). The service builds one
Predictor per process (after gunicorn forks: TensorFlow's thread pools do not survive a fork).

The served graph has two outputs, the last convolutional feature map (the input of the
GAP layer) and the probabilities, plus two more when the ``.h5`` carries the ImageNet
branch (its pooled features and its 1000 class probabilities), so one forward pass serves
the prediction, the non-skin check and Grad-CAM (``server/model/explain.py``). Those graphs are
float32, or the int8 forms the card pins beside the ``.h5`` (``server/model/precision.py``), whose
close calls get float32's answer (``server/model/second_look.py``). On top of the raw model output
``predict_image`` applies, all from the model card:

- test-time augmentation (``TTA``: off | flips | full; the card's choice unless set) and temperature scaling;
- the malignant operating point (``card.thresholds``) and the differential's conformal
  thresholds (``card.differential``, for the image alone or with the patient context);
- the non-skin check (``server/model/nonskin_screen.py``; statistics in an .npz beside the card)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from server.heatmap import Explanation, Heatmap
from server.imaging import COLOUR_NONE, centre_square, colour_of, model_input
from server.model import explain, int8_check
from server.model.card import ModelCard
from server.model.files import ModelLoadError, card_path_for, check_model_files, model_info, resolve_tta
from server.model.nonskin import IMAGENET
from server.model.nonskin_screen import load_nonskin, screen_nonskin
from server.model.onnx_cache import OnnxCache
from server.model.precision import at_precision, wanted_precision
from server.model.runtime import apply_tf_threads, as_pair, split_branch
from server.model.second_look import close_calls_of, near_a_nonskin_level
from server.model.serving import Served, check_facts, keras_facts, serve_cached, serve_keras, wants_branch
from server.model.trust import temperature_scale, tta_views
from server.patient import PatientContext
from server.prediction import Prediction
from server.prediction_parts import NonSkinAnswer
from server.published import prediction_from_probabilities
from server.thresholds import DEFAULT_UNCERTAIN_BELOW, INT8_NONSKIN_MARGIN, NONSKIN_REFUSED

log = logging.getLogger(__name__)


class Predictor:
    """A loaded model plus its card. ``predict_image`` is the only way the service predicts.

    Built by ``from_path`` (the service): from the ONNX cache alone, without TensorFlow,
    when it holds everything for this exact ``.h5`` (``server/model/serving.py``), else by
    ``load`` (Keras + TensorFlow, which fills the cache)."""

    def __init__(self, served: Served, card: ModelCard, sha256: str, tta: str | None = None, ood: bool = True,
                 card_dir: Path | None = None):
        self.card = card
        self.info = model_info(card, sha256, served.precision)  # with the context given: _info_given
        self._info_given = model_info(card, sha256, served.precision, context_given=True)
        self.input_size = card.input_size
        self.colour = colour_of(card.preprocessing) or COLOUR_NONE  # checked against the card by check_model_files
        self.classes = card.classes
        self.malignant_threshold = card.thresholds.malignant
        self._close_calls = {given: close_calls_of(card, given) for given in (False, True)}  # served in int8
        self.uncertain_threshold = card.thresholds.uncertain
        self.differential = card.differential  # the conformal thresholds of the lesion-type list, or None
        check_facts(served.facts, card)
        self.patient_width = served.facts.patient_width  # 0: the model reads no patient context
        self.tta = resolve_tta(tta, card)
        self.temperature = card.temperature_for(self.tta)
        self.feature_layer = served.facts.feature_layer
        self._run, self.runtime, self._run_branch = served.run, served.runtime, served.run_branch
        self.precision = served.precision  # float32 | int8: what /readyz and /model say is served
        self.precision_choice = served.choice  # and why (server/model/precision.py)
        self._float32 = served.float32  # served in int8: float32's runners, to re-screen pictures near a non-skin level
        self._gradient = served.gradient
        self.ood = load_nonskin(card, card_dir) if (ood and card_dir is not None) else None
        self._ood_int8 = None if (self.ood is None or self._float32 is None) else self.ood.gate_opened_by(INT8_NONSKIN_MARGIN)
        if self.ood is not None and self.feature_layer is None:
            raise ModelLoadError("the card has non-skin statistics but the model has no pooled feature layer")
        if self.ood is not None and IMAGENET in self.ood.signals_needed() and self._run_branch is None:
            raise ModelLoadError("the card's non-skin check reads the ImageNet branch, but the model has none")
        fmap, _ = self.forward(np.zeros((1, self.input_size, self.input_size, 3), np.float32))  # warm up, now
        self.forward_imagenet(np.zeros((1, self.input_size, self.input_size, 3), np.float32))
        if self._gradient is not None and fmap is not None:  # trace the head gradient now, not on the first request
            self._gradient(fmap.mean(axis=(1, 2)), [0], self.patient_batch(1, None) if self.reads_patient else None)

    @classmethod
    def from_keras(cls, model, card: ModelCard, sha256: str, runtime: str = "auto", threads: int = 0,
                   tta: str | None = None, ood: bool = True, card_dir: Path | None = None,
                   imagenet: bool | None = None, onnx_cache: str | Path | None = None,
                   precision: str | None = "float32") -> "Predictor":
        """From a loaded Keras model. ``onnx_cache``: a folder for the converted ONNX graphs and what a
        TF-free start needs, keyed by ``sha256`` (which must then be the sha256 of the ``.h5`` this
        model was loaded from), or None to convert each time. ``precision``: as ``INFERENCE_PRECISION``
        (``server/model/precision.py``); int8 graphs are read from ``card_dir``."""
        classifier, branch = split_branch(model)
        facts = keras_facts(classifier, branch)
        check_facts(facts, card)  # before the slow part: the same errors __init__ would raise
        resolve_tta(tta, card)
        wanted = wanted_precision(precision, card)
        cache = OnnxCache(Path(onnx_cache), sha256) if onnx_cache else None
        served = serve_keras(classifier, branch, facts, sha256, card.input_size, runtime, threads, cache,
                             wants_branch(facts, ood, imagenet))
        served = at_precision(served, wanted, card, card_dir, sha256, threads, onnx_cache)
        return cls(served, card, sha256, tta=tta, ood=ood, card_dir=card_dir)

    @classmethod
    def from_cache(cls, card: ModelCard, sha256: str, onnx_cache: str | Path, card_dir: Path | None = None,
                   threads: int = 0, tta: str | None = None, ood: bool = True,
                   imagenet: bool | None = None, precision: str | None = "float32") -> "Predictor | None":
        """Without TensorFlow, from what ``from_keras`` cached for the ``.h5`` with this sha256;
        None when the cache lacks something or a cached graph fails its check."""
        wanted = wanted_precision(precision, card)
        served = serve_cached(OnnxCache(Path(onnx_cache), sha256), card.input_size, threads, ood, imagenet)
        if served is None:
            return None
        log.info("model %s served from the ONNX cache %s, without TensorFlow", sha256[:12], onnx_cache)
        served = at_precision(served, wanted, card, card_dir, sha256, threads, onnx_cache)
        return cls(served, card, sha256, tta=tta, ood=ood, card_dir=card_dir)

    @classmethod
    def load(cls, model_path, card: ModelCard, sha256: str, card_dir: Path | None = None, runtime: str = "auto",
             threads: int = 0, tta: str | None = None, ood: bool = True, imagenet: bool | None = None,
             onnx_cache: str | Path | None = None, precision: str | None = "float32") -> "Predictor":
        """Load the ``.h5`` with Keras for a card already checked against it (the trainer's in-memory card)."""
        apply_tf_threads()
        try:
            import keras

            model = keras.models.load_model(model_path, compile=False)
        except Exception as exc:  # h5py/keras raise many types for a corrupt file
            raise ModelLoadError(f"could not load model {model_path}: {exc.__class__.__name__}: {exc}") from None
        return cls.from_keras(model, card, sha256, runtime, threads, tta=tta, ood=ood, card_dir=card_dir,
                              imagenet=imagenet, onnx_cache=onnx_cache, precision=precision)

    @classmethod
    def from_path(cls, model_path, card_path=None, runtime: str = "auto", threads: int = 0,
                  tta: str | None = None, ood: bool = True, imagenet: bool | None = None,
                  onnx_cache: str | Path | None = None, precision: str | None = "float32") -> "Predictor":
        """Load and validate; every failure is a ModelLoadError naming the path and the fix. The card and the
        ``.h5``'s sha256 are checked every time; with ``onnx_cache`` (a folder keyed by that sha256) and an ONNX
        runtime, a cache holding everything for this file serves it without TensorFlow, and anything else loads
        the ``.h5`` with TensorFlow and fills the cache."""
        model_path = Path(model_path)
        card, sha = check_model_files(model_path, card_path)
        card_dir = (Path(card_path) if card_path else card_path_for(model_path)).parent
        predictor = cls.from_cache(card, sha, onnx_cache, card_dir, threads, tta=tta, ood=ood, imagenet=imagenet,
                                   precision=precision) if onnx_cache and runtime in ("auto", "onnxruntime") else None
        if predictor is None:
            predictor = cls.load(model_path, card, sha, card_dir, runtime, threads, tta=tta, ood=ood, imagenet=imagenet,
                                 onnx_cache=onnx_cache, precision=precision)
        if predictor.precision_choice is not None and not predictor.precision_choice.settled:  # int8: time it here
            predictor = int8_check.settle(predictor, lambda: cls(predictor._float32, card, sha, tta=tta, ood=ood,
                                                                 card_dir=card_dir), card_dir / card.int8.reference.file, onnx_cache)
        return predictor

    @property
    def reads_patient(self) -> bool:
        """Whether the model takes the patient context (age, sex, site) as a second input."""
        return self.patient_width > 0

    def patient_batch(self, n: int, patient: np.ndarray | None) -> np.ndarray:
        """The model's second input for ``n`` images: ``patient`` ((w,) or (n, w)) or all "not given"."""
        if patient is None:
            return np.zeros((n, self.patient_width), np.float32)
        return np.ascontiguousarray(np.broadcast_to(np.asarray(patient, np.float32), (n, self.patient_width)))

    def forward(self, batch: np.ndarray, patient: np.ndarray | None = None,
                float32: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """Preprocessed (n, size, size, 3) -> (feature maps (n, h, w, k) or None, raw probabilities (n, classes)).

        ``patient``: the encoded context ((w,) for every image, or (n, w)); ignored by an image-only model.
        ``float32``: in float32 even when int8 is served.
        """
        run = self._float32.run if (float32 and self._float32 is not None) else self._run
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.reads_patient:
            return as_pair(run(batch))
        return as_pair(run(batch, self.patient_batch(len(batch), patient)))

    def forward_imagenet(self, batch: np.ndarray, float32: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Preprocessed (n, size, size, 3) -> the ImageNet branch's (pooled features (n, 1280),
        probabilities (n, 1000)), or (None, None) when it is not served."""
        run = self._float32.run_branch if (float32 and self._float32 is not None) else self._run_branch
        if run is None:
            return None, None
        return as_pair(run(np.ascontiguousarray(batch, dtype=np.float32)))

    def forward_all(self, batch: np.ndarray) -> tuple:
        """Both graphs on every image: (feature maps, probabilities, ImageNet features, ImageNet probabilities)."""
        return (*self.forward(batch), *self.forward_imagenet(batch))

    def predict_arrays(self, batch: np.ndarray, patient: np.ndarray | None = None) -> np.ndarray:
        """Preprocessed (n, size, size, 3) float32 -> (n, classes) raw model probabilities
        (no TTA, no temperature: what the trainer evaluates and calibrates)."""
        return self.forward(batch, patient)[1]

    def predict_arrays_batched(self, images: np.ndarray, batch_size: int = 64,
                               patient: np.ndarray | None = None) -> np.ndarray:
        """Like ``predict_arrays`` for many images, in bounded-memory batches (evaluation);
        ``patient``: (n, w) encoded contexts, or None for none given."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate([
            self.predict_arrays(images[i:i + batch_size], None if patient is None else patient[i:i + batch_size])
            for i in range(0, len(images), batch_size)])

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        return temperature_scale(probs, self.temperature) if self.temperature else np.asarray(probs, np.float64)

    def close_call(self, probs: np.ndarray, given: bool) -> bool:
        """Whether calibrated ``probs`` lie near a decision the answer makes (``second_look.py``; ``given``: context)."""
        return self._close_calls[given](probs)

    def class_index(self, code: str) -> int:
        if code not in self.classes:
            raise ValueError(f"explain_class must be one of {', '.join(self.classes)}; got {code!r}")
        return self.classes.index(code)

    def heatmap(self, image: Image.Image, feature_map: np.ndarray, class_index: int,
                patient: np.ndarray | None = None) -> Heatmap:
        """Grad-CAM of one class over the centre square the model saw -> ``Heatmap``."""
        grid = self.heatmap_grids(feature_map, [class_index], patient)[0]
        png = explain.png_bytes(explain.render(image, grid, self.input_size))
        return Heatmap(class_code=self.classes[class_index], grid=grid, png=png)

    def heatmap_grids(self, feature_map: np.ndarray, class_indices, patient: np.ndarray | None = None) -> list:
        """Grad-CAM grids of several classes from one feature map: one batched gradient on the head."""
        n = len(class_indices)
        pooled = np.repeat(feature_map.mean(axis=(0, 1))[None], n, axis=0)
        grads = self._gradient(pooled, list(class_indices), self.patient_batch(n, patient) if self.reads_patient else None)
        return [explain.to_grid(explain.grad_cam(feature_map, g)) for g in grads]

    def nonskin(self, x: np.ndarray, feature_map: np.ndarray,
                float32: bool = False) -> tuple[float | None, str | None, str | None]:
        """(the non-skin score, answer and "looks like" of one image: ``screen_nonskin``), or (None, None,
        None) without a check. ``float32``: the ImageNet branch in float32 (and the card's own gate)
        even when int8 is served."""
        check = self.ood if (float32 or self._ood_int8 is None) else self._ood_int8
        return screen_nonskin(check, x, feature_map, lambda batch: self.forward_imagenet(batch, float32))

    def predict_image(self, img: Image.Image, explain: bool = False, explain_class: str | None = None,
                      patient: PatientContext | None = None, explain_all: bool = False) -> Prediction:
        """An upright RGB image (from ``imaging.open_upload``) -> Prediction.

        ``patient``: the optional age, sex and site, for a model that reads them (its card's
        ``patient_context``); a model that does not ignores them.

        ``explain`` adds a Grad-CAM heatmap for ``explain_class`` (default: the Prediction's
        ``explained_class``), and ``explain_all`` the grids of every class beside it; an image
        the non-skin check refuses gets none (it gets no diagnosis either).
        """
        wanted = self.class_index(explain_class) if explain_class else None  # bad class: fail before work
        # The centre square once: the model's input and the heatmap's background (1.3 ms of a 600x450 photo).
        img = centre_square(img, self.input_size)
        x = model_input(img, self.input_size, self.colour)[None]
        context = patient.model_vector() if (patient is not None and self.reads_patient) else None
        start = time.perf_counter()
        fmap, probs = self.forward(tta_views(x, self.tta), context)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        score, answer, looks_like = self.nonskin(x, fmap[0]) if fmap is not None else (None, None, None)
        probs = self.calibrated(probs.mean(axis=0, keepdims=True))[0]
        given = context is not None and patient.given  # nothing given: the image-only answer and its thresholds
        rule = self.differential.rule_for(given) if self.differential is not None else None
        if self._float32 is not None and (near_a_nonskin_level(score, answer) or self.close_call(probs, given)):
            start = time.perf_counter()
            fmap, probs = self.forward(tta_views(x, self.tta), context, float32=True)
            elapsed_ms += (time.perf_counter() - start) * 1000.0
            score, answer, looks_like = self.nonskin(x, fmap[0], float32=True) if fmap is not None else (None, None, None)
            probs = self.calibrated(probs.mean(axis=0, keepdims=True))[0]
        refused = answer == NONSKIN_REFUSED
        prediction = prediction_from_probabilities(
            probs, self._info_given if given else self.info, elapsed_ms, self.classes, self.malignant_threshold,
            min_probability=rule.min_probability if rule else None,
            coverage=self.differential.coverage if rule else None,
            uncertain_threshold=DEFAULT_UNCERTAIN_BELOW if self.uncertain_threshold is None else self.uncertain_threshold,
            temperature=self.temperature, tta=self.tta,
            nonskin=None if answer is None else NonSkinAnswer(answer, score, looks_like),
        )
        if not (explain and fmap is not None and self._gradient is not None and not refused):
            return prediction
        t = time.perf_counter()
        index = wanted if wanted is not None else self.class_index(prediction.explained_class)
        heatmap = self.heatmap(img, fmap[0], index, context)
        others = ()
        if explain_all:
            rest = [i for i in range(len(self.classes)) if i != index]
            others = tuple(Heatmap(class_code=self.classes[i], grid=g)
                           for i, g in zip(rest, self.heatmap_grids(fmap[0], rest, context)))
        return replace(prediction, explanation=Explanation(heatmap, others),
                       timing=replace(prediction.timing, explain_ms=round((time.perf_counter() - t) * 1000.0, 2)))
