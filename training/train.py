"""Train, evaluate and export the HAM10000 MobileNetV2 screening model in one command.

    python -m training.train --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --out-dir runs/latest

How it fits a 2-core CPU in under an hour: the frozen bottom of MobileNetV2 (up to
``--cut``) never changes, so its activations are computed once per image for a few
augmented variants (``--aug-copies``) and cached; both phases then train on the cache.

1. Phase 1 trains the head (GAP -> Dense -> Dropout -> Dense) on pooled features of the
   frozen network.
2. Phase 2 unfreezes everything after ``--cut`` (BatchNorm stays frozen) and fine-tunes it
   with AdamW and cosine decay.

The checkpoint kept is the one with the best validation *balanced* accuracy. The test
split is touched once, at the end, through the exported ``.h5`` and the service's own
Predictor, and never used for any choice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from server.imaging import scale_pixels
from server.lesions import CLASS_CODES
from training import data as D
from training.evaluate import choose_malignant_threshold, evaluate_predictions, metrics_markdown, plot_history, write_plots
from training.export import CARD_FILENAME, MODEL_FILENAME, base_card, export_model, git_commit

log = logging.getLogger("training")


@dataclass
class TrainConfig:
    data_dir: str
    out_dir: str = "runs/latest"
    weights: str = "imagenet"
    seed: int = 42
    input_size: int = 224
    alpha: float = 1.0
    cut: str = "block_9_add"
    dense_units: int = 256
    dropout: float = 0.3
    batch_size: int = 32
    head_epochs: int = 15
    head_lr: float = 1e-3
    epochs: int = 12
    lr: float = 3e-4
    weight_decay: float = 1e-4
    patience: int = 4
    aug_copies: int = 4
    aug_strength: float = 1.0
    down_up_prob: float = 0.5
    imbalance: str = "class_weight"  # class_weight | oversample | both | none
    loss: str = "crossentropy"  # crossentropy | focal
    focal_gamma: float = 2.0
    label_smoothing: float = 0.05
    ema_momentum: float = 0.0  # e.g. 0.99 scores and keeps an average of the weights in phase 2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit_per_class: int = 0
    cache_dir: str | None = None
    smoke: bool = False
    name: str = "ham10000-mobilenetv2"
    version: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y.%m.%d"))


SMOKE_OVERRIDES = dict(input_size=64, alpha=0.35, dense_units=32, head_epochs=2, epochs=1, aug_copies=1,
                       batch_size=16, patience=1, limit_per_class=40)


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig(data_dir="")
    p = argparse.ArgumentParser(description="Train the HAM10000 MobileNetV2 screening model.")
    p.add_argument("--data-dir", required=True, help="HAM10000 layout: HAM10000_metadata.csv (or images.csv) + images/")
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (Keras download), a path to a no-top MobileNetV2 .h5, or 'none'")
    p.add_argument("--smoke", action="store_true",
                   help="a quick end-to-end run: 64 px, 1-2 epochs, at most 40 images a class "
                        "(alpha 0.35 with --weights none, else the weights' alpha 1.0)")
    for name, default in asdict(d).items():
        if name in ("data_dir", "out_dir", "weights", "smoke"):
            continue
        flag = "--" + name.replace("_", "-")
        kind = type(default) if default is not None else str
        p.add_argument(flag, type=kind, default=None, help=f"default {default}")
    args = vars(p.parse_args(argv))
    cfg = TrainConfig(data_dir=args.pop("data_dir"), out_dir=args.pop("out_dir"), weights=args.pop("weights"),
                      smoke=args.pop("smoke"))
    if cfg.smoke:
        for k, v in SMOKE_OVERRIDES.items():
            setattr(cfg, k, v)
        if cfg.weights not in (None, "", "none", "None"):
            cfg.alpha = 1.0  # pretrained no-top weights exist per alpha; the ones people have are alpha 1.0
    for k, v in args.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def setup_logging(out_dir: Path) -> None:
    """Progress to the console and to ``train.log`` in the run folder."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out_dir / "train.log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def distribution_strategy():
    """MirroredStrategy over several GPUs, else the default (one GPU or the CPU)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


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


# ---- the activation cache -------------------------------------------------------------

def cache_key(cfg: TrainConfig, image_ids, variant: str) -> str:
    """Everything that changes the cached activations, hashed: stale caches are never reused."""
    weights = cfg.weights
    if weights not in (None, "imagenet", "none") and Path(weights).is_file():
        weights = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    parts = [cfg.input_size, cfg.alpha, weights, cfg.cut, cfg.seed, variant, ",".join(image_ids)]
    if variant == "train":
        parts += [cfg.aug_copies, cfg.aug_strength, cfg.down_up_prob]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def compute_activations(bottom, images: np.ndarray, cfg: TrainConfig, augment: bool, desc: str) -> np.ndarray:
    """Bottom-network activations, float16, shape (copies, n, h, w, c).

    Each augmented copy is an independent random augmentation of every image, plus a
    random down-and-up resize; copy 0 of an un-augmented pass is the plain image.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from training.model import make_augmenter, random_down_up

    copies = cfg.aug_copies if augment else 1
    rng = np.random.default_rng(cfg.seed + (1 if augment else 2))
    augmenter = make_augmenter(cfg.aug_strength, cfg.seed) if augment else None
    run_bottom = tf.function(lambda x: bottom(x, training=False), reduce_retracing=True)
    out_shape = tuple(int(s) for s in bottom.output_shape[1:])
    out = np.empty((copies, len(images)) + out_shape, np.float16)
    bs = 64
    with tqdm(total=copies * len(images), desc=desc, unit="img", file=sys.stdout, mininterval=10) as bar:
        for c in range(copies):
            for start in range(0, len(images), bs):
                x = tf.convert_to_tensor(images[start:start + bs], tf.float32)
                if augmenter is not None:
                    x = augmenter(x, training=True)
                    x = random_down_up(x, rng, cfg.down_up_prob)
                    x = tf.clip_by_value(x, 0.0, 255.0)
                x = x / 127.5 - 1.0  # the scaling of server.imaging.scale_pixels, on a tensor
                out[c, start:start + bs] = run_bottom(x).numpy().astype(np.float16)
                bar.update(len(x))
    return out


