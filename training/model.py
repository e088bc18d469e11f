"""Build the MobileNetV2 classifier and choose which part of it trains (keras-io style).

``build_model`` makes one flat functional model: the MobileNetV2 layers followed by the
head GAP -> Dense(ReLU) -> Dropout -> Dense(softmax). Because it is flat, Keras 3 can cut
it at any layer (``keras.Model(layer.output, model.output)`` reuses the same layer
objects), which the trainer uses to cache the frozen bottom and train only the top.
BatchNorm layers stay frozen throughout: ``../shared``'s weights hold folded BN with
identity statistics, and the Keras fine-tuning guide keeps BN in inference mode anyway.
"""

from __future__ import annotations

from pathlib import Path

HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "head_out")


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


def build_model(num_classes: int, input_size: int = 224, alpha: float = 1.0, weights: str | None = "imagenet",
                dense_units: int = 256, dropout: float = 0.3, seed: int = 42):
    """MobileNetV2 (frozen) + classification head, as one flat functional model."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    base = keras.applications.MobileNetV2(
        include_top=False, weights=resolve_weights(weights), input_tensor=inputs, alpha=alpha
    )
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(dense_units, activation="relu", kernel_initializer=init, name="head_dense")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="head_out")(x)
    model = keras.Model(inputs, outputs, name=f"mobilenetv2_{alpha:g}_{input_size}_ham10000")
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


def layer_after(model, name: str) -> str:
    """The name of the layer that follows ``name`` in the model's topological order."""
    names = [layer.name for layer in model.layers]
    return names[names.index(name) + 1]


def split_model(model, cut: str):
    """(bottom, top): bottom maps images to ``cut``'s output, top maps that to classes.

    Both share layer objects with ``model``, so training ``top`` trains ``model``.
    """
    import keras

    cut_tensor = model.get_layer(cut).output
    return keras.Model(model.input, cut_tensor, name="bottom"), keras.Model(cut_tensor, model.output, name="top")


def head_model(model):
    """The head alone (pooled features -> classes), sharing weights with ``model``."""
    import keras

    return keras.Model(model.get_layer("head_pool").output, model.output, name="head")


def make_augmenter(strength: float = 1.0, seed: int = 42):
    """Training-only augmentation on float images in [0, 255].

    Rotation is full-circle and both flips are on: a dermoscopic lesion has no up.
    Zoom, shift, brightness and contrast cover framing and lighting; ``strength`` scales them.
    """
    import keras

    s = float(strength)
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom((-0.15 * s, 0.15 * s), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(0.08 * s, 0.08 * s, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomBrightness(0.12 * s, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomContrast(0.15 * s, value_range=(0, 255), seed=seed + 5),
        ],
        name="augment",
    )


def random_down_up(images, rng, probability: float = 0.5, low: float = 0.55, high: float = 0.85):
    """Blur some images by resizing down then back up, so the model keys on the lesion.

    ``../shared`` mixes 224 px crops with 150 px frames and pooled features tell the two
    apart almost perfectly; this removes sharpness as a shortcut.
    """
    import tensorflow as tf

    if rng.random() >= probability:
        return images
    size = int(images.shape[1])
    small = max(8, int(size * rng.uniform(low, high)))
    down = tf.image.resize(images, (small, small), method="bilinear", antialias=True)
    return tf.image.resize(down, (size, size), method="bilinear")
