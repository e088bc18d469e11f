"""Fresh augmentation every epoch: a ``tf.data`` pipeline over uint8 images held in memory.

Every training image is decoded once (``training.data.load_images``) at ``store_size``
and kept as uint8; each epoch draws a new random view of it, so the network never sees
the same pixels twice. The views cover what varies between dermoscopy photos and
clinics, not what identifies a lesion:

- a random resized crop (framing and zoom), resized to the model's input size;
- horizontal and vertical flips and 90-degree rotations (a lesion has no "up");
- mild colour jitter (brightness, contrast, saturation, hue: cameras and lighting);
- a down-and-up resize for some images, because HAM10000 mixes 224 px crops with 150 px
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
    hue: float = 0.02
    down_up_prob: float = 0.4
    down_up_low: float = 0.55  # the smallest side of the down-and-up copy, as a share of the input size
    down_up_high: float = 0.85


def to_model_range(images):
    """uint8 or float [0, 255] tensor -> float32 in [-1, 1], as ``server.imaging.scale_pixels`` does."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / PIXEL_SCALE - PIXEL_OFFSET


def augment_one(image, size: int, aug: AugmentConfig, seed):
    """One random view of one uint8 (h, w, 3) image, float32 (size, size, 3) in [0, 255].

    ``seed`` is a stateless (2,) int seed: the same seed gives the same view, so a run is
    reproducible while each epoch, which passes a new seed, sees new views.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 10)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        area_range=(aug.min_crop_area, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True)
    x = tf.slice(image, begin, crop)
    x = tf.image.resize(tf.cast(x, tf.float32), (size, size), method="bilinear", antialias=True)
    x = tf.image.stateless_random_flip_left_right(x, seeds[1])
    x = tf.image.stateless_random_flip_up_down(x, seeds[2])
    x = tf.image.rot90(x, tf.random.stateless_uniform((), seeds[3], 0, 4, tf.int32))
    x = x / 255.0
    x = tf.image.stateless_random_brightness(x, aug.brightness, seeds[4])
    x = tf.image.stateless_random_contrast(x, 1 - aug.contrast, 1 + aug.contrast, seeds[5])
    x = tf.image.stateless_random_saturation(x, 1 - aug.saturation, 1 + aug.saturation, seeds[6])
    x = tf.image.stateless_random_hue(x, aug.hue, seeds[7])
    x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    return down_up(x, size, aug, seeds[8], seeds[9])


def down_up(x, size: int, aug: AugmentConfig, coin_seed, size_seed):
    """With probability ``down_up_prob``, resize down to a random smaller size and back up."""
    import tensorflow as tf

    small = tf.cast(tf.round(size * tf.random.stateless_uniform((), size_seed, aug.down_up_low, aug.down_up_high)),
                    tf.int32)

    def blur():
        low = tf.image.resize(x, (small, small), method="bilinear", antialias=True)
        return tf.image.resize(low, (size, size), method="bilinear")

    return tf.cond(tf.random.stateless_uniform((), coin_seed) < aug.down_up_prob, blur, lambda: x)


def training_dataset(images: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray, *, size: int,
                     batch_size: int, seed: int, num_classes: int, aug: AugmentConfig = AugmentConfig(),
                     balanced_sampling: bool = False, first_draw: int = 0):
    """An endless ``tf.data`` stream of (x, one-hot y, weight) batches with fresh views.

    Use ``steps_per_epoch = ceil(len(images) / batch_size)``. With ``balanced_sampling``
    every class is drawn equally often (with replacement), instead of each image once
    per epoch; ``sample_weights`` (one per class) then usually stays at 1. ``first_draw``
    offsets the augmentation seeds, so a resumed run does not replay its first views.
    """
    import tensorflow as tf

    images_t = tf.constant(images)  # uint8: the whole training split, about 1.3 GB at 224 px
    labels_t = tf.constant(labels.astype(np.int32))
    weights_t = tf.constant(sample_weights.astype(np.float32))
    if balanced_sampling:
        per_class = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c)).shuffle(4096, seed=seed + c)
                     .repeat() for c in np.unique(labels)]
        indices = tf.data.Dataset.sample_from_datasets(per_class, seed=seed, rerandomize_each_iteration=True)
    else:
        indices = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed,
                                                             reshuffle_each_iteration=True).repeat()
    # A counter gives each draw its own stateless seed: reproducible, and never the same view twice.
    seeds = tf.data.Dataset.counter(start=first_draw).map(lambda i: tf.stack([tf.cast(i, tf.int32), tf.constant(seed, tf.int32)]))

    def view(index, seed_pair):
        index = tf.cast(index, tf.int32)
        label = labels_t[index]
        x = to_model_range(augment_one(images_t[index], size, aug, seed_pair))
        return x, tf.one_hot(label, num_classes), weights_t[label]

    return (tf.data.Dataset.zip(indices, seeds)
            .map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=False)
            .prefetch(2))
