"""Five lesion-grouped folds over the training split: the instrument for model choices, and the teacher.

    python -m training.folds --data-dir ../shared/data/ham10000 \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 --out-dir ../runs/chain

One validation split of about 1,400 images holds some 17 dermatofibromas and 21 vascular
lesions, so two recipes' single runs differ by noise of about 0.04. Each fold model here
trains the shipped recipe, weight-averaged, on four fifths of the training split; the fifth
it never saw gives out-of-fold predictions, so every training image is predicted once by a
model that did not train on it: about 7,000 paired predictions for any later choice.

Each fold model also predicts every training, validation and test image (as logits, plain
and mirrored), so the five can be averaged into soft targets for a student
(``training.teacher``) and into a reference ensemble. Validation and test stay out of the
folds: they are left for calibration and for the final check.

Each fold runs in its own folder (``fold_<k>``) and resumes where it was cut off; a fold
whose ``outputs.npz`` exists is done. ``folds.csv`` records the assignment, ``cpu.txt``
the CPU the run used (its kind, then its name), ``train.log`` the progress with an ETA.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from server.imaging import scale_pixels
from server.lesions import CLASS_CODES
from training import data as D
from training.cli import user_errors_in_one_line
from training.clock import RunClock, clock_callback, cpu_kind, cpu_name, cpu_summary
from training.config import TrainConfig, parse_args, settle_recipe
from training.preflight import check_run_inputs

log = logging.getLogger("training")

N_FOLDS = 5
OUTPUTS = "outputs.npz"
FIGURES = "figures.json"
FOLDS_CSV = "folds.csv"
# The recipe each fold trains, unless the command line says otherwise: the shipped one with its
# last six epochs held at a low rate and averaged (the issue-#23 trial that raised malignant AUC).
FOLD_RECIPE = dict(epochs=26, keep="swa", swa_epochs=6, swa_lr=2e-5, patient_context=False)


def assign_folds(labels: np.ndarray, lesion_ids: np.ndarray, n_folds: int = N_FOLDS, seed: int = 42) -> np.ndarray:
    """Fold index (0..n_folds-1) per image: whole lesions per fold, class shares close to the split's."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold_of = np.full(len(labels), -1, np.int16)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups=lesion_ids)):
        fold_of[held] = k
    return fold_of