def cached_activations(bottom, images, image_ids, cfg: TrainConfig, variant: str) -> np.ndarray:
    augment = variant == "train"
    if cfg.cache_dir:
        path = Path(cfg.cache_dir) / f"{variant}-{cache_key(cfg, image_ids, variant)}.npy"
        if path.is_file():
            log.info("reusing cached %s activations %s", variant, path)
            return np.load(path)
    acts = compute_activations(bottom, images, cfg, augment, f"cache {variant}")
    if cfg.cache_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, acts)
    return acts


# ---- training ---------------------------------------------------------------------------

def balanced_accuracy_callback(predict_fn, x_val, y_val):
    """Adds ``val_balanced_accuracy`` to each epoch's logs, for checkpoint choice and early stopping."""
    import keras
    from sklearn.metrics import balanced_accuracy_score

    class ValBalancedAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pred = predict_fn(x_val).argmax(1)
            logs = logs if logs is not None else {}
            logs["val_balanced_accuracy"] = float(balanced_accuracy_score(y_val, pred))
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))

    return ValBalancedAccuracy()


def batched_predict(model, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    return np.concatenate([fn(tf.convert_to_tensor(x[i:i + batch_size], tf.float32)).numpy()
                           for i in range(0, len(x), batch_size)])


def make_cache_dataset(acts: np.ndarray, labels: np.ndarray, weights: np.ndarray, cfg: TrainConfig):
    """Batches from the cache: each epoch, every image appears once (or classes are
    oversampled), each time as a random one of its augmented copies."""
    import keras

    oversample = cfg.imbalance in ("oversample", "both")
    k = len(CLASS_CODES)

    class CacheDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(cfg.seed)
            self.on_epoch_end()

        def on_epoch_end(self):
            self.order = D.epoch_indices(labels, self.rng, oversample)
            self.copy = self.rng.integers(0, acts.shape[0], len(self.order))

        def __len__(self):
            return int(np.ceil(len(labels) / cfg.batch_size))

        def __getitem__(self, i):
            sl = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            idx, cp = self.order[sl], self.copy[sl]
            x = acts[cp, idx].astype(np.float32)
            y = np.eye(k, dtype=np.float32)[labels[idx]]
            return x, y, weights[labels[idx]].astype(np.float32)

    return CacheDataset()


def sample_weights_for(cfg: TrainConfig, labels: np.ndarray) -> np.ndarray:
    k = len(CLASS_CODES)
    if cfg.imbalance in ("class_weight", "both"):
        cw = D.class_weights(labels, k)
        return np.array([cw[c] for c in range(k)], np.float32)
    return np.ones(k, np.float32)


def train_head(model, pooled_train, y_train, pooled_val, y_val, cfg: TrainConfig, out_dir: Path) -> None:
    """Phase 1: the head on pooled features of the frozen network."""
    from training.model import head_model

    train_head_on(head_model(model), pooled_train, y_train, pooled_val, y_val, cfg, out_dir / "history_phase1.csv")


def train_head_on(head, pooled_train, y_train, pooled_val, y_val, cfg: TrainConfig, history_csv: Path) -> None:
    """Fit a head (pooled features -> classes) with the configured imbalance handling and loss.

    Every cached copy of a training image is one sample; the best epoch on validation
    balanced accuracy is restored.
    """
    import keras

    from training.losses import make_loss

    head.compile(optimizer=keras.optimizers.Adam(cfg.head_lr),
                 loss=make_loss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma), metrics=["accuracy"])
    w = sample_weights_for(cfg, y_train)
    copies, n = pooled_train.shape[:2]
    x = pooled_train.reshape(copies * n, -1).astype(np.float32)
    y = np.tile(y_train, copies)
    if cfg.imbalance in ("oversample", "both"):
        idx = D.epoch_indices(y, np.random.default_rng(cfg.seed), True)
        x, y = x[idx], y[idx]
    k = len(CLASS_CODES)
    head.fit(
        x, np.eye(k, dtype=np.float32)[y], sample_weight=w[y], batch_size=64, epochs=cfg.head_epochs, verbose=2,
        validation_data=(pooled_val.astype(np.float32), np.eye(k, dtype=np.float32)[y_val]),
        callbacks=[
            balanced_accuracy_callback(lambda v: batched_predict(head, v), pooled_val, y_val),
            keras.callbacks.EarlyStopping("val_balanced_accuracy", mode="max", patience=cfg.patience,
                                          restore_best_weights=True),
            keras.callbacks.CSVLogger(history_csv),
        ],
    )


