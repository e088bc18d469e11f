"""Which arithmetic serves the model: the float32 graphs or their int8 forms beside the ``.h5``.

``training.quantize`` writes the int8 graphs into the run folder and records them in the card's
``int8`` section, tied to the ``.h5`` by its sha256; ``training.int8_bar`` measures them against
float32 on the test split and records whether they meet the bar. ``INFERENCE_PRECISION``:

- ``float32``: the graphs converted from the ``.h5`` (``server/model/serving.py``), as before;
- ``int8``: the int8 graphs whenever they belong to this ``.h5``, measured or not;
- ``auto`` (the default): int8 only when the card records that they met the bar.

The ``.h5`` stays the one source of truth: int8 graphs made from another ``.h5`` (a retrained
model beside an old card section), a file that is missing or whose bytes differ from the card's
sha256, or a graph ONNX Runtime refuses, all fall back to float32 with one log line. Only the
classifier and branch runners change: the model's facts and Grad-CAM's float32 head stay those
of the float32 path (the int8 graphs keep their head in float32).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from server.model.card import Int8Graph, ModelCard
from server.model.files import ModelLoadError, file_sha256
from server.model.runtime import as_outputs, onnx_session_runner

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "float32")
FLOAT32, INT8 = "float32", "int8"


def wanted_precision(setting: str | None, card: ModelCard) -> str:
    """``float32`` or ``int8``: the setting, or with ``auto`` (or none) int8 when the card says it met the bar."""
    chosen = (setting or "").strip().lower() or "auto"
    if chosen not in PRECISIONS:
        raise ModelLoadError(f"INFERENCE_PRECISION={chosen!r} is not one of {', '.join(PRECISIONS)}")
    if chosen == "auto":
        return INT8 if card.int8 is not None and card.int8.meets_bar is True else FLOAT32
    return chosen


def int8_graph(spec: Int8Graph, card_dir: Path) -> bytes | None:
    """The bytes of one int8 graph when they are the ones the card pinned, else None (logged)."""
    path = Path(card_dir) / spec.file
    try:
        data = path.read_bytes()
    except OSError:
        log.warning("int8 graph %s is missing; serving float32", path)
        return None
    if file_sha256(path) != spec.sha256:
        log.warning("int8 graph %s does not match the sha256 its card records; serving float32", path)
        return None
    return data


def int8_graphs(card: ModelCard, card_dir: Path, sha256: str, with_branch: bool) -> dict | None:
    """The card's int8 graphs (``classifier``, and ``branch`` when ``with_branch``) for the ``.h5`` with
    ``sha256``, or None (logged) when the card has none, they were made from another ``.h5``, or a file fails."""
    spec = card.int8
    if spec is None:
        log.warning("INFERENCE_PRECISION asks for int8 but the model card has no int8 graphs "
                    "(python -m training.quantize); serving float32")
        return None
    if spec.source_sha256 != sha256:
        log.warning("the card's int8 graphs were quantized from another .h5 (sha256 %s..., this one %s...); "
                    "serving float32 until python -m training.quantize runs again", spec.source_sha256[:12], sha256[:12])
        return None
    if with_branch and spec.branch is None:
        log.warning("the card's int8 graphs lack the ImageNet branch the non-skin check runs; serving float32")
        return None
    graphs = {"classifier": int8_graph(spec.classifier, card_dir)}
    if with_branch:
        graphs["branch"] = int8_graph(spec.branch, card_dir)
    return None if any(g is None for g in graphs.values()) else graphs


def same_shapes(run, reference, probe: list) -> bool:
    """Whether ``run`` answers ``probe`` with outputs of ``reference``'s shapes, all finite."""
    ours, theirs = as_outputs(run(*probe)), as_outputs(reference(*probe))
    return len(ours) == len(theirs) and all(a.shape == b.shape and np.all(np.isfinite(a)) for a, b in zip(ours, theirs))


def int8_runner(graph: bytes, reference, probe: list, threads: int, name: str):
    """An ONNX Runtime runner on an int8 graph that answers like ``reference`` in shape, or None (logged)."""
    try:
        run = onnx_session_runner(graph, threads)
        if same_shapes(run, reference, probe):
            return run
        log.warning("the int8 %s graph's outputs differ in shape from float32's; serving float32", name)
    except Exception as exc:  # ONNX Runtime refuses the graph, or its inputs differ
        log.warning("the int8 %s graph is unusable (%s: %s); serving float32", name, exc.__class__.__name__, exc)
    return None


def at_precision(served, precision: str, card: ModelCard, card_dir: Path | None, sha256: str, threads: int):
    """``served`` (a ``server.model.serving.Served``) with its runners at ``precision`` when it can be, else as it is.

    int8 needs ONNX Runtime and the card's int8 graphs for this exact ``.h5``; anything less serves float32."""
    if precision != INT8:
        return served
    if served.runtime != "onnxruntime" or card_dir is None:
        log.warning("int8 needs ONNX Runtime and the model's folder; serving float32 with %s", served.runtime)
        return served
    graphs = int8_graphs(card, card_dir, sha256, served.run_branch is not None)
    if graphs is None:
        return served
    size = card.input_size
    image = np.zeros((1, size, size, 3), np.float32)
    probe = [image] + ([np.zeros((1, served.facts.patient_width), np.float32)] if served.facts.patient_width else [])
    run = int8_runner(graphs["classifier"], served.run, probe, threads, "classifier")
    run_branch = None
    if served.run_branch is not None:
        run_branch = int8_runner(graphs["branch"], served.run_branch, [image], threads, "branch")
    if run is None or (served.run_branch is not None and run_branch is None):
        return served
    log.info("model %s served in int8 (%s)", sha256[:12], " and ".join(graphs))
    return replace(served, run=run, run_branch=run_branch, precision=INT8, float32=served)
