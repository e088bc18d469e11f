"""The data a run trains on, in memory: split by lesion, decoded once, class loss weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.lesions import CLASS_CODES
from training import data as D
from training.config import TrainConfig
from training.provenance import HAM10000, Provenance, provenance_of

log = logging.getLogger("training")


def limit_per_class(df, n: int, seed: int):
    """Keep whole lesions, up to about ``n`` images per class (for smoke runs)."""
    if not n:
        return df
    rng = np.random.default_rng(seed)
    keep = []
    for _, g in df.groupby("dx"):
        lesions = rng.permutation(g["lesion_id"].unique())
        count = 0
        for lesion in lesions:
            rows = g.index[g["lesion_id"] == lesion]
            keep.extend(rows)
            count += len(rows)
            if count >= n:
                break
    return df.loc[sorted(keep)].reset_index(drop=True)


def class_loss_weights(imbalance: str, labels: np.ndarray) -> np.ndarray:
    """One loss weight per class for ``imbalance``; class-balanced sampling uses none."""
    k = len(CLASS_CODES)
    if imbalance in ("none", "sampling"):
        return np.ones(k, np.float32)
    balanced = D.class_weights(labels, k)
    w = np.array([balanced[c] for c in range(k)], np.float64)
    if imbalance == "sqrt":
        w = np.sqrt(w)
        w /= w[labels].mean()  # the average sample still weighs 1, so the learning rate means the same
    return w.astype(np.float32)


@dataclass
class Prepared:
    """The split dataset in memory: training images at ``store_size``, the others at the input size."""

    df: object
    parts: dict
    y: dict
    images: dict
    sizes: dict
    provenance: Provenance = HAM10000  # what the card says the model learned from


def prepare_data(cfg: TrainConfig, out_dir: Path) -> Prepared:
    """Read metadata, split by lesion (written to ``split.csv``), decode every image once.

    Validation and test images go through exactly the service's preprocessing at the
    input size; training images are kept a little larger for random crops.
    """
    df = limit_per_class(D.load_metadata(Path(cfg.data_dir)), cfg.limit_per_class, cfg.seed)
    provenance = provenance_of(Path(cfg.data_dir), df["lesion_id"])
    df["split"] = D.split_by_lesion(df, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    D.check_split(df, df["split"])
    df[["image_id", "lesion_id", "dx", "split"]].to_csv(out_dir / "split.csv", index=False)
    sizes = {k: int(v) for k, v in df.groupby("split").size().items()}
    log.info("split by lesion_id: %s images (%s lesions)", sizes, df.groupby("split")["lesion_id"].nunique().to_dict())
    parts = {s: df.index[df["split"] == s].to_numpy() for s in D.SPLITS}
    y = {s: df.loc[parts[s], "label"].to_numpy() for s in D.SPLITS}
    images = {s: D.load_images(list(df.loc[parts[s], "path"]), cfg.store_size if s == "train" else cfg.input_size,
                               colour=cfg.colour)
              for s in D.SPLITS}
    return Prepared(df, parts, y, images, sizes, provenance)


def resized(images: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """uint8 images resized to ``size`` (antialiased bilinear, as the serving path does)."""
    import tensorflow as tf

    if images.shape[1] == size:
        return images
    return np.concatenate([
        tf.cast(tf.round(tf.image.resize(images[i:i + batch], (size, size), antialias=True)), tf.uint8).numpy()
        for i in range(0, len(images), batch)])


def pooled_features(model, images: np.ndarray) -> np.ndarray:
    """Pooled 1280-d features of the (frozen) network for uint8 images at the input size."""
    import keras

    from training.phases import batched_predict

    pool = keras.Model(model.input, model.get_layer("head_pool").output)
    return batched_predict(pool, images, scale=True)
