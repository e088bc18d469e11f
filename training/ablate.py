"""Ablations judged on validation: which imbalance handling, loss and smoothing to use.

    python -m training.ablate --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 \
        --cache-dir /tmp/hamcache --out runs/ablation.md

It reuses the trainer's split and activation cache (same seed and options give the same
cache key), computes pooled features of the frozen network once, and trains a fresh head
per variant: seconds each on 2 cores, so every imbalance/loss choice is compared on the
same footing. The full fine-tuning run is too slow to repeat per variant on a CPU; the
head ablation is the proxy, and the report says so. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from server.lesions import CLASS_CODES
from training import train as T

VARIANTS = [
    dict(imbalance="none", loss="crossentropy", label_smoothing=0.0),
    dict(imbalance="class_weight", loss="crossentropy", label_smoothing=0.0),
    dict(imbalance="class_weight", loss="crossentropy", label_smoothing=0.05),
    dict(imbalance="oversample", loss="crossentropy", label_smoothing=0.05),
    dict(imbalance="both", loss="crossentropy", label_smoothing=0.05),
    dict(imbalance="none", loss="focal", label_smoothing=0.05),
    dict(imbalance="class_weight", loss="focal", label_smoothing=0.05),
]


def fresh_head(cfg: T.TrainConfig, features: int):
    """A new head with the trainer's layer names and initialisation, on pooled features."""
    import keras

    init = keras.initializers.GlorotUniform(seed=cfg.seed)
    inputs = keras.Input((features,))
    x = keras.layers.Dense(cfg.dense_units, activation="relu", kernel_initializer=init, name="head_dense")(inputs)
    x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(len(CLASS_CODES), activation="softmax", kernel_initializer=init, name="head_out")(x)
    return keras.Model(inputs, outputs)


def head_ablation(cfg: T.TrainConfig, pooled_train, y_train, pooled_val, y_val, out_dir: Path) -> list[dict]:
    """Train one head per variant; return validation figures for each."""
    import keras
    from sklearn.metrics import balanced_accuracy_score, recall_score

    rows = []
    for variant in VARIANTS:
        vcfg = replace(cfg, **variant)
        keras.utils.set_random_seed(cfg.seed)
        head = fresh_head(vcfg, pooled_train.shape[-1])
        T.train_head_on(head, pooled_train, y_train, pooled_val, y_val, vcfg, out_dir / "ablation_history.csv")
        pred = T.batched_predict(head, pooled_val).argmax(1)
        rows.append(variant | {
            "val_balanced_accuracy": float(balanced_accuracy_score(y_val, pred)),
            "val_mel_recall": float(recall_score(y_val, pred, labels=[CLASS_CODES.index("mel")], average="macro",
                                                 zero_division=0)),
            "val_accuracy": float((pred == y_val).mean()),
        })
        T.log.info("ablation %s -> %s", variant, rows[-1]["val_balanced_accuracy"])
    return rows


def ablation_markdown(rows: list[dict]) -> str:
    lines = ["Head-only (phase 1) on pooled features of the frozen network; figures on the validation split.", "",
             "| imbalance | loss | label smoothing | val balanced acc | val accuracy | val melanoma recall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['imbalance']} | {r['loss']} | {r['label_smoothing']} | {r['val_balanced_accuracy']:.3f} | "
                     f"{r['val_accuracy']:.3f} | {r['val_mel_recall']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Head ablations on the trainer's cached activations.")
    p.add_argument("--out", default="runs/ablation.md")
    args, rest = p.parse_known_args(argv)  # everything else is a trainer option (--data-dir, --cache-dir, ...)
    cfg = T.parse_args(rest)
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    T.setup_logging(out_dir)

    from training.model import build_model, split_model

    prepared = T.prepare_data(cfg, out_dir)
    model = build_model(len(CLASS_CODES), cfg.input_size, cfg.alpha, cfg.weights, cfg.dense_units, cfg.dropout, cfg.seed)
    bottom, _ = split_model(model, cfg.cut)
    acts_train, acts_val = T.cache_train_val(bottom, prepared, cfg)
    pooled_train, pooled_val = T.pooled_features(model, cfg, acts_train, acts_val)
    rows = head_ablation(cfg, pooled_train, prepared.y["train"], pooled_val, prepared.y["val"], out_dir)
    Path(args.out).write_text(ablation_markdown(rows))
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(ablation_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
