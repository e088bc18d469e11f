"""Write a trained model as ``.h5`` plus ``model_card.json``: the pair the service loads.

The card is the contract between trainer and service: class order, input size and the
preprocessing id must match what ``server/`` implements, and ``sha256`` ties the card to
the exact ``.h5`` bytes so a swapped file is caught at load time.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

from server.imaging import COLOUR_NONE, preprocessing_id
from server.lesions import CLASS_CODES, LIMITATIONS
from server.model.card import CARD_FILENAME, ModelCard
from server.model.files import file_sha256
from training.provenance import HAM10000_LICENCE, HAM10000_SOURCE

MODEL_FILENAME = "ham10000_mobilenetv2.h5"

INTENDED_USE = (
    "Screening aid for dermoscopic images of single pigmented skin lesions. Not a diagnosis; "
    "not for clinical decisions without a qualified clinician."
)


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit the trainer ran from, so a model can be traced to its code."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def base_card(*, name: str, version: str, input_size: int, architecture: str, colour: str = COLOUR_NONE,
              **extra) -> dict:
    """The fields every card has; the trainer adds metrics, data and config via ``extra``.
    ``colour``: the colour constancy the model was trained with, recorded in its preprocessing id."""
    return {
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASS_CODES),
        "input_size": int(input_size),
        "preprocessing": preprocessing_id(colour),
        "architecture": architecture,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "data": {"source": HAM10000_SOURCE},
        "licence": HAM10000_LICENCE,
        **extra,
    }


def save_model(model, out_dir: Path, filename: str = MODEL_FILENAME) -> tuple[Path, str]:
    """Save ``model`` as legacy HDF5 without optimizer state: (its path, its sha256)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / filename
    model.save(model_path, include_optimizer=False)
    return model_path, file_sha256(model_path)


def export_model(model, out_dir: Path, card: dict, filename: str = MODEL_FILENAME) -> tuple[Path, Path]:
    """Save ``model`` and write its card (checked as a ``ModelCard``) beside it, pinned to the file's sha256."""
    model_path, sha = save_model(model, out_dir, filename)
    card = ModelCard.from_dict({**card, "model_file": filename, "sha256": sha})
    return model_path, card.write(Path(out_dir) / CARD_FILENAME)


IMAGENET_CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
# The ImageNet branch sees the model's input resized to this side (192: as it is). At 128 px
# it cost under half as much but wrongly refused more harder-made lesions; the gate
# (``NONSKIN_IMAGENET_GATE_PERCENTILE``) pays for the full size instead.
IMAGENET_RESOLUTION = 192


def imagenet_branch(weights: str, input_size: int, resolution: int = IMAGENET_RESOLUTION):
    """ImageNet's MobileNetV2 with its 1000-class classifier, as a nested model named ``imagenet``
    with two outputs (pooled features, class probabilities), its weights held in float16; it
    resizes its input to ``resolution`` first.

    It rides in the exported graph so the non-skin check knows what a cat or a cup of coffee
    looks like, and one ``.h5`` holds everything one model needs. float16 halves its 14.5 MB,
    keeping the file under the repository's 20 MB; the service widens it to float32 at load
    (``server/model/runtime.py``). ``weights``: 'imagenet' (Keras downloads them) or a path to
    a with-top MobileNetV2 ``.h5``.
    """
    import keras

    source = weights if weights == "imagenet" else str(Path(weights).expanduser())
    if source != "imagenet" and not Path(source).is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {source} (pass 'imagenet' to download Keras' own)")
    reference = keras.applications.MobileNetV2(include_top=True, weights=source)  # 224 px, as published
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float16")
    try:
        inputs = keras.Input((input_size, input_size, 3))
        x = keras.layers.Resizing(resolution, resolution, name="imagenet_resize")(inputs) if resolution != input_size else inputs
        # Built on the resized tensor, so the branch is one flat graph (no model nested in it).
        net = keras.applications.MobileNetV2(include_top=True, weights=None, input_tensor=x)
    finally:
        keras.config.set_dtype_policy(previous)
    net.set_weights(reference.get_weights())  # the weights do not depend on the input size
    return keras.Model(inputs, [net.get_layer("predictions").input, net.output], name="imagenet")


def with_imagenet_branch(model, weights: str):
    """The classifier with ImageNet's network beside it, in one graph (see ``attach_branch``)."""
    return attach_branch(model, imagenet_branch(weights, int(model.inputs[0].shape[1])))


def attach_branch(model, branch):
    """One graph: the classifier's probabilities first, then ``branch``'s two outputs (pooled
    features, class probabilities) on the same image input (a patient input stays the
    classifier's alone). ``branch`` must be named ``imagenet``."""
    import keras

    return keras.Model(model.inputs, [model.outputs[0], *branch(model.inputs[0])], name=model.name)


def imagenet_label_names(labels: str) -> list[str]:
    """The 1000 class names in the classifier's order, from a text file (one a line) or 'imagenet'
    (Keras's class index, downloaded)."""
    if labels == "imagenet":
        import json

        import keras

        index = json.loads(Path(keras.utils.get_file("imagenet_class_index.json", IMAGENET_CLASS_INDEX_URL)).read_text())
        return [index[str(i)][1].replace("_", " ") for i in range(1000)]
    names = [line.strip() for line in Path(labels).expanduser().read_text().splitlines() if line.strip()]
    if len(names) != 1000:
        raise ValueError(f"{labels} names {len(names)} classes; ImageNet's classifier has 1000")
    return names
