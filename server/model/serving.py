"""What a Predictor runs, built from the Keras model (TensorFlow) or from the ONNX cache alone.

Importing TensorFlow, loading the ``.h5`` with Keras, building ``tf.function`` runners,
checking ONNX against TensorFlow and tracing the Grad-CAM gradient cost a worker 26.5 s
at start, measured from a killed worker to its next answer under load. Once the graphs are
converted, TensorFlow is needed only for a handful of facts about the model, its outputs on
the probe inputs, and the head's weights. ``serve_keras`` (the path with
TensorFlow) writes them to the cache beside the graphs; ``serve_cached`` builds the same
runners from them and returns None, so the caller falls back to ``serve_keras``, unless
every file is there and every check passes:

- each graph reproduces TensorFlow's stored probe outputs within ``PARITY_TOLERANCE``
  (the check every start made against TensorFlow itself);
- the numpy head reproduces the classifier's probe probabilities from its probe feature
  maps (the head weights belong to that graph), and, when written, its Grad-CAM gradient
  matched TensorFlow's for every class.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from server.model.files import ModelLoadError
from server.model.int8_check import PrecisionChoice
from server.model.head import NumpyHead, head_arrays
from server.model.onnx_cache import OnnxCache
from server.model.runtime import (
    PARITY_TOLERANCE,
    as_outputs,
    choose_runner,
    onnx_session_runner,
    outputs_gap,
    parity_gap,
    patient_width,
    served_branch,
    served_model,
)
from server.patient import MODEL_VECTOR_SIZE

log = logging.getLogger(__name__)

CLASSIFIER, BRANCH = "classifier", "branch"  # the graphs' kinds in the cache


@dataclass(frozen=True)
class ModelFacts:
    """What the Predictor reads off the Keras model, so it can be cached beside the graphs."""

    outputs: int  # the classifier's output units (one per class)
    patient_width: int  # the width of the patient input, 0 for an image-only model
    feature_layer: str | None  # the feature map's layer (GAP's input), None without GAP
    has_branch: bool  # whether the ``.h5`` carries the ImageNet branch


@dataclass(frozen=True)
class Served:
    """The runners a Predictor calls, however they were built."""

    facts: ModelFacts
    run: Callable  # (image batch[, patient batch]) -> (feature maps, probabilities) or probabilities
    runtime: str  # onnxruntime | tensorflow
    run_branch: Callable | None  # image batch -> (ImageNet features, probabilities), when served
    gradient: Callable | None  # (pooled, classes, context) -> d logit / d pooled, without GAP None
    precision: str = "float32"  # the arithmetic of run and run_branch: float32 | int8 (server/model/precision.py)
    float32: Served | None = None  # served in int8: the float32 runners, for pictures near a non-skin level
    choice: PrecisionChoice | None = None  # which precision answers and why (server/model/precision.py)


def check_facts(facts: ModelFacts, card) -> None:
    """Refuse a model its card or this service cannot serve (the same words on either path)."""
    if facts.outputs != len(card.classes):
        raise ModelLoadError(f"model has {facts.outputs} outputs but its card lists {len(card.classes)} classes")
    if facts.patient_width not in (0, MODEL_VECTOR_SIZE):
        raise ModelLoadError(f"the model's patient input has {facts.patient_width} values; this service encodes "
                             f"{MODEL_VECTOR_SIZE} (server/patient.py)")


def wants_branch(facts: ModelFacts, ood: bool, imagenet: bool | None) -> bool:
    """Serve the ImageNet branch when the non-skin check needs it (or ``imagenet``: the trainer fitting it)."""
    return facts.has_branch and (ood if imagenet is None else imagenet)


def keras_facts(classifier, branch) -> ModelFacts:
    from server.model.explain import feature_layer_names

    names = feature_layer_names(classifier)
    return ModelFacts(int(classifier.output_shape[-1]), patient_width(classifier), names[0] if names else None,
                      branch is not None)


def head_gap(head: NumpyHead, probe: list, expected: list) -> float:
    """How far the numpy head's probabilities, from the pooled probe feature maps, are from the graph's."""
    pooled = np.asarray(expected[0], np.float32).mean(axis=(1, 2))
    return outputs_gap([head.probabilities(pooled, probe[1] if len(probe) > 1 else None)], [expected[1]])


def gradient_gap(head: NumpyHead, gradient: Callable, probe: list, expected: list) -> float:
    """Largest gap between the numpy and the TensorFlow Grad-CAM gradients on the probes, every
    class, relative to the largest TensorFlow gradient: both compute the same few matrix
    products, so anything but float rounding (a wrong row, a missed ReLU) shows up far above it."""
    pooled = np.asarray(expected[0], np.float32).mean(axis=(1, 2))
    context = probe[1] if len(probe) > 1 else None
    ours, theirs = [], []
    for c in range(expected[1].shape[1]):
        classes = np.full(len(pooled), c, np.int32)
        ours.append(head(pooled, classes, context))
        theirs.append(gradient(pooled, classes, context))
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    gap = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-12))
    return gap if np.isfinite(gap) else float("inf")


def record_arrays(facts: ModelFacts, sha256: str, classifier, gap_layer, gradient, probe, expected) -> dict | None:
    """The cache's model record: the facts and the head, or None when the head has no numpy form
    or its numpy gradient does not match TensorFlow's (the model is then always served by TensorFlow)."""
    arrays = {"facts": np.array(json.dumps({"sha256": sha256, **asdict(facts)}))}
    if gap_layer is None:
        return arrays
    head = head_arrays(classifier, gap_layer)
    if head is None:
        log.info("the model's head has no numpy form; every start loads it with TensorFlow")
        return None
    numpy_head = NumpyHead.from_arrays(head)
    gaps = head_gap(numpy_head, probe, expected), gradient_gap(numpy_head, gradient, probe, expected)
    if max(gaps) > PARITY_TOLERANCE:
        log.warning("the numpy head differs from TensorFlow by %.2e / %.2e; every start loads TensorFlow", *gaps)
        return None
    return {**arrays, **head}


