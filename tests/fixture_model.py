"""A tiny, deterministic model whose answer depends on the image's colour.

An untrained MobileNetV2 answers exactly 1/7 for everything and proves nothing. This
model averages each colour channel and maps it to classes by hand-set weights, so tests
can assert *which* class wins: reddish images -> ``vasc``, bluish -> ``mel``, greenish ->
``nv`` (for example). It goes through the real export path and the real Predictor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.lesions import CLASS_CODES
from training.export import base_card, export_model

FIXTURE_SIZE = 32
# Tests of the trainer and of MobileNetV2 graphs cut it to its first 3 blocks: they hold every kind
# of layer the whole network has (expansion, stride-2 depthwise, residual add) at a fifth of its
# 154 layers, and tracing, converting and saving a graph cost per layer (training.model.block_output).
TINY_BLOCKS = 3
RED_CLASS, GREEN_CLASS, BLUE_CLASS = "vasc", "nv", "mel"


def colour_weights() -> tuple[np.ndarray, np.ndarray]:
    """Dense weights mapping mean (R, G, B) in [-1, 1] to 7 logits."""
    kernel = np.zeros((3, len(CLASS_CODES)), np.float32)
    for channel, code in enumerate((RED_CLASS, GREEN_CLASS, BLUE_CLASS)):
        kernel[channel, CLASS_CODES.index(code)] = 6.0
    bias = np.linspace(-0.3, 0.3, len(CLASS_CODES)).astype(np.float32)  # breaks ties on grey images
    return kernel, bias


def build_colour_model(size: int = FIXTURE_SIZE):
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="conv_identity")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_CODES), activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs, name="colour_fixture")
    model.get_layer("conv_identity").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    model.get_layer("classes").set_weights(list(colour_weights()))
    return model


def export_fixture(model, out_dir: Path, name: str, architecture: str) -> Path:
    """Export a fixture model through the trainer's own export path, with a minimal card."""
    card = base_card(
        name=name,
        version="test",
        input_size=int(model.inputs[0].shape[1]),
        architecture=architecture,
        metrics={"test": {"balanced_accuracy": 0.5, "accuracy": 0.6}},
        thresholds={"malignant": 0.5, "malignant_target_sensitivity": 0.9},
    )
    model_path, _ = export_model(model, out_dir, card)
    return model_path


def export_colour_model(out_dir: Path, size: int = FIXTURE_SIZE) -> Path:
    return export_fixture(build_colour_model(size), out_dir, "colour-fixture", "1x1 conv -> GAP -> dense (test fixture)")


# The context fixture: the colour model with the patient context joined after pooling; a
# lesion on the face pushes every answer to ``CONTEXT_CLASS``, so a test can see the
# context reach the model.
CONTEXT_SITE, CONTEXT_CLASS = "face", "bkl"


def build_colour_context_model(size: int = FIXTURE_SIZE):
    import keras

    from server.patient import MODEL_VECTOR_SIZE, SITE_SLICE, SITES

    image = keras.Input((size, size, 3), name="image")
    patient = keras.Input((MODEL_VECTOR_SIZE,), name="patient")
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="conv_identity")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate(name="head_concat")([x, patient])
    outputs = keras.layers.Dense(len(CLASS_CODES), activation="softmax", name="classes")(x)
    model = keras.Model([image, patient], outputs, name="colour_context_fixture")
    model.get_layer("conv_identity").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    colour, bias = colour_weights()
    context = np.zeros((MODEL_VECTOR_SIZE, len(CLASS_CODES)), np.float32)
    context[SITE_SLICE.start + SITES.index(CONTEXT_SITE), CLASS_CODES.index(CONTEXT_CLASS)] = 20.0
    model.get_layer("classes").set_weights([np.concatenate([colour, context]), bias])
    return model


def export_colour_context_model(out_dir: Path, size: int = FIXTURE_SIZE) -> Path:
    return export_fixture(build_colour_context_model(size), out_dir, "colour-context-fixture",
                          "1x1 conv -> GAP + patient context -> dense (test fixture)")


def with_card_changes(model_path: Path, folder: Path, **changes) -> Path:
    """A copy of an exported fixture model in ``folder``, its card's top-level ``changes`` applied: the model file."""
    import json
    import shutil

    shutil.copytree(model_path.parent, folder)
    card_file = next(folder.glob("*card*.json"))
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), **changes}))
    return folder / model_path.name