def logits_of(model, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pre-softmax outputs for uint8 images, plain and mirrored left to right.

    Logits rather than probabilities: a teacher at a temperature, and logit adjustment,
    both need them, and a softmax rounds confident rows to exact zeros.
    """
    import keras

    from training.phases import batched_predict

    hidden = keras.Model(model.input, model.get_layer("head_dropout").output)
    kernel, bias = model.get_layer("head_out").get_weights()
    plain = batched_predict(hidden, images, batch_size, scale=True) @ kernel + bias
    mirrored = batched_predict(hidden, np.ascontiguousarray(images[:, :, ::-1]), batch_size, scale=True) @ kernel + bias
    return plain.astype(np.float32), mirrored.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def held_out_figures(labels: np.ndarray, logits: np.ndarray) -> dict:
    """The figures one fold's unseen images give, before any calibration or logit adjustment."""
    from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

    from training.evaluate import is_malignant, malignant_scores

    probs = softmax(logits)
    pred = probs.argmax(1)
    mel = CLASS_CODES.index("mel")
    return {"n": int(len(labels)),
            "balanced_accuracy": round(float(balanced_accuracy_score(labels, pred)), 4),
            "melanoma_recall": round(float(recall_score(labels == mel, pred == mel)), 4),
            "malignant_auc": round(float(roc_auc_score(is_malignant(labels), malignant_scores(probs))), 4)}


def train_fold(cfg: TrainConfig, images: dict, y: dict, fold_of: np.ndarray, k: int, chain_dir: Path) -> dict:
    """Train fold ``k``'s model (resuming a cut-off one), write its logits and figures; returns the figures."""
    import keras

    from training.augment import AugmentConfig, training_dataset
    from training.losses import make_loss
    from training.model import build_model
    from training.phases import HEAD_WEIGHTS, epochs_done, fine_tune, warm_up_head
    from training.prepare import class_loss_weights, pooled_features, resized

    fold_dir = chain_dir / f"fold_{k}"
    if (fold_dir / OUTPUTS).is_file() and (fold_dir / FIGURES).is_file():
        return json.loads((fold_dir / FIGURES).read_text())
    fold_dir.mkdir(parents=True, exist_ok=True)
    resume = (fold_dir / HEAD_WEIGHTS).is_file()
    resumed_after = epochs_done(fold_dir) if resume else 0
    log.info("fold %d of %d: %s", k + 1, int(fold_of.max()) + 1, "resuming" if resume else "starting")
    clock = RunClock(fold_dir)
    keras.utils.set_random_seed(cfg.seed + k)
    held = fold_of == k
    x_fit, y_fit = images["train"][~held], y["train"][~held]
    x_held, y_held = images["train_eval"][held], y["train"][held]
    weights = class_loss_weights(cfg.imbalance, y_fit)
    loss = make_loss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma)
    model = build_model(len(CLASS_CODES), cfg.input_size, cfg.alpha, cfg.weights, cfg.dense_units, cfg.dropout,
                        cfg.seed + k, blocks=cfg.backbone_blocks)
    pooled = None if resume else (pooled_features(model, resized(x_fit, cfg.input_size)), pooled_features(model, x_held))
    warm_up_head(model, pooled and pooled[0], y_fit, weights, pooled and pooled[1], y_held, epochs=cfg.head_epochs,
                 lr=cfg.head_lr, loss=loss, num_classes=len(CLASS_CODES), out_dir=fold_dir, resume=resume)
    del pooled
    aug = AugmentConfig(min_crop_area=cfg.min_crop_area, down_up_prob=cfg.down_up_prob, colour_cast=cfg.colour_cast,
                        vignette_prob=cfg.vignette_prob)
    kept = fine_tune(
        model,
        lambda first_draw: training_dataset(x_fit, y_fit, weights, size=cfg.input_size, batch_size=cfg.batch_size,
                                            seed=cfg.seed + k, num_classes=len(CLASS_CODES), aug=aug,
                                            first_draw=first_draw),
        len(y_fit), scale_pixels(x_held), y_held, batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
        warmup_epochs=cfg.warmup_epochs, weight_decay=cfg.weight_decay, ema_momentum=cfg.ema_momentum, loss=loss,
        out_dir=fold_dir, resume=resume, keep=cfg.keep, swa_epochs=cfg.swa_epochs, swa_lr=cfg.swa_lr,
        extra_callbacks=[clock_callback(clock)])
    model.save_weights(fold_dir / "kept.weights.h5")
    outputs = {}
    for split, x in (("train", images["train_eval"]), ("val", images["val"]), ("test", images["test"])):
        outputs[split], outputs[f"{split}_mirrored"] = logits_of(model, x)
    clock.save()
    figures = {"fold": k, **held_out_figures(y_held, outputs["train"][held]),
               "held_out_mirrored": held_out_figures(y_held, (outputs["train"][held] + outputs["train_mirrored"][held]) / 2),
               "kept": kept, "minutes": clock.minutes(), "processes": clock.processes, "cpu": cpu_kind(),
               "cpu_name": cpu_name(), "resumed_after_epoch": resumed_after}
    # float16 keeps each fold's file at a few hundred KB, small enough to commit as soon as it exists.
    np.savez_compressed(fold_dir / OUTPUTS, **{name: v.astype(np.float16) for name, v in outputs.items()})
    (fold_dir / FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    log.info("fold %d done in %.0f min%s: held-out %s", k + 1, figures["minutes"],
             f" (resumed after epoch {resumed_after})" if resumed_after else "",
             {key: figures[key] for key in ("balanced_accuracy", "melanoma_recall", "malignant_auc")})
    return figures


def load_chain_data(cfg: TrainConfig, chain_dir: Path, n_folds: int) -> tuple[object, dict, dict, np.ndarray]:
    """The shipped split, the training split's fold assignment, and every image in memory.

    Training images are held at ``store_size`` for random crops, and once more at the input
    size through the service's preprocessing (``train_eval``) for the logits.
    """
    from training.prepare import prepare_data

    prepared = prepare_data(cfg, chain_dir)
    train = prepared.df.loc[prepared.parts["train"]]
    fold_of = assign_folds(prepared.y["train"], train["lesion_id"].to_numpy(), n_folds, cfg.seed)
    train.assign(fold=fold_of)[["image_id", "lesion_id", "dx", "fold"]].to_csv(chain_dir / FOLDS_CSV, index=False)
    images = dict(prepared.images)
    images["train_eval"] = D.load_images(list(train["path"]), cfg.input_size, colour=cfg.colour)
    return prepared, images, prepared.y, fold_of


def summary(figures: list[dict]) -> dict:
    """Per-fold figures with their mean and sample standard deviation."""
    keys = ("balanced_accuracy", "melanoma_recall", "malignant_auc")
    out = {"folds": figures}
    for key in keys:
        values = np.array([f[key] for f in figures], float)
        out[key] = {"mean": round(float(values.mean()), 4),
                    "sd": round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0}
    return out


def copy_fold_files(source: Path, target: Path) -> None:
    """A finished fold's outputs and figures, the two files that are committed and reused."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in (OUTPUTS, FIGURES):
        shutil.copy2(source / name, target / name)


def publish_fold(chain_dir: Path, publish_dir: Path, k: int) -> None:
    """Copy fold ``k``'s logits and figures (a few hundred KB) where they can be committed."""
    import shutil

    copy_fold_files(chain_dir / f"fold_{k}", publish_dir / f"fold_{k}")
    for name in (FOLDS_CSV, "cpu.txt"):
        shutil.copy2(chain_dir / name, publish_dir / name)


def reuse_published(chain_dir: Path, published: Path, n_folds: int) -> list[int]:
    """Copy the finished folds committed in ``published`` into a chain folder that lacks them.

    On another machine, or after the run folder was lost, the committed folds need not train
    again; only when their fold assignment is this run's own (``folds.csv`` identical)."""
    if not (published / FOLDS_CSV).is_file() or (published / FOLDS_CSV).read_text() != (chain_dir / FOLDS_CSV).read_text():
        return []
    reused = []
    for k in range(n_folds):
        source, target = published / f"fold_{k}", chain_dir / f"fold_{k}"
        if (source / OUTPUTS).is_file() and (source / FIGURES).is_file() and not (target / OUTPUTS).is_file():
            copy_fold_files(source, target)
            reused.append(k)
    return reused


def run_folds(cfg: TrainConfig, chain_dir: Path, n_folds: int = N_FOLDS, only: list[int] | None = None,
              publish=None, published: Path | None = None) -> dict:
    """Every fold in turn (or those in ``only``), resumable; writes ``folds.json`` once all are done.

    ``publish(k)``, when given, is called for every finished fold (copying its outputs where
    they get committed); ``published``, where they were committed: folds found there are reused."""
    from training.train import setup_logging

    chain_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(chain_dir)
    (chain_dir / "cpu.txt").write_text(f"{cpu_kind()}\n{cpu_name()}\n")  # the kind, then the machine
    log.info("folds on a %s CPU, recipe %s", cpu_summary(), {k: getattr(cfg, k) for k in FOLD_RECIPE})
    settle_recipe(cfg, chain_dir, resume=True)  # every fold folder resumes: one recipe for all of them
    check_run_inputs(cfg)
    prepared, images, y, fold_of = load_chain_data(cfg, chain_dir, n_folds)
    n = int(fold_of.max()) + 1
    if published is not None and (reused := reuse_published(chain_dir, published, n)):
        log.info("folds %s reused from %s (the same fold assignment)", [k + 1 for k in reused], published)
    figures, spent = [], []
    for k in only if only is not None else range(n):
        was_done = (chain_dir / f"fold_{k}" / OUTPUTS).is_file()
        figures.append(train_fold(cfg, images, y, fold_of, k, chain_dir))
        if publish is not None:
            publish(k)
        if not was_done:
            spent.append(figures[-1]["minutes"])  # the whole fold's, a resumed one's too
            left = sum(1 for j in range(n) if not (chain_dir / f"fold_{j}" / OUTPUTS).is_file())
            log.info("progress: %d of %d folds done, about %.0f min left", n - left, n, np.mean(spent) * left)
    result = summary(figures)
    if len(figures) == n:
        (chain_dir / "folds.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def given_settings(argv: list[str]) -> set[str]:
    """The ``TrainConfig`` fields a command line sets itself."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def with_recipe(cfg: TrainConfig, argv: list[str], recipe: dict = FOLD_RECIPE) -> TrainConfig:
    """``recipe`` for every setting the command line leaves out (a smoke run keeps its own)."""
    if cfg.smoke:
        return cfg
    given = given_settings(argv)
    return replace(cfg, **{k: v for k, v in recipe.items() if k not in given})


@user_errors_in_one_line
def main(argv=None) -> int:
    import argparse

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    chain = argparse.ArgumentParser(add_help=False)
    chain.add_argument("--folds", type=int, default=N_FOLDS, help="how many lesion-grouped folds (default 5)")
    chain.add_argument("--fold", type=int, action="append", help="train only this fold (repeatable)")
    chain.add_argument("--publish-dir", type=Path, default=None,
                       help="copy each finished fold's logits here for committing, and reuse the folds found here")
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, flags = parse_args(argv, parents=[chain], description="Train the recipe on lesion-grouped folds of the training split.")
    if flags.folds < 2:
        print("error: --folds must be at least 2", file=sys.stderr)
        return 2
    cfg = with_recipe(cfg, argv)
    out = Path(cfg.out_dir)
    publish = (lambda k: publish_fold(out, flags.publish_dir, k)) if flags.publish_dir else None
    result = run_folds(cfg, out, flags.folds, flags.fold, publish=publish, published=flags.publish_dir)
    print(json.dumps({k: v for k, v in result.items() if k != "folds"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