def fine_tune(model, top, acts_train, y_train, acts_val, y_val, cfg: TrainConfig, out_dir: Path) -> None:
    """Phase 2: everything after the cut (BatchNorm frozen), AdamW with cosine decay.

    With ``ema_momentum`` the optimizer keeps an exponential moving average of the weights,
    and that average is what each epoch is scored on and what is kept: on a 1,432-image
    validation split the raw weights swing by several points from epoch to epoch, and the
    average of the last few hundred steps is steadier than any one of them.
    """
    import keras

    from training.losses import make_loss
    from training.model import layer_after, set_trainable_from

    set_trainable_from(model, layer_after(model, cfg.cut))
    dataset = make_cache_dataset(acts_train, y_train, sample_weights_for(cfg, y_train), cfg)
    steps = max(1, cfg.epochs * len(dataset))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=cfg.lr,
                                                      warmup_steps=max(1, len(dataset) // 2))
    use_ema = cfg.ema_momentum > 0
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=use_ema,
                                       ema_momentum=cfg.ema_momentum if use_ema else 0.99)
    top.compile(optimizer=optimizer, loss=make_loss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma),
                metrics=["accuracy"])
    x_val = acts_val[0]
    # SwapEMAWeights goes first, so that scoring and the best-epoch snapshot see the average.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if use_ema else []
    top.fit(
        dataset, epochs=cfg.epochs, verbose=2,
        callbacks=[
            *ema,
            balanced_accuracy_callback(lambda v: batched_predict(top, v), x_val, y_val),
            keras.callbacks.EarlyStopping("val_balanced_accuracy", mode="max", patience=cfg.patience,
                                          restore_best_weights=True),
            keras.callbacks.CSVLogger(out_dir / "history.csv"),
        ],
    )


# ---- the whole run ----------------------------------------------------------------------

