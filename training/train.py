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
5. phase 3 (``--patient-context 1``): the patient's age, sex and site join the head when
   validation says they help (``training.patient_context``);
6. export ``.h5`` + ``model_card.json``, then score the exported file through the
   service's own Predictor: validation for the operating points (chosen on the probabilities
   the service serves), the test split once, per subgroup too (``training.subgroups``).

Every choice is made on validation; the test split is only reported (``--no-test`` skips
it for ablation runs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from server.imaging import scale_pixels
from server.lesions import CLASS_CODES
from server.model.card import CARD_FILENAME, ModelCard
from server.model.files import file_sha256
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY
from training.cli import user_errors_in_one_line
from training.clock import RunClock, clock_callback
from training.config import TrainConfig, parse_args, settle_recipe
from training.differential import card_with_differential
from training.evaluate import choose_malignant_threshold, evaluate_predictions, plot_history, write_plots
from training.export import MODEL_FILENAME, base_card, git_commit, imagenet_label_names, save_model, with_imagenet_branch
from training.preflight import check_run_inputs
from training.prepare import Prepared, class_loss_weights, pooled_features, prepare_data, resized
from training.report import existing_plots, write_report

log = logging.getLogger("training")


def setup_logging(out_dir: Path) -> None:
    """Progress to the console and to ``train.log`` in the run folder (appended on resume)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out_dir / "train.log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def run(cfg: TrainConfig, resume: bool = False, score_test: bool = True) -> dict:
    """Split, load, warm up the head, fine-tune, adjust, export, evaluate. Returns the model card."""
    import keras

    from training.augment import AugmentConfig, training_dataset
    from training.distill import student_recipe
    from training.losses import make_loss
    from training.model import build_model
    from training.patient_context import phase3
    from training.phases import batched_predict, epochs_done, fine_tune, refuse_to_restart, warm_up_head
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
    refuse_to_restart(out_dir, resume)
    settle_recipe(cfg, out_dir, resume)
    clock = RunClock(out_dir)  # the run's minutes, summed over every process that trained it
    check_run_inputs(cfg)  # downloads and files first: a run that cannot get one stops now, not at export

    prepared = prepare_data(cfg, out_dir)
    y, images = prepared.y, prepared.images
    timings["load_images"] = time.perf_counter() - t0
    k = len(CLASS_CODES)
    weights = class_loss_weights(cfg.imbalance, y["train"])
    loss = make_loss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma)
    student = student_recipe(cfg, prepared.df.loc[prepared.parts["train"], "image_id"]) if cfg.distill_teacher else {}
    log.info("class loss weights (%s): %s", cfg.imbalance, dict(zip(CLASS_CODES, np.round(weights, 3).tolist())))

    with strategy.scope():
        model = build_model(k, cfg.input_size, cfg.alpha, cfg.weights, cfg.dense_units, cfg.dropout, cfg.seed,
                            blocks=cfg.backbone_blocks)

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
    aug = AugmentConfig(min_crop_area=cfg.min_crop_area, down_up_prob=cfg.down_up_prob, colour_cast=cfg.colour_cast,
                        vignette_prob=cfg.vignette_prob)
    x_val = scale_pixels(images["val"])
    phase2 = {}
    if cfg.epochs > 0:
        phase2 = fine_tune(
            model,
            lambda first_draw: training_dataset(images["train"], y["train"], weights, size=cfg.input_size,
                                                batch_size=cfg.batch_size, seed=cfg.seed, num_classes=k, aug=aug,
                                                balanced_sampling=cfg.imbalance == "sampling", first_draw=first_draw,
                                                soft_targets=student.get("soft_targets")),
            len(y["train"]), x_val, y["val"], batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
            warmup_epochs=cfg.warmup_epochs, weight_decay=cfg.weight_decay, ema_momentum=cfg.ema_momentum,
            loss=student.get("loss", loss), metrics=student.get("metrics", ("accuracy",)), out_dir=out_dir,
            resume=resume, keep=cfg.keep, prior=prior if cfg.logit_adjustment else None, swa_epochs=cfg.swa_epochs,
            swa_lr=cfg.swa_lr, extra_callbacks=[clock_callback(clock)])
    timings["phase2_finetune"] = time.perf_counter() - t
    del images["train"]

    tau, tau_scores = 0.0, {}
    if cfg.logit_adjustment:
        tau, tau_scores = choose_tau(batched_predict(model, x_val), y["val"], prior)
        fold_into_bias(model, prior, tau)
        log.info("logit adjustment: tau %.2f (validation balanced accuracy by tau: %s)", tau, tau_scores)
    adjustment = {"tau": tau, "prior": dict(zip(CLASS_CODES, np.round(prior, 5).tolist())),
                  "val_balanced_accuracy_by_tau": {str(t): round(s, 4) for t, s in tau_scores.items()}}
    context_record = None
    if cfg.patient_context:
        model, context_record = phase3(model, batched_predict(model, x_val), prepared, seed=cfg.seed,
                                       sites=cfg.context_sites)
    card = export_and_evaluate(model, cfg, prepared, adjustment, timings, clock.origin(), score_test, resumed_after,
                               context_record, kept_weights=phase2)
    clock.save()  # also when a resumed run had no epoch left to train, and so saved no epoch's end
    finish_worker(cfg.out_dir, strategy, model)
    return card


def export_and_evaluate(model, cfg: TrainConfig, prepared: Prepared, adjustment: dict, timings: dict, t0: float,
                        score_test: bool, resumed_after: int = 0, context_record: dict | None = None,
                        kept_weights: dict | None = None) -> ModelCard:
    """Export the ``.h5``, score it through the service's Predictor, calibrate, then write the card once.

    The card's metrics are of images alone (most uploads carry no patient context); a model
    that reads the context is also scored with each image's own, in ``patient_context``.
    """
    from server.model.predictor import Predictor
    from server.model.card import PatientContextSpec, thawed
    from server.model.trust import temperature_scale
    from training.calibrate import calibrate
    from training.patient_context import patient_vectors
    from training.subgroups import card_with_subgroups, metadata_rows

    out_dir = Path(cfg.out_dir)
    df, y, images, sizes = prepared.df, prepared.y, prepared.images, prepared.sizes
    splits = ("val", "test") if score_test else ("val",)
    t = time.perf_counter()
    exported = with_imagenet_branch(model, cfg.imagenet_weights) if cfg.imagenet_weights else model
    model_path, sha = save_model(exported, out_dir)
    card = ModelCard.from_dict(base_card(
        name=cfg.name, version=cfg.version, input_size=cfg.input_size,
        architecture=architecture(cfg, reads_context=len(model.inputs) > 1), colour=cfg.colour,
        licence=prepared.provenance.licence,
        data={"source": prepared.provenance.source, "split_by": "lesion_id", "split_sizes": {k: int(v) for k, v in sizes.items()},
              "split_file": "split.csv", "class_counts": df["dx"].value_counts().to_dict()},
        model_file=model_path.name, sha256=sha,
    ))
    predictor = Predictor.load(model_path, card, sha, out_dir, tta="off", ood=False, imagenet=True)
    probs = {s: predictor.predict_arrays_batched(scale_pixels(images[s])) for s in splits}
    context = {s: patient_vectors(df.loc[prepared.parts[s]]) for s in splits}
    with_context = {s: predictor.predict_arrays_batched(scale_pixels(images[s]), patient=context[s]) for s in splits} \
        if predictor.reads_patient else {}
    # On raw probabilities until ``calibrate`` chooses it again on the served ones (TTA, temperature).
    threshold = choose_malignant_threshold(y["val"], probs["val"])
    metrics = {s: evaluate_predictions(y[s], probs[s], malignant_threshold=threshold) for s in splits}
    timings["export_evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    training = {"config": asdict(cfg), "git_commit": git_commit(), "weights_source": weights_source(cfg.weights),
                "hardware": hardware_summary(), "logit_adjustment": adjustment, "resumed_after_epoch": resumed_after,
                "kept_weights": kept_weights or {},
                "durations_s": {k: round(v, 1) for k, v in timings.items()}}
    card = ModelCard.from_dict({
        **card.to_dict(), "training": training,
        "metrics": {s: {k: v for k, v in m.items() if k != "confusion_matrix"} | {"confusion_matrix": m["confusion_matrix"]}
                    for s, m in metrics.items()},
        "thresholds": {"malignant": threshold, "malignant_target_sensitivity": MALIGNANT_TARGET_SENSITIVITY},
    })
    np.savez_compressed(out_dir / "predictions.npz", **{f"{s}_probs": probs[s] for s in probs},
                        **{f"{s}_labels": y[s] for s in probs})
    if not score_test:
        card.write(out_dir / CARD_FILENAME)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("validation: balanced accuracy %.4f (test split not scored)", metrics["val"]["balanced_accuracy"])
        return card
    write_plots(y["test"], probs["test"], out_dir)
    if (out_dir / "history.csv").is_file() and (out_dir / "history.csv").stat().st_size:
        plot_history(out_dir / "history.csv", out_dir / "training_curves.png")
    # Issue #6: temperature, uncertain/TTA choice, non-skin statistics, folded into the card before it is written.
    labels = imagenet_label_names(cfg.imagenet_labels or "imagenet") if cfg.imagenet_weights else None
    card, trust, served = calibrate(predictor, card, out_dir, cfg.data_dir, seed=cfg.seed, imagenet_labels=labels)
    metrics = {s: m | {"malignant": thawed(card.metrics[s]["malignant"])} for s, m in metrics.items()}
    temperature = card.temperature_for(card.tta_default) or 0.0
    served_context = {s: temperature_scale(p, temperature) if temperature else p for s, p in with_context.items()}
    np.savez_compressed(out_dir / "predictions.npz", **{f"{s}_probs": probs[s] for s in probs},
                        **{f"{s}_labels": y[s] for s in probs}, **{f"{s}_probs_served": p for s, p in served.items()},
                        **{f"{s}_probs_with_context_served": p for s, p in served_context.items()})
    card = card_with_differential(card, out_dir / "predictions.npz", predictor.reads_patient)
    if context_record is not None:
        card = card.replace(patient_context=PatientContextSpec.from_dict(context_section(
            context_record, y, served, served_context, card.thresholds.malignant)))
    card = card_with_subgroups(card, metadata_rows(df.loc[prepared.parts["test"]]), y["test"], served["test"],
                               inputs="image only", probabilities=card.test_metrics["malignant"]["probabilities"])
    card.write(out_dir / CARD_FILENAME)
    (out_dir / "metrics.json").write_text(json.dumps({**metrics, "trust": trust}, indent=2) + "\n")
    write_report(out_dir, card, metrics, existing_plots(out_dir), trust)
    log.info("test: balanced accuracy %.3f, accuracy %.3f, melanoma recall %.3f, malignant AUC %s",
             metrics["test"]["balanced_accuracy"], metrics["test"]["accuracy"],
             metrics["test"]["per_class"]["mel"]["recall"], metrics["test"].get("malignant", {}).get("auc"))
    log.info("done in %.1f min: %s", timings["total"] / 60, out_dir / MODEL_FILENAME)
    return card


def context_section(record: dict, labels: dict, served: dict, served_context: dict, threshold: float) -> dict:
    """The card's ``patient_context``: phase 3's record, and the served figures with and without the context."""
    def figures(p, y):
        m = evaluate_predictions(y, p, malignant_threshold=threshold)
        return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
                "melanoma_recall": m["per_class"]["mel"]["recall"], "malignant": m.get("malignant")}

    return {**record, "reads": ["age", "sex", "site"] if served_context else [],
            "served": {s: {"without_context": figures(served[s], labels[s]),
                           **({"with_context": figures(served_context[s], labels[s])} if s in served_context else {})}
                       for s in served}}


def architecture(cfg: TrainConfig, reads_context: bool) -> str:
    """The card's one-line description of the network."""
    joins = " + patient context (age, sex, site)" if reads_context else ""
    from training.model import MOBILENETV2_BLOCKS

    blocks = cfg.backbone_blocks
    cut = f", its first {blocks} of {MOBILENETV2_BLOCKS} blocks" if 0 < blocks < MOBILENETV2_BLOCKS else ""
    return (f"MobileNetV2 (alpha {cfg.alpha:g}, {cfg.input_size} px{cut}), whole network fine-tuned (BatchNorm frozen); "
            f"head GAP -> Dense({cfg.dense_units}, ReLU) -> Dropout({cfg.dropout:g}){joins} -> "
            f"Dense({len(CLASS_CODES)}, softmax)")


def weights_source(weights: str) -> dict:
    if weights in (None, "none", ""):
        return {"kind": "random initialisation"}
    if weights == "imagenet":
        return {"kind": "imagenet", "origin": "keras.applications MobileNetV2 ImageNet weights"}
    path = Path(weights)
    return {"kind": "file", "file": path.name, "sha256": file_sha256(path)}


def hardware_summary() -> str:
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(gpus)} GPU(s), TensorFlow {tf.__version__}"


@user_errors_in_one_line
def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg, flags = parse_args(argv)
    run(cfg, resume=flags.resume, score_test=not flags.no_test)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
