"""Does int8 answer as float32 does on *this* CPU, and faster? Decided once per host and graph, before serving.

Integer kernels are not the same on every CPU: ONNX Runtime's U8S8 kernels on x86 CPUs without
VNNI sum pairs of products in 16 bits, which can saturate, so int8 graphs that met their bar on a
VNNI CPU answered worse on an AVX2 one (validation balanced accuracy -0.072). A bar measured on
one CPU holds for that CPU only, and no graph can be tried on every CPU before it ships. So
``training.quantize`` ships a reference batch beside the graphs (``<model>.int8-reference.npz``,
pinned by sha256 in the card): real validation photos, preprocessed, with the float32 classifier's
probabilities and the float32 ImageNet branch's pooled features. Before a worker serves int8 it runs
the int8 graphs on that batch here and serves float32 instead, with one log line saying why, when:

- the top class or the malignant flag changes on more than a stated share of the photos, or the
  mean change of a class probability (or of the branch's features) exceeds its limit
  (``server/thresholds.py``: ``INT8_CHECK_*``);
- int8 is not clearly faster than float32 on this CPU: both Predictors screen the batch's pictures
  through ``predict_image``, at the worker's thread count, so every cost int8 brings counts (the float32
  pass of its close calls, ``server/model/second_look.py``), not only its faster convolutions.

The decision is cached in the ONNX cache folder, keyed by the graphs' and the batch's sha256, the
CPU's instruction-set flags and ONNX Runtime's version, so a host decides once and every later worker
start reads one small file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from server.imaging import PIXEL_OFFSET, PIXEL_SCALE, scale_pixels
from server.model.onnx_cache import atomic_write, versions
from server.model.runtime import as_outputs
from server.model.trust import temperature_scale
from server.thresholds import (
    INT8_CHECK_MAX_FEATURE_GAP,
    INT8_CHECK_MAX_FLAG_CHANGES,
    INT8_CHECK_MAX_MEAN_CHANGE,
    INT8_CHECK_MAX_TOP_CLASS_CHANGES,
    INT8_CHECK_MIN_SPEEDUP,
)

log = logging.getLogger(__name__)

# The instruction sets that choose ONNX Runtime's integer kernels: as the CPU itself reports them
# (numpy's CPUID probe, right under an emulator too), and those numpy does not probe from /proc/cpuinfo.
NUMPY_FLAGS = ("AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VL", "AVX512VNNI", "AVX512_SPR",
               "ASIMD", "ASIMDDP", "SVE")
CPUINFO_FLAGS = ("avx_vnni", "amx_tile", "amx_int8", "i8mm")
TIMING_IMAGES = 24  # reference photos timed, screened alternately in both precisions (about 0.25 s a round)
TIMING_ROUNDS = 3  # the median of these rounds is compared: one busy moment does not decide
CHECK_FORMAT = 1  # bumped when what decides changes, so old decisions are not found


@dataclass(frozen=True)
class PrecisionChoice:
    """Which arithmetic answers and why: what ``/readyz`` and ``/model`` say."""

    precision: str  # float32 | int8
    reason: str  # one sentence
    figures: Mapping = field(default_factory=dict)  # the check's measurements on this CPU; empty when none ran
    key: str = ""  # the host decision it answers (``decision_key``), when it came from the check
    settled: bool = True  # False: int8 answered right, and its speed is still to be timed (``settle``)


@dataclass(frozen=True)
class Reference:
    """The batch the int8 graphs must reproduce: model inputs and float32's outputs for them."""

    inputs: np.ndarray  # (n, size, size, 3) float32, exactly as the service feeds the model
    probabilities: np.ndarray  # (n, classes) the float32 classifier graph's probabilities
    features: np.ndarray | None  # (n, d) the float32 ImageNet branch's pooled features, if it has one