@dataclass
class Prepared:
    """The split dataset in memory: metadata, split indices, labels and uint8 images."""

    df: object
    parts: dict
    y: dict
    images: np.ndarray
    sizes: dict


def prepare_data(cfg: TrainConfig, out_dir: Path) -> Prepared:
    """Read metadata, split by lesion (written to ``split.csv``), load every image once."""
    df = limit_per_class(D.load_metadata(Path(cfg.data_dir)), cfg.limit_per_class, cfg.seed)
    df["split"] = D.split_by_lesion(df, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    D.check_split(df, df["split"])
    df[["image_id", "lesion_id", "dx", "split"]].to_csv(out_dir / "split.csv", index=False)
    sizes = {k: int(v) for k, v in df.groupby("split").size().items()}
    log.info("split by lesion_id: %s images (%s lesions)", sizes, df.groupby("split")["lesion_id"].nunique().to_dict())
    images = D.load_images(list(df["path"]), cfg.input_size)
    parts = {s: df.index[df["split"] == s].to_numpy() for s in D.SPLITS}
    y = {s: df.loc[parts[s], "label"].to_numpy() for s in D.SPLITS}
    return Prepared(df, parts, y, images, sizes)


def cache_train_val(bottom, prepared: Prepared, cfg: TrainConfig):
    """Augmented copies of the training split, the plain validation split."""
    df, parts, images = prepared.df, prepared.parts, prepared.images
    return tuple(cached_activations(bottom, images[parts[s]], list(df.loc[parts[s], "image_id"]), cfg, s)
                 for s in ("train", "val"))


def pooled_features(model, cfg: TrainConfig, acts_train, acts_val):
    """Pooled 1280-d features of the frozen top for every cached copy (phase 1's input)."""
    import keras

    pool = keras.Model(model.get_layer(cfg.cut).output, model.get_layer("head_pool").output)
    return np.stack([batched_predict(pool, a) for a in acts_train]), batched_predict(pool, acts_val[0])


def run(cfg: TrainConfig) -> dict:
    """Split, cache, train both phases, export, evaluate. Returns the model card."""
    import keras

    from server.predictor import Predictor
    from training.model import build_model, split_model

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    log.info("config: %s", json.dumps(asdict(cfg)))

    prepared = prepare_data(cfg, out_dir)
    df, parts, y, images, sizes = prepared.df, prepared.parts, prepared.y, prepared.images, prepared.sizes
    timings["load_images"] = time.perf_counter() - t0

    with distribution_strategy().scope():
        model = build_model(len(CLASS_CODES), cfg.input_size, cfg.alpha, cfg.weights, cfg.dense_units,
                            cfg.dropout, cfg.seed)
    bottom, top = split_model(model, cfg.cut)

    t = time.perf_counter()
    acts_train, acts_val = cache_train_val(bottom, prepared, cfg)
    timings["cache"] = time.perf_counter() - t
    log.info("cached activations %s in %.0f s", acts_train.shape, timings["cache"])

    t = time.perf_counter()
    pooled_train, pooled_val = pooled_features(model, cfg, acts_train, acts_val)
    train_head(model, pooled_train, y["train"], pooled_val, y["val"], cfg, out_dir)
    timings["phase1_head"] = time.perf_counter() - t

    t = time.perf_counter()
    if cfg.epochs > 0:
        fine_tune(model, top, acts_train, y["train"], acts_val, y["val"], cfg, out_dir)
    timings["phase2_finetune"] = time.perf_counter() - t
    del acts_train

    # Export first, then evaluate the exported file through the service's Predictor.
    t = time.perf_counter()
    card = base_card(
        name=cfg.name, version=cfg.version, input_size=cfg.input_size,
        architecture=(f"MobileNetV2 (alpha {cfg.alpha:g}, {cfg.input_size} px) fine-tuned after {cfg.cut}; head GAP -> "
                      f"Dense({cfg.dense_units}, ReLU) -> Dropout({cfg.dropout:g}) -> Dense({len(CLASS_CODES)}, softmax)"),
        training={"config": asdict(cfg), "git_commit": git_commit(), "weights_source": weights_source(cfg.weights),
                  "hardware": hardware_summary()},
    )
    card["data"].update(split_by="lesion_id", split_sizes={k: int(v) for k, v in sizes.items()},
                        split_file="split.csv", class_counts=df["dx"].value_counts().to_dict())
    model_path, _ = export_model(model, out_dir, card)
    predictor = Predictor.from_path(model_path)
    probs = {s: predictor.predict_arrays_batched(scale_pixels(images[parts[s]])) for s in ("val", "test")}
    threshold = choose_malignant_threshold(y["val"], probs["val"])
    metrics = {s: evaluate_predictions(y[s], probs[s], malignant_threshold=threshold) for s in ("val", "test")}
    timings["export_evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    card = json.loads((out_dir / CARD_FILENAME).read_text())
    card["metrics"] = {s: {k: v for k, v in m.items() if k != "confusion_matrix"} | {"confusion_matrix": m["confusion_matrix"]}
                       for s, m in metrics.items()}
    card["thresholds"] = {"malignant": threshold, "malignant_target_sensitivity": 0.90}
    card["training"]["durations_s"] = {k: round(v, 1) for k, v in timings.items()}
    (out_dir / CARD_FILENAME).write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    np.savez_compressed(out_dir / "predictions.npz", **{f"{s}_probs": probs[s] for s in probs},
                        **{f"{s}_labels": y[s] for s in probs})
    plots = write_plots(y["test"], probs["test"], out_dir)
    if (out_dir / "history.csv").is_file() and (out_dir / "history.csv").stat().st_size:
        plot_history(out_dir / "history.csv", out_dir / "training_curves.png")
        plots.append("training_curves.png")
    write_report(out_dir, card, metrics, plots)
    from training.calibrate import calibrate_run  # issue #6: temperature, uncertain/TTA choice, non-skin statistics
    calibrate_run(out_dir, cfg.data_dir, seed=cfg.seed)
    log.info("test: balanced accuracy %.3f, accuracy %.3f, melanoma recall %.3f, malignant AUC %s",
             metrics["test"]["balanced_accuracy"], metrics["test"]["accuracy"],
             metrics["test"]["per_class"]["mel"]["recall"], metrics["test"].get("malignant", {}).get("auc"))
    log.info("done in %.1f min: %s", timings["total"] / 60, out_dir / MODEL_FILENAME)
    return card


def weights_source(weights: str) -> dict:
    if weights in (None, "none", ""):
        return {"kind": "random initialisation"}
    if weights == "imagenet":
        return {"kind": "imagenet", "origin": "keras.applications MobileNetV2 ImageNet weights"}
    path = Path(weights)
    return {"kind": "file", "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def hardware_summary() -> str:
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(gpus)} GPU(s), TensorFlow {tf.__version__}"


def write_report(out_dir: Path, card: dict, metrics: dict, plots: list[str]) -> None:
    """``report.md``: the run's figures, what it was trained on, and the plots."""
    cfg = card["training"]["config"]
    durations = card["training"]["durations_s"]
    text = [
        f"# {card['name']} {card['version']}: evaluation", "",
        "A screening aid, not a diagnosis. Figures are on a split grouped by `lesion_id`: no lesion's "
        "photographs appear in two splits. The test split was used once, after every choice was made on validation.", "",
        f"- Architecture: {card['architecture']}",
        f"- Data: {card['data']['source']['name']} ({card['licence']['name']}); split sizes {card['data']['split_sizes']}",
        f"- Imbalance: {cfg['imbalance']}, loss {cfg['loss']}, label smoothing {cfg['label_smoothing']}, "
        f"weight EMA momentum {cfg.get('ema_momentum', 0)}",
        f"- Seed {cfg['seed']}; hardware {card['training']['hardware']}; total {durations['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items() if k != 'total')})",
        f"- Malignant threshold {card['thresholds']['malignant']:.3f}, chosen on validation for sensitivity >= 0.90", "",
        metrics_markdown(metrics["test"], "Test split"),
        metrics_markdown(metrics["val"], "Validation split"),
        *[f"![{p}]({p})" for p in plots], "",
    ]
    ablation = out_dir / "ablation.md"
    if ablation.is_file():
        text += ["## Ablation (validation balanced accuracy)", "", ablation.read_text()]
    (out_dir / "report.md").write_text("\n".join(text) + "\n")


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = parse_args(argv)
    try:
        run(cfg)
    except (FileNotFoundError, D.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
