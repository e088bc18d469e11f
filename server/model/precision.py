"""Which arithmetic serves the model: the float32 graphs or their int8 forms beside the ``.h5``.

``training.quantize`` writes the int8 graphs into the run folder, with a reference batch, and records
them in the card's ``int8`` section, tied to the ``.h5`` by its sha256; ``training.int8_bar`` measures
them against float32 and records whether they meet the bar. ``INFERENCE_PRECISION``:

- ``float32``: the graphs converted from the ``.h5`` (``server/model/serving.py``), as before;
- ``int8``: the int8 graphs whenever they belong to this ``.h5``, measured or not, checked or not;
- ``auto`` (the default): int8 only when the card records that they met the bar *and* they pass the
  check on this CPU (``server/model/int8_check.py``): a bar measured on one CPU holds there only.

The ``.h5`` stays the one source of truth: int8 graphs made from another ``.h5`` (a retrained
model beside an old card section), a file that is missing or whose bytes differ from the card's
sha256, or a graph ONNX Runtime refuses, all fall back to float32 with one log line. Only the
classifier and branch runners change: the model's facts and Grad-CAM's float32 head stay those
of the float32 path (the int8 graphs keep their head in float32). Every outcome carries a
``PrecisionChoice``: what answers and why, which ``/readyz`` and ``/model`` show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from server.model import int8_check
from server.model.card import Int8Graph, ModelCard
from server.model.files import ModelLoadError, file_sha256
from server.model.int8_check import PrecisionChoice
from server.model.runtime import as_outputs, onnx_session_runner
from server.model.second_look import malignant_mask

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "float32")
FLOAT32, INT8 = "float32", "int8"


@dataclass(frozen=True)
class Wanted:
    """What the setting and the card ask for, before any graph is loaded."""

    precision: str  # float32 | int8
    reason: str  # why, in one sentence (the reason served when nothing overrides it)
    prove: bool = False  # int8 only once the graphs pass the check on this CPU (``auto``)


def wanted_precision(setting: str | None, card: ModelCard) -> Wanted:
    """The setting, or with ``auto`` (or none) int8 when the card says it met the bar, to be proven on this CPU."""
    chosen = (setting or "").strip().lower() or "auto"
    if chosen not in PRECISIONS:
        raise ModelLoadError(f"INFERENCE_PRECISION={chosen!r} is not one of {', '.join(PRECISIONS)}")
    if chosen == FLOAT32:
        return Wanted(FLOAT32, "INFERENCE_PRECISION=float32 asks for float32")
    if chosen == INT8:
        return Wanted(INT8, "INFERENCE_PRECISION=int8 forces the int8 graphs, unchecked on this CPU")
    if card.int8 is not None and card.int8.meets_bar is True:
        return Wanted(INT8, "the card's int8 graphs met the accuracy bar", prove=True)
    return Wanted(FLOAT32, "the card records no int8 graphs that met the accuracy bar")


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


def int8_served(served, card: ModelCard, card_dir: Path, sha256: str, threads: int):
    """``served`` with int8 runners from the card's graphs, keeping float32's beside them; None (logged) when it cannot."""
    graphs = int8_graphs(card, card_dir, sha256, served.run_branch is not None)
    if graphs is None:
        return None
    size = card.input_size
    image = np.zeros((1, size, size, 3), np.float32)
    probe = [image] + ([np.zeros((1, served.facts.patient_width), np.float32)] if served.facts.patient_width else [])
    run = int8_runner(graphs["classifier"], served.run, probe, threads, "classifier")
    run_branch = None
    if served.run_branch is not None:
        run_branch = int8_runner(graphs["branch"], served.run_branch, [image], threads, "branch")
    if run is None or (served.run_branch is not None and run_branch is None):
        return None
    return replace(served, run=run, run_branch=run_branch, precision=INT8, float32=served)


def unprovable(card: ModelCard, card_dir: Path) -> PrecisionChoice | None:
    """Float32 and why, when the card's int8 graphs have no intact reference batch to be checked on; else None."""
    spec = card.int8
    if spec.reference is None:
        return PrecisionChoice(FLOAT32, "the card's int8 graphs have no reference batch to check them on this CPU "
                                        "(python -m training.quantize makes one)")
    path = Path(card_dir) / spec.reference.file
    if not path.is_file() or file_sha256(path) != spec.reference.sha256:
        return PrecisionChoice(FLOAT32, f"the int8 reference batch {path.name} is missing or differs from its sha256")
    return None


def host_key(card: ModelCard, threads: int, with_branch: bool) -> str:
    """The host decision the check answers for these graphs, their reference batch, this CPU and thread count."""
    spec = card.int8
    shas = [spec.classifier.sha256, spec.reference.sha256] + ([spec.branch.sha256] if with_branch else [])
    return int8_check.decision_key(shas, threads)


def logged(served, choice: PrecisionChoice, sha256: str):
    """``served`` with its ``choice``, said in one log line once the choice is final (``settle`` says the rest)."""
    if choice.settled:
        log.log(logging.INFO if choice.precision == INT8 else logging.WARNING, "model %s served in %s: %s",
                sha256[:12], choice.precision, choice.reason)
    return replace(served, choice=choice)


def at_precision(served, wanted: Wanted, card: ModelCard, card_dir: Path | None, sha256: str, threads: int,
                 cache_dir=None):
    """``served`` (a ``server.model.serving.Served``) at the wanted precision when it can be, else float32;
    either way with its ``choice``: what answers and why (logged once).

    int8 needs ONNX Runtime and the card's int8 graphs for this exact ``.h5``; with ``auto`` they must also
    pass the check on this CPU (``server/model/int8_check.py``, its verdict cached in ``cache_dir``)."""
    if wanted.precision != INT8:
        return replace(served, choice=PrecisionChoice(FLOAT32, wanted.reason))
    if served.runtime != "onnxruntime" or card_dir is None:
        log.warning("int8 needs ONNX Runtime and the model's folder; serving float32 with %s", served.runtime)
        return replace(served, choice=PrecisionChoice(FLOAT32, f"int8 needs ONNX Runtime; {served.runtime} serves"))
    earlier = None
    if wanted.prove:  # this host may have decided already: a float32 verdict never loads the int8 graphs
        key = host_key(card, threads, served.run_branch is not None) if card.int8.reference is not None else ""
        earlier = unprovable(card, card_dir) or int8_check.cached_choice(cache_dir, key)
        if earlier is not None and earlier.precision == FLOAT32:
            return logged(served, earlier, sha256)
    int8 = int8_served(served, card, card_dir, sha256, threads)
    if int8 is None:
        return replace(served, choice=PrecisionChoice(FLOAT32, "the card's int8 graphs could not be served (see the log)"))
    if not wanted.prove:
        return logged(int8, PrecisionChoice(INT8, wanted.reason), sha256)
    choice = earlier
    if choice is None:  # accuracy first; an int8 that answers right is timed once the Predictor exists (settle)
        choice = int8_check.measure(int8, int8_check.read_reference(Path(card_dir) / card.int8.reference.file),
                                    malignant_mask(card.classes), card.thresholds.malignant,
                                    card.temperature_for("off") or 1.0, key)
        if choice.settled:
            int8_check.remember(cache_dir, key, choice)
    return logged(int8, choice, sha256) if choice.precision == INT8 else logged(served, choice, sha256)
