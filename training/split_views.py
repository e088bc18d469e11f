"""The run's split images, decoded once, and the model's views of them: what calibration and the non-skin fit read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.imaging import COLOUR_NONE, scale_pixels
from server.model.nonskin import FEATURES, FLOORS, IMAGENET
from server.model.nonskin_pictures import floor_statistics
from server.model.trust import tta_views
from training.nonskin import IMAGENET_PROBS, LESION_SETS


def run_views(predictor, images_uint8: np.ndarray, mode: str = "off", batch: int = 16):
    """(probabilities (n, v, classes), signals) for uint8 squares.

    ``signals`` holds what the non-skin check reads, of the plain image: pooled features,
    the picture statistics its floors read and, when the model carries the ImageNet branch, its pooled features
    and class probabilities (else None). Probabilities are of each view of TTA ``mode`` (in
    ``tta_views`` order: view 0 is the plain image).
    """
    views = mode != "off"
    probs, parts = [], {FEATURES: [], FLOORS: [], IMAGENET: [], IMAGENET_PROBS: []}
    for i in range(0, len(images_uint8), batch):
        x = scale_pixels(images_uint8[i:i + batch])
        n = len(x)
        fmap, p = predictor.forward(tta_views(x, mode))
        in_features, in_probs = predictor.forward_imagenet(x)
        parts[FEATURES].append(fmap[:n].mean(axis=(1, 2)))
        parts[FLOORS].append(floor_statistics(x))
        parts[IMAGENET].append(None if in_features is None else in_features[:n])
        parts[IMAGENET_PROBS].append(None if in_probs is None else in_probs[:n])
        probs.append(p.reshape(-1 if views else 1, n, p.shape[-1]).transpose(1, 0, 2))
    signals = {k: None if v[0] is None else np.concatenate(v) for k, v in parts.items()}
    return np.concatenate(probs), signals


def load_split_images(run_dir: Path, data_dir: Path, size: int, train_max: int, seed: int, colour: str = COLOUR_NONE):
    import pandas as pd

    from training import data as D

    meta = D.load_metadata(data_dir)
    split = pd.read_csv(run_dir / "split.csv")[["image_id", "split"]]
    df = split.merge(meta, on="image_id", how="left", validate="one_to_one")
    if df["path"].isna().any():
        raise SystemExit(f"{int(df['path'].isna().sum())} images of {run_dir / 'split.csv'} are not in {data_dir}")
    out, sources = {}, {}
    for s in ("train", "val", "test"):
        part = df[df["split"] == s]
        if s != "train":  # samples of the split's photos, as files, to make harder and to shift (one seed each)
            for i, (name, (n, _)) in enumerate(LESION_SETS.items()):
                sources[f"{name}_{s}"] = list(part["path"].sample(min(n, len(part)), random_state=seed + i))
        if s == "train" and train_max and len(part) > train_max:
            part = part.sample(train_max, random_state=seed)
        out[s] = (D.load_images(list(part["path"]), size, colour=colour), part["label"].to_numpy())
    return out, sources
