"""Does colour constancy help? A cheap ablation on validation, before any long run is spent on it.

    python -m training.ablate_colour --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --split saved_models/split.csv

For each colour option (``server.imaging.COLOURS``) it pools the frozen ImageNet
MobileNetV2's features of the training and validation images, preprocessed exactly as the
service would, fits a class-balanced logistic regression on the training split and prints
its validation figures. A frozen backbone is a proxy: it shows whether the option makes
the lesions easier to tell apart from the same features, at a few minutes' cost instead
of a 50-minute fine-tuning run per option. The test split is never read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def pooled(weights: str, images: np.ndarray, size: int) -> np.ndarray:
    """Pooled 1280-d features of ImageNet's MobileNetV2 (no top) for uint8 squares."""
    import keras

    from training.model import resolve_weights
    from training.phases import batched_predict

    net = keras.applications.MobileNetV2(include_top=False, weights=resolve_weights(weights), pooling="avg",
                                         input_shape=(size, size, 3))
    return batched_predict(net, images, batch_size=64, scale=True)


def probe(train_x, train_y, val_x, val_y) -> dict:
    """Class-balanced logistic regression on standardised features -> validation figures."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from server.lesions import CLASS_CODES, MALIGNANT_CODES

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
    clf.fit(train_x, train_y)
    probs = clf.predict_proba(val_x)
    pred = probs.argmax(1)
    malignant = [CLASS_CODES.index(c) for c in MALIGNANT_CODES]
    mel = CLASS_CODES.index("mel")
    return {"balanced_accuracy": balanced_accuracy_score(val_y, pred),
            "melanoma_recall": recall_score(val_y == mel, pred == mel),
            "malignant_auc": roc_auc_score(np.isin(val_y, malignant), probs[:, malignant].sum(1))}


def main(argv=None) -> int:
    from server.imaging import COLOURS
    from training import data as D

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--split", required=True, help="a run's split.csv (image_id, split), so the split is the shipped one")
    p.add_argument("--size", type=int, default=192)
    args = p.parse_args(argv)
    df = D.load_metadata(Path(args.data_dir)).merge(pd.read_csv(args.split)[["image_id", "split"]], on="image_id")
    rows = {s: df[df["split"] == s] for s in ("train", "val")}
    print(f"train {len(rows['train'])}, validation {len(rows['val'])} images; frozen ImageNet MobileNetV2 at {args.size} px")
    print("| colour | val balanced accuracy | melanoma recall | malignant AUC | seconds |")
    print("|---|---|---|---|---|")
    for colour in COLOURS:
        t = time.perf_counter()
        feats = {s: pooled(args.weights, D.load_images(list(r["path"]), args.size, colour=colour), args.size)
                 for s, r in rows.items()}
        m = probe(feats["train"], rows["train"]["label"].to_numpy(), feats["val"], rows["val"]["label"].to_numpy())
        print(f"| {colour} | {m['balanced_accuracy']:.3f} | {m['melanoma_recall']:.3f} | {m['malignant_auc']:.3f} "
              f"| {time.perf_counter() - t:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
