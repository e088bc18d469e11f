"""Train, evaluate and export the HAM10000 MobileNetV2 screening model in one command.

    python -m training.train --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --out-dir runs/latest

The recipe (keras-io's fine-tuning guide, sized for a 2-core CPU):

1. split by ``lesion_id`` (``split.csv``) and decode every image once into memory as uint8;
2. phase 1 warms up the head on pooled features of the frozen ImageNet network;
3. phase 2 fine-tunes the whole network, BatchNorm frozen, on views augmented afresh every
   epoch (``training.augment``), AdamW with warm-up and cosine decay; each epoch is
   checkpointed (``--resume`` continues a cut-off run); the last epoch's weights are kept
   (``--keep best``: the epoch with the best raw validation *balanced* accuracy);
4. post-hoc logit adjustment, its strength chosen on validation, is folded into the last
   layer's bias (``training.posthoc``);
5. export ``.h5`` + ``model_card.json``, then score the exported file through the
   service's own Predictor: validation for the operating points, the test split once.

Every choice is made on validation; the test split is only reported (``--no-test`` skips
it for ablation runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from server.imaging import scale_pixels
from server.lesions import CLASS_CODES
from training import data as D
from training.evaluate import choose_malignant_threshold, evaluate_predictions, metrics_markdown, plot_history, write_plots
from training.export import CARD_FILENAME, MODEL_FILENAME, base_card, export_model, git_commit

log = logging.getLogger("training")

IMBALANCE_CHOICES = ("class_weight", "sqrt", "sampling", "none")
LOSS_CHOICES = ("crossentropy", "focal")


@dataclass
class TrainConfig:
    data_dir: str
    out_dir: str = "runs/latest"
    weights: str = "imagenet"
    seed: int = 42
    input_size: int = 192  # 74 img/s training here, as fast as 160 and twice 224's rate
    store_size: int = 224  # training images are held at this size; random crops are resized to input_size
    alpha: float = 1.0
    dense_units: int = 256
    dropout: float = 0.3
    batch_size: int = 32
    head_epochs: int = 10
    head_lr: float = 1e-3
    epochs: int = 20  # about 130 s each here: the whole run stays inside 60 minutes
    warmup_epochs: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-4
    min_crop_area: float = 0.45
    down_up_prob: float = 0.4
    imbalance: str = "sqrt"
    loss: str = "crossentropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0
    logit_adjustment: bool = True
    keep: str = "last"  # the weights at the end of the schedule, or "best": the best raw validation epoch
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit_per_class: int = 0
    smoke: bool = False
    name: str = "ham10000-mobilenetv2"
    version: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y.%m.%d"))


SMOKE_OVERRIDES = dict(input_size=64, store_size=72, alpha=0.35, dense_units=32, head_epochs=2, epochs=1,
                       batch_size=16, limit_per_class=40)
KEEP_CHOICES = ("last", "best")
CHOICES = {"imbalance": IMBALANCE_CHOICES, "loss": LOSS_CHOICES, "keep": KEEP_CHOICES}
HELP = {
    "imbalance": "class_weight: balanced weights n/(k n_c); sqrt: their square root; sampling: every class drawn "
                 "equally often; none",
    "logit_adjustment": "subtract tau*log(prior) from the logits, tau chosen on validation (0 or 1)",
    "store_size": "side at which training images are held in memory (>= input size)",
    "min_crop_area": "smallest random crop, as a share of the stored image",
    "keep": "which fine-tuned weights to export: the last epoch's, or the best raw validation epoch's",
}


def build_parser() -> argparse.ArgumentParser:
    """Every ``TrainConfig`` field as an option; choices are checked before any data loads."""
    d = TrainConfig(data_dir="")
    p = argparse.ArgumentParser(description="Train the HAM10000 MobileNetV2 screening model.")
    p.add_argument("--data-dir", required=True, help="HAM10000 layout: HAM10000_metadata.csv (or images.csv) + images/")
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (Keras download), a path to a no-top MobileNetV2 .h5, or 'none'")
    p.add_argument("--smoke", action="store_true",
                   help="a quick end-to-end run: 64 px, 1-2 epochs, at most 40 images a class "
                        "(alpha 0.35 with --weights none, else the weights' alpha 1.0)")
    p.add_argument("--resume", action="store_true", help="continue a cut-off run in --out-dir from its last epoch")
    p.add_argument("--no-test", action="store_true",
                   help="ablation run: export and score validation only; never touch the test split")
    for f in fields(TrainConfig):
        if f.name in ("data_dir", "out_dir", "weights", "smoke"):
            continue
        default = getattr(d, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="0|1", help=HELP.get(f.name, f"default {int(default)}"))
            continue
        p.add_argument(flag, type=type(default), default=None, choices=CHOICES.get(f.name),
                       help=f"{HELP.get(f.name, '')} (default {default})".strip())
    return p


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
    p = build_parser()
    args = vars(p.parse_args(argv))
    flags = argparse.Namespace(resume=args.pop("resume"), no_test=args.pop("no_test"))
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
    cfg.store_size = max(cfg.store_size, cfg.input_size)
    if cfg.input_size < 32:
        p.error("--input-size must be at least 32")
    if not 0 < cfg.min_crop_area <= 1:
        p.error("--min-crop-area must be in (0, 1]")
    return cfg, flags


def setup_logging(out_dir: Path) -> None:
    """Progress to the console and to ``train.log`` in the run folder (appended on resume)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out_dir / "train.log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


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


