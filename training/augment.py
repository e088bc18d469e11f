"""Fresh augmentation every epoch: a ``tf.data`` pipeline over uint8 images held in memory.

Every training image is decoded once (``training.data.load_images``) at ``store_size``
and kept as uint8; each epoch draws a new random view of it, so the network never sees
the same pixels twice. The views cover what varies between dermoscopy photos and
clinics, not what identifies a lesion:

- a random resized crop (framing and zoom), resized to the model's input size;
- the eight flips and 90-degree rotations of the square (a lesion has no "up");
- mild colour jitter (brightness, contrast, saturation: cameras and lighting), and a
  per-channel gain (another dermatoscope's white balance);
- for some views, the dark round corners of a dermatoscope's circular field, which other
  clinics' photos often show and HAM10000's centre crops mostly do not;
- a down-and-up resize for some batches, because HAM10000 mixes 224 px crops with 150 px
  frames and features otherwise key on sharpness rather than on the lesion.

Pixels are scaled to [-1, 1] with ``server.imaging``'s constants, the serving scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.imaging import PIXEL_OFFSET, PIXEL_SCALE


@dataclass(frozen=True)
class AugmentConfig:
    """How strong each augmentation is; the defaults are the trainer's."""

    min_crop_area: float = 0.45  # of the stored square, before resizing to the input size
    brightness: float = 0.10  # added, on a [0, 1] scale
    contrast: float = 0.15  # factor in [1 - c, 1 + c]
    saturation: float = 0.15
    down_up_prob: float = 0.4
    down_up_low: float = 0.55  # the smallest side of the down-and-up copy, as a share of the input size
    down_up_high: float = 0.85
    colour_cast: float = 0.0  # per-channel gain in [1 - c, 1 + c]
    vignette_prob: float = 0.0
    vignette_radius: tuple[float, float] = (0.85, 1.25)  # where the field ends, as a share of the half-side


def to_model_range(images):
    """uint8 or float [0, 255] tensor -> float32 in [-1, 1], as ``server.imaging.scale_pixels`` does."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / PIXEL_SCALE - PIXEL_OFFSET


def augment_batch(images, size: int, aug: AugmentConfig, seed):
    """Random views of a uint8 batch (n, h, w, 3) -> float32 (n, size, size, 3) in [0, 255].

    Every step runs on the whole batch with per-image random parameters, and the steps
    are arranged to touch the pixels as few times as possible: these element-wise passes,
    not the arithmetic, are what the 2 CPU cores would otherwise spend beside training.
    ``seed`` is a stateless (2,) int seed: the same seed gives the same views.
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    s = tf.random.experimental.stateless_split(seed, 14)

    def uniform(i, low=0.0, high=1.0, shape=None):
        return tf.random.stateless_uniform(shape if shape is not None else (n,), s[i], low, high)

    # 90-degree rotations: a random transpose of the uint8 source; with the flips below,
    # all eight symmetries of the square.
    images = tf.where((uniform(0) < 0.5)[:, None, None, None], tf.transpose(images, (0, 2, 1, 3)), images)
    # Random resized crop with random flips in one op: crop_and_resize flips a box whose
    # corners are given in reverse order.
    area = uniform(1, aug.min_crop_area, 1.0)
    log_ratio = uniform(2, np.log(3 / 4), np.log(4 / 3))
    h = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), 1.0)
    w = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), 1.0)
    top, left = uniform(3) * (1.0 - h), uniform(4) * (1.0 - w)
    flip_v, flip_h = uniform(5) < 0.5, uniform(6) < 0.5
    y1, y2 = tf.where(flip_v, top + h, top), tf.where(flip_v, top, top + h)
    x1, x2 = tf.where(flip_h, left + w, left), tf.where(flip_h, left, left + w)
    x = tf.image.crop_and_resize(tf.cast(images, tf.float32), tf.stack([y1, x1, y2, x2], axis=1), tf.range(n),
                                 (size, size))
    # Colour in one pass: saturation s about the grey, contrast c about the image mean,
    # brightness b, then a per-channel gain g and the field's mask m:
    # y = (c*s*x + c*(1-s)*grey + (1-c)*mean + b) * g * m.
    sat = uniform(7, 1 - aug.saturation, 1 + aug.saturation)[:, None, None, None]
    con = uniform(8, 1 - aug.contrast, 1 + aug.contrast)[:, None, None, None]
    bright = uniform(9, -aug.brightness, aug.brightness)[:, None, None, None] * 255.0
    gain = uniform(11, 1 - aug.colour_cast, 1 + aug.colour_cast, shape=(n, 3))[:, None, None, :]
    field = dermatoscope_field(n, size, uniform(12) < aug.vignette_prob, uniform(13, *aug.vignette_radius))
    grey = tf.reduce_mean(x, axis=3, keepdims=True)
    mean = tf.reduce_mean(grey, axis=(1, 2, 3), keepdims=True)
    x = tf.clip_by_value((x * (con * sat) + grey * (con * (1 - sat)) + ((1 - con) * mean + bright)) * (gain * field),
                         0.0, 255.0)
    # Down and up, for a share of the batches: one random smaller size per batch.
    coin, scale = tf.unstack(uniform(10, shape=(2,)))
    small = tf.cast(tf.round(size * (aug.down_up_low + scale * (aug.down_up_high - aug.down_up_low))), tf.int32)
    return tf.cond(coin < aug.down_up_prob,
                   lambda: tf.image.resize(tf.image.resize(x, (small, small), method="area"), (size, size)),
                   lambda: x)