def serve_keras(classifier, branch, facts: ModelFacts, sha256: str, size: int, runtime: str, threads: int,
                cache: OnnxCache | None, with_branch: bool) -> Served:
    """The runners from the Keras model: ONNX Runtime when it matches TensorFlow, else TensorFlow.

    With a cache, it leaves there everything ``serve_cached`` needs: the graphs and their
    probe outputs (``choose_runner``), then the model record."""
    from server.model import explain

    served, _, gap_layer = served_model(classifier)
    run, name = choose_runner(served, size, runtime, threads, cache, CLASSIFIER)
    run_branch = None
    if branch is not None and with_branch:
        run_branch = choose_runner(served_branch(classifier, branch), size, runtime, threads, cache, BRANCH)[0]
    gradient = explain.head_gradient(classifier, gap_layer) if gap_layer is not None else None
    if cache is not None and name == "onnxruntime":
        expected = cache.read_expected(CLASSIFIER, size)  # what a TF-free start will check against
        record = None if expected is None else record_arrays(facts, sha256, classifier, gap_layer, gradient,
                                                             *expected)
        if record is not None:
            cache.write_record(size, record)
    return Served(facts, run, name, run_branch, gradient)


def facts_from_record(record: dict | None, sha256: str) -> ModelFacts | None:
    """The facts a cached record holds, or None when there is none or it is not this model's."""
    if record is None or "facts" not in record:
        return None
    try:
        data = json.loads(str(record["facts"]))
        if data.pop("sha256") != sha256:
            return None
        return ModelFacts(**data)
    except (ValueError, KeyError, TypeError):
        return None


def verified_runner(cache: OnnxCache, kind: str, size: int, threads: int):
    """(an ONNX Runtime runner on the cached graph, its probe (inputs, outputs)) when it reproduces
    TensorFlow's stored outputs within ``PARITY_TOLERANCE``, else None (logged)."""
    graph, expected = cache.read(kind, size), cache.read_expected(kind, size)
    if graph is None or expected is None:
        return None
    try:
        run = onnx_session_runner(graph, threads)
        gap = parity_gap(run, *expected)
    except Exception as exc:  # a truncated or corrupt graph, inputs of another shape
        log.warning("cached ONNX graph %s is unusable (%s)", cache.path(kind, size), exc.__class__.__name__)
        return None
    if gap > PARITY_TOLERANCE:
        log.warning("cached ONNX graph %s differs from its stored TensorFlow outputs by %.2e",
                    cache.path(kind, size), gap)
        return None
    return run, expected


def serve_cached(cache: OnnxCache, size: int, threads: int, ood: bool, imagenet: bool | None) -> Served | None:
    """The runners from the cache alone, without TensorFlow; None when anything is missing or fails its check.

    ``ood``, ``imagenet``: as for ``wants_branch``. The facts are checked against the card by the Predictor."""
    record = cache.read_record(size)
    facts = facts_from_record(record, cache.model_sha256)
    if facts is None:
        return None
    classifier = verified_runner(cache, CLASSIFIER, size, threads)
    if classifier is None:
        return None
    run, (probe, expected) = classifier
    run_branch = None
    if wants_branch(facts, ood, imagenet):
        branch = verified_runner(cache, BRANCH, size, threads)
        if branch is None:
            return None
        run_branch = branch[0]
    gradient = None
    if facts.feature_layer is not None:
        try:
            gradient = NumpyHead.from_arrays(record)
            gap = head_gap(gradient, probe, as_outputs(expected))
        except (KeyError, ValueError, IndexError) as exc:
            log.warning("the cached head of %s is unusable (%s)", cache.record_path(size), exc.__class__.__name__)
            return None
        if gap > PARITY_TOLERANCE:
            log.warning("the cached head of %s differs from its graph by %.2e", cache.record_path(size), gap)
            return None
    return Served(facts, run, "onnxruntime", run_branch, gradient)