def prepare_data(cfg: TrainConfig, out_dir: Path) -> Prepared:
    """Read metadata, split by lesion (written to ``split.csv``), decode every image once.

    Validation and test images go through exactly the service's preprocessing at the
    input size; training images are kept a little larger for random crops.
    """
    df = limit_per_class(D.load_metadata(Path(cfg.data_dir)), cfg.limit_per_class, cfg.seed)
    df["split"] = D.split_by_lesion(df, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    D.check_split(df, df["split"])
    df[["image_id", "lesion_id", "dx", "split"]].to_csv(out_dir / "split.csv", index=False)
    sizes = {k: int(v) for k, v in df.groupby("split").size().items()}
    log.info("split by lesion_id: %s images (%s lesions)", sizes, df.groupby("split")["lesion_id"].nunique().to_dict())
    parts = {s: df.index[df["split"] == s].to_numpy() for s in D.SPLITS}
    y = {s: df.loc[parts[s], "label"].to_numpy() for s in D.SPLITS}
    images = {s: D.load_images(list(df.loc[parts[s], "path"]), cfg.store_size if s == "train" else cfg.input_size)
              for s in D.SPLITS}
    return Prepared(df, parts, y, images, sizes)


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


def run(cfg: TrainConfig, resume: bool = False, score_test: bool = True) -> dict:
    """Split, load, warm up the head, fine-tune, adjust, export, evaluate. Returns the model card."""
    import keras

    from training.augment import AugmentConfig, training_dataset
    from training.losses import make_loss
    from training.model import build_model
    from training.phases import batched_predict, epochs_done, fine_tune, warm_up_head
    from training.posthoc import choose_tau, class_prior, fold_into_bias
    from training.strategy import choose_strategy, describe, finish_worker, worker_out_dir

    strategy = choose_strategy()  # first: MultiWorkerMirroredStrategy (TF_CONFIG) must precede any other TF call
    cfg = replace(cfg, out_dir=worker_out_dir(cfg.out_dir, strategy))  # only the chief writes the run folder
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir)
    log.info("strategy: %s", describe(strategy))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    log.info("config: %s%s", json.dumps(asdict(cfg)), " (resuming)" if resume else "")

    prepared = prepare_data(cfg, out_dir)
    y, images = prepared.y, prepared.images
    timings["load_images"] = time.perf_counter() - t0
    k = len(CLASS_CODES)
    weights = class_loss_weights(cfg.imbalance, y["train"])
    loss = make_loss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma)
    log.info("class loss weights (%s): %s", cfg.imbalance, dict(zip(CLASS_CODES, np.round(weights, 3).tolist())))

    with strategy.scope():
        model = build_model(k, cfg.input_size, cfg.alpha, cfg.weights, cfg.dense_units, cfg.dropout, cfg.seed)

    t = time.perf_counter()
    if not (resume and (out_dir / "head.weights.h5").is_file()):
        pooled_train = pooled_features(model, resized(images["train"], cfg.input_size))
        pooled_val = pooled_features(model, images["val"])
    else:
        pooled_train = pooled_val = None
    head_weights = weights if cfg.imbalance != "sampling" else class_loss_weights("class_weight", y["train"])
    warm_up_head(model, pooled_train, y["train"], head_weights, pooled_val, y["val"], epochs=cfg.head_epochs,
                 lr=cfg.head_lr, loss=loss, num_classes=k, out_dir=out_dir, resume=resume)
    del pooled_train, pooled_val
    timings["phase1_head"] = time.perf_counter() - t

    t = time.perf_counter()
    resumed_after = epochs_done(out_dir) if resume else 0
    prior = class_prior(y["train"], k)
    aug = AugmentConfig(min_crop_area=cfg.min_crop_area, down_up_prob=cfg.down_up_prob)
    x_val = scale_pixels(images["val"])
    if cfg.epochs > 0:
        fine_tune(
            model,
            lambda first_draw: training_dataset(images["train"], y["train"], weights, size=cfg.input_size,
                                                batch_size=cfg.batch_size, seed=cfg.seed, num_classes=k, aug=aug,
                                                balanced_sampling=cfg.imbalance == "sampling", first_draw=first_draw),
            len(y["train"]), x_val, y["val"], batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
            warmup_epochs=cfg.warmup_epochs, weight_decay=cfg.weight_decay, ema_momentum=cfg.ema_momentum,
            loss=loss, out_dir=out_dir, resume=resume, keep=cfg.keep,
            prior=prior if cfg.logit_adjustment else None)
    timings["phase2_finetune"] = time.perf_counter() - t
    del images["train"]

    tau, tau_scores = 0.0, {}
    if cfg.logit_adjustment:
        tau, tau_scores = choose_tau(batched_predict(model, x_val), y["val"], prior)
        fold_into_bias(model, prior, tau)
        log.info("logit adjustment: tau %.2f (validation balanced accuracy by tau: %s)", tau, tau_scores)
    adjustment = {"tau": tau, "prior": dict(zip(CLASS_CODES, np.round(prior, 5).tolist())),
                  "val_balanced_accuracy_by_tau": {str(t): round(s, 4) for t, s in tau_scores.items()}}
    card = export_and_evaluate(model, cfg, prepared, adjustment, timings, t0, score_test, resumed_after)
    finish_worker(cfg.out_dir, strategy, model)
    return card