def cpu_flags() -> str:
    """The machine and the instruction sets its integer kernels are chosen by, e.g. ``x86_64 AVX AVX2 FMA3``."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    flags = [f for f in NUMPY_FLAGS if features.get(f)]
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    listed = set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            listed.update(line.split(":", 1)[1].split())
    return " ".join([platform.machine() or "unknown"] + flags + [f for f in CPUINFO_FLAGS if f in listed])


def pixels_of(inputs: np.ndarray) -> np.ndarray:
    """Model inputs (made from uint8 by ``scale_pixels``) back to those uint8 pixels, losslessly."""
    return np.rint((np.asarray(inputs, np.float64) + PIXEL_OFFSET) * PIXEL_SCALE).astype(np.uint8)


def write_reference(path: Path, inputs: np.ndarray, probabilities: np.ndarray, features: np.ndarray | None) -> None:
    """The reference batch as ``training.quantize`` ships it: pixels as uint8 (a quarter of float32's size)."""
    arrays = {"pixels": pixels_of(inputs), "probabilities": np.asarray(probabilities, np.float32)}
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_reference(path: Path) -> Reference:
    with np.load(path) as data:
        return Reference(scale_pixels(data["pixels"]), data["probabilities"],
                         data["features"] if "features" in data.files else None)


def answers(run: Callable, reference: Reference, patient_width: int) -> np.ndarray:
    """The classifier runner's probabilities for the batch, one photo at a time as the service runs, context not given."""
    rest = [np.zeros((1, patient_width), np.float32)] if patient_width else []
    return np.concatenate([as_outputs(run(reference.inputs[k:k + 1], *rest))[-1] for k in range(len(reference.inputs))])


def branch_features(run_branch: Callable, reference: Reference) -> np.ndarray:
    return np.concatenate([as_outputs(run_branch(reference.inputs[k:k + 1]))[0].reshape(1, -1)
                           for k in range(len(reference.inputs))])


def agreement(reference: Reference, int8_probs: np.ndarray, int8_features: np.ndarray | None,
              malignant: np.ndarray, threshold: float, temperature: float) -> dict:
    """How far int8's answers on the batch are from float32's: shares that changed, mean change."""
    ref, ours = temperature_scale(reference.probabilities, temperature), temperature_scale(int8_probs, temperature)
    figures = {"photos": int(len(ref)),
               "top_class_changed": float((ref.argmax(1) != ours.argmax(1)).mean()),
               "flag_changed": float(((ref[:, malignant].sum(1) >= threshold) != (ours[:, malignant].sum(1) >= threshold)).mean()),
               "mean_probability_change": float(np.abs(ref - ours).mean())}
    if int8_features is not None and reference.features is not None:
        gap = np.linalg.norm(int8_features - reference.features, axis=1) / np.maximum(
            np.linalg.norm(reference.features, axis=1), 1e-12)
        figures["branch_feature_gap"] = float(gap.mean())
    return figures


def disagreement(figures: Mapping) -> str | None:
    """Why int8's answers are too far from float32's to serve, or None when they are close enough."""
    limits = (("top_class_changed", INT8_CHECK_MAX_TOP_CLASS_CHANGES, "the top class changed on {:.0%} of"),
              ("flag_changed", INT8_CHECK_MAX_FLAG_CHANGES, "the malignant flag changed on {:.0%} of"),
              ("mean_probability_change", INT8_CHECK_MAX_MEAN_CHANGE, "a class probability moved by {:.4f} on average on"),
              ("branch_feature_gap", INT8_CHECK_MAX_FEATURE_GAP, "the ImageNet branch's features moved by {:.1%} on"))
    for key, limit, words in limits:
        if key in figures and figures[key] > limit:
            return f"{words.format(figures[key])} the {figures['photos']} reference photos (limit {limit:g})"
    return None


def per_photo_ms(predictor, pictures: list) -> float:
    start = time.perf_counter()
    for picture in pictures:
        predictor.predict_image(picture)
    return (time.perf_counter() - start) * 1000 / len(pictures)


def speed(int8_predictor, float32_predictor, pictures: list) -> dict:
    """Milliseconds a photo through ``predict_image`` in each precision, timed alternately, the median of a few rounds."""
    batch = pictures[:TIMING_IMAGES]
    for p in (int8_predictor, float32_predictor):
        per_photo_ms(p, batch[:2])  # warm both before timing
    rounds = [(per_photo_ms(int8_predictor, batch), per_photo_ms(float32_predictor, batch)) for _ in range(TIMING_ROUNDS)]
    return {"int8_ms": float(np.median([r[0] for r in rounds])), "float32_ms": float(np.median([r[1] for r in rounds]))}


def slower(timing: Mapping) -> str | None:
    """Why int8 is not worth serving for speed on this CPU, or None when it is clearly faster."""
    if timing["int8_ms"] * INT8_CHECK_MIN_SPEEDUP <= timing["float32_ms"]:
        return None
    return (f"int8 is not faster here ({timing['int8_ms']:.2f} ms a photo, close calls in float32 included, against "
            f"float32's {timing['float32_ms']:.2f} ms; it must be {INT8_CHECK_MIN_SPEEDUP:g}x as fast)")


def decision_key(graph_shas: list[str], threads: int) -> str:
    """Graphs, reference batch, CPU, ONNX Runtime and threads: change any one and the check runs again."""
    parts = [str(CHECK_FORMAT), *graph_shas, cpu_flags(), versions()["onnxruntime"], str(threads)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cached_choice(cache_dir: str | Path | None, key: str) -> PrecisionChoice | None:
    if not cache_dir:
        return None
    try:
        data = json.loads((Path(cache_dir) / f"int8-check-{key}.json").read_text())
        return PrecisionChoice(data["precision"], data["reason"], data.get("figures", {}), key)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(cache_dir: str | Path | None, key: str, choice: PrecisionChoice) -> None:
    if cache_dir:
        atomic_write(Path(cache_dir) / f"int8-check-{key}.json", json.dumps(asdict(choice), indent=1).encode())


def measure(served_int8, reference: Reference, malignant: np.ndarray, threshold: float, temperature: float,
            key: str) -> PrecisionChoice:
    """The check's first half: do int8's answers on the batch stay close to float32's? A wrong answer is never
    worth its speed, so only a graph that passes is timed (``settle``)."""
    features = branch_features(served_int8.run_branch, reference) if served_int8.run_branch is not None else None
    int8_probs = answers(served_int8.run, reference, served_int8.facts.patient_width)
    figures = agreement(reference, int8_probs, features, malignant, threshold, temperature)
    figures["cpu"] = cpu_flags()
    why = disagreement(figures)
    if why is not None:
        return PrecisionChoice("float32", f"int8 graphs checked on this CPU and not served: {why}", figures, key)
    return PrecisionChoice("int8", f"int8 graphs answer as float32 does on the {figures['photos']} reference photos",
                           figures, key, settled=False)


def reference_pictures(path: Path) -> list:
    """The reference batch as pictures, for timing ``predict_image``."""
    from PIL import Image

    return [Image.fromarray(p) for p in pixels_of(read_reference(path).inputs)]


def settle(int8_predictor, float32_twin: Callable, reference: Path, cache_dir):
    """The check's second half: the Predictor to serve, int8 or its float32 twin (``float32_twin()`` builds it),
    whichever ``speed`` says on the ``reference`` batch's pictures, the whole verdict remembered for this host."""
    choice = int8_predictor.precision_choice
    if choice is None or choice.settled:
        return int8_predictor
    twin = float32_twin()
    figures = {**choice.figures, **speed(int8_predictor, twin, reference_pictures(reference))}
    why = slower(figures)
    if why is None:
        final = PrecisionChoice("int8", f"int8 graphs checked on this CPU: they answer as float32 does on the "
                                        f"{figures['photos']} reference photos and screen them "
                                        f"{figures['float32_ms'] / figures['int8_ms']:.1f}x as fast", figures, choice.key)
    else:
        final = PrecisionChoice("float32", f"int8 graphs checked on this CPU and not served: {why}", figures, choice.key)
    remember(cache_dir, choice.key, final)
    chosen = int8_predictor if final.precision == "int8" else twin
    chosen.precision_choice = final
    log.log(logging.INFO if final.precision == "int8" else logging.WARNING, "model served in %s: %s",
            final.precision, final.reason)
    return chosen
