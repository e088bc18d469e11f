"""Build the MobileNetV2 classifier and choose which part of it trains (keras-io style).

``build_model`` makes one flat functional model: the MobileNetV2 layers followed by the
head GAP -> Dense(ReLU) -> Dropout -> Dense(softmax). Because it is flat, Keras 3 can cut
it at any layer (``keras.Model(layer.output, model.output)`` reuses the same layer
objects): the trainer warms up the head alone on pooled features, then trains everything.
BatchNorm layers stay frozen throughout: ``../shared``'s weights hold folded BN with
identity statistics, and the Keras fine-tuning guide keeps BN in inference mode anyway.
"""

from __future__ import annotations

from pathlib import Path

HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "head_out")
MOBILENETV2_BLOCKS = 17  # inverted-residual blocks: expanded_conv, then block_1 .. block_16


def resolve_weights(weights: str | None) -> str | None:
    """'imagenet' (Keras downloads it), a path to a local no-top .h5, or None/'none'."""
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (pass 'imagenet' to download Keras' own)")
    return str(path)


def block_output(base, blocks: int):
    """The output of MobileNetV2's first ``blocks`` inverted-residual blocks (0 or all 17: the whole network).

    Tracing, saving and converting a graph costs per layer, not per pixel: a few blocks keep every
    kind of layer the whole network has (expansion, stride-2 depthwise, residual add) at a fifth
    of its 154 layers, so a smoke run or a test goes through the whole pipeline in seconds.
    """
    if blocks <= 0 or blocks >= MOBILENETV2_BLOCKS:
        return base.output
    last = "expanded_conv" if blocks == 1 else f"block_{blocks - 1}"
    names = {layer.name for layer in base.layers}
    return base.get_layer(f"{last}_add" if f"{last}_add" in names else f"{last}_project_BN").output


def build_model(num_classes: int, input_size: int = 224, alpha: float = 1.0, weights: str | None = "imagenet",
                dense_units: int = 256, dropout: float = 0.3, seed: int = 42, blocks: int = 0):
    """MobileNetV2 (frozen; its first ``blocks`` blocks when given) + classification head, as one flat functional model."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    base = keras.applications.MobileNetV2(
        include_top=False, weights=resolve_weights(weights), input_tensor=inputs, alpha=alpha
    )
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(block_output(base, blocks))
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(dense_units, activation="relu", kernel_initializer=init, name="head_dense")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="head_out")(x)
    cut = f"_{blocks}blocks" if 0 < blocks < MOBILENETV2_BLOCKS else ""
    model = keras.Model(inputs, outputs, name=f"mobilenetv2_{alpha:g}_{input_size}{cut}_ham10000")
    set_trainable_from(model, "head_pool")
    return model


def set_trainable_from(model, first_trainable: str) -> None:
    """Freeze every layer before ``first_trainable``; train it and all after, except BatchNorm."""
    import keras

    names = [layer.name for layer in model.layers]
    start = names.index(first_trainable)
    for i, layer in enumerate(model.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and not is_bn


def head_model(model):
    """The head alone (pooled features -> classes), sharing weights with ``model``."""
    import keras

    return keras.Model(model.get_layer("head_pool").output, model.output, name="head")