def export_and_evaluate(model, cfg: TrainConfig, prepared: Prepared, adjustment: dict, timings: dict, t0: float,
                        score_test: bool, resumed_after: int = 0) -> dict:
    """Export the model and card, then score the exported file through the service's Predictor."""
    from server.predictor import Predictor

    out_dir = Path(cfg.out_dir)
    df, y, images, sizes = prepared.df, prepared.y, prepared.images, prepared.sizes
    splits = ("val", "test") if score_test else ("val",)
    t = time.perf_counter()
    card = base_card(
        name=cfg.name, version=cfg.version, input_size=cfg.input_size,
        architecture=(f"MobileNetV2 (alpha {cfg.alpha:g}, {cfg.input_size} px), whole network fine-tuned (BatchNorm frozen); head GAP -> "
                      f"Dense({cfg.dense_units}, ReLU) -> Dropout({cfg.dropout:g}) -> Dense({len(CLASS_CODES)}, softmax)"),
        training={"config": asdict(cfg), "git_commit": git_commit(), "weights_source": weights_source(cfg.weights),
                  "hardware": hardware_summary(), "logit_adjustment": adjustment,
                  "resumed_after_epoch": resumed_after},
    )
    card["data"].update(split_by="lesion_id", split_sizes={k: int(v) for k, v in sizes.items()},
                        split_file="split.csv", class_counts=df["dx"].value_counts().to_dict())
    model_path, _ = export_model(model, out_dir, card)
    predictor = Predictor.from_path(model_path)
    probs = {s: predictor.predict_arrays_batched(scale_pixels(images[s])) for s in splits}
    threshold = choose_malignant_threshold(y["val"], probs["val"])
    metrics = {s: evaluate_predictions(y[s], probs[s], malignant_threshold=threshold) for s in splits}
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
    if not score_test:
        log.info("validation: balanced accuracy %.4f (test split not scored)", metrics["val"]["balanced_accuracy"])
        return card
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
        f"- Recipe: {cfg['input_size']} px, head warm-up {cfg['head_epochs']} epochs, then {cfg['epochs']} whole-network "
        f"epochs on fresh augmentations, AdamW peak learning rate {cfg['lr']:g} (warm-up {cfg['warmup_epochs']:g} epoch, "
        f"cosine decay), {cfg.get('keep', 'best')} epoch kept; post-hoc logit adjustment tau "
        f"{card['training']['logit_adjustment']['tau']:g} (chosen on validation)",
        f"- Seed {cfg['seed']}; hardware {card['training']['hardware']}; total {durations['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items() if k != 'total')})"
        + (f"; resumed after epoch {resumed}, so these times cover only the resumed invocation (train.log has the "
           "whole run)" if (resumed := card["training"].get("resumed_after_epoch")) else ""),
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
    cfg, flags = parse_args(argv)
    try:
        run(cfg, resume=flags.resume, score_test=not flags.no_test)
    except (FileNotFoundError, D.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