def dermatoscope_field(n, size: int, on, radius):
    """(n, size, size, 1) masks: 1 inside a circle of ``radius`` half-sides, fading to black outside.

    Where ``on`` is false the mask is all ones. The edge fades over a tenth of the half-side,
    as a real field's rim is soft.
    """
    import tensorflow as tf

    axis = (tf.range(size, dtype=tf.float32) + 0.5) / (size / 2) - 1.0
    r = tf.sqrt(axis[None, :, None] ** 2 + axis[None, None, :] ** 2)  # (1, size, size)
    radius = tf.where(on, radius, 100.0)[:, None, None]
    return tf.clip_by_value((radius - r) / 0.1, 0.0, 1.0)[..., None]


def training_dataset(images: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray, *, size: int,
                     batch_size: int, seed: int, num_classes: int, aug: AugmentConfig = AugmentConfig(),
                     balanced_sampling: bool = False, first_draw: int = 0, soft_targets: np.ndarray | None = None):
    """An endless ``tf.data`` stream of (x, one-hot y, weight) batches with fresh views.

    With ``soft_targets`` (one row of k per image) y is ``[one-hot | soft target]``, for the
    student's distillation loss (``training.distill``).

    Use ``steps_per_epoch = ceil(len(images) / batch_size)``. With ``balanced_sampling``
    every class is drawn equally often (with replacement), instead of each image once
    per epoch; ``sample_weights`` (one per class) then usually stays at 1. ``first_draw``
    offsets the augmentation seeds, so a resumed run does not replay its first views.
    """
    import tensorflow as tf

    images_t = tf.constant(images)  # uint8: the whole training split, about 1.1 GB at 224 px
    labels_t = tf.constant(labels.astype(np.int32))
    weights_t = tf.constant(sample_weights.astype(np.float32))
    soft_t = None if soft_targets is None else tf.constant(soft_targets.astype(np.float32))
    if balanced_sampling:
        per_class = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c)).shuffle(4096, seed=seed + c)
                     .repeat() for c in np.unique(labels)]
        indices = tf.data.Dataset.sample_from_datasets(per_class, seed=seed, rerandomize_each_iteration=True)
    else:
        indices = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed,
                                                             reshuffle_each_iteration=True).repeat()
    # A counter gives each batch its own stateless seed: reproducible, and never the same view twice.
    first_batch = first_draw // batch_size
    seeds = tf.data.Dataset.counter(start=first_batch).map(
        lambda i: tf.stack([tf.cast(i, tf.int32), tf.constant(seed, tf.int32)]))

    def views(index, seed_pair):
        index = tf.cast(index, tf.int32)
        label = tf.gather(labels_t, index)
        x = to_model_range(augment_batch(tf.gather(images_t, index), size, aug, seed_pair))
        y = tf.one_hot(label, num_classes)
        if soft_t is not None:
            y = tf.concat([y, tf.gather(soft_t, index)], axis=-1)
        return x, y, tf.gather(weights_t, label)

    return (tf.data.Dataset.zip(indices.batch(batch_size), seeds)
            .map(views, num_parallel_calls=2, deterministic=True)
            .prefetch(2))
