"""Make a trained model's outputs trustworthy (issue #6), for an existing run directory.

    python -m training.calibrate --run-dir runs/latest --data-dir ../shared/data/ham10000

Runs the model once over the split images (train: a sample, for the feature statistics;
validation and test: all 8 flips/rotations) through the service's own Predictor, and
folds into the card value (the card's sha256 is of the .h5, which does not change):

- ``tta``: validation balanced accuracy with no / flip / full test-time augmentation, its
  measured cost, and the default the service uses. Rule: the cheapest mode whose gain over
  no TTA is at least ``--tta-min-gain`` (0.01 = one point of balanced accuracy) for every
  doubling of its cost, within
  0.005 of the best mode, and whose one-image forward pass stays under 150 ms; "off" when
  no mode qualifies.
- ``calibration``: a temperature per TTA mode, fitted on validation by minimising the NLL
  of softmax(log p / T) (the model outputs probabilities; log p are its logits up to a
  constant), with ECE (15 equal-width bins) and NLL on the test split before and after.
- ``thresholds.uncertain``: the lowest threshold t on the calibrated top probability such
  that the answers at or above t are right at least ``--uncertain-target`` (0.90) of the
  time on validation; below it the service calls the answer uncertain.
- ``ood``: the non-skin check. Mean and Ledoit-Wolf shrinkage precision of the pooled
  GAP features of training images (optionally in a PCA subspace), stored in
  ``ood_stats.npz`` beside the card (sha256 in the card); the threshold is the
  ``--ood-percentile`` (99.5th) percentile of the validation distances. A second, small
  Mahalanobis test on 12 picture statistics (colour, spread, edges, white/black shares,
  texture) with the same rule catches near-empty pictures (flat colours, gradients, text)
  that deep features can place near the lesions. It measures the
  false-flag rate on the test split and the true-flag rate on non-skin images made here
  (flat colours, gradients, noise, text screenshots, charts, logos, photos that ship with
  matplotlib and scikit-learn).

The trainer calls ``calibrate`` before it writes the card, ``metrics.json`` and
``report.md``, once each. This CLI does the same for an existing run (or
``saved_models/``): it reads the run's card, writes the new card, puts the figures in
``metrics.json`` (key ``trust``) and writes ``report.md`` again from the card and metrics.
The test split is used only to report; every choice is made on validation. The fitting
lives in ``training/calibration.py`` and ``training/nonskin.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from server.model.card import ModelCard, thawed
from server.model.trust import TTA_MODES, temperature_scale, tta_average, tta_count
from server.thresholds import UNCERTAIN_TARGET_ACCURACY
from training.calibration import (
    ECE_BINS,
    TTA_MAX_FORWARD_MS,
    TTA_MIN_GAIN,
    choose_tta,
    choose_uncertain_threshold,
    ece,
    fit_temperature,
    nll,
    selective_figures,
    tta_latency_ms,
)
from training.cli import user_errors_in_one_line
from training.evaluate import choose_malignant_threshold, evaluate_predictions
from training.differential import card_with_differential
from training.nonskin import fit_nonskin
from training.split_views import load_split_images, run_views

log = logging.getLogger("training.calibrate")


def calibrate(predictor, card: ModelCard, run_dir, data_dir, uncertain_target: float = UNCERTAIN_TARGET_ACCURACY,
              ood_dims: int = 0, tta_min_gain: float = TTA_MIN_GAIN, train_max: int = 4000, seed: int = 42,
              imagenet_labels: list[str] | None = None) -> tuple[ModelCard, dict]:
    """(the card with tta, calibration, the uncertain and malignant thresholds and the non-skin
    check folded in, the figures, the served validation and test probabilities).

    ``predictor`` serves the run's model raw (TTA off, no non-skin check; the ImageNet
    branch's outputs when the model carries one). ``imagenet_labels``: its class names,
    stored with the statistics so a refusal can say what the image looked like. Writes only
    ``ood_stats.npz`` (which the returned card pins by sha256); the caller writes the card.
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    t0 = time.perf_counter()
    if predictor.feature_layer is None:
        raise SystemExit("this model has no GAP feature layer: no Grad-CAM, no non-skin check")
    size = predictor.input_size
    data, sources = load_split_images(run_dir, data_dir, size, train_max, seed, predictor.colour)
    log.info("images loaded in %.0f s: %s", time.perf_counter() - t0, {k: len(v[1]) for k, v in data.items()})

    t = time.perf_counter()
    signals, view_probs, labels = {}, {}, {}
    for s in ("train", "val"):
        view_probs[s], signals[s] = run_views(predictor, data[s][0], "off" if s == "train" else "full")
        labels[s] = data[s][1]
        log.info("%s: forward passes done (%.0f s)", s, time.perf_counter() - t)

    # Test-time augmentation: chosen on validation, its cost measured on this machine.
    val_ba = {m: float(skm.balanced_accuracy_score(labels["val"], tta_average(view_probs["val"], m).argmax(1)))
              for m in TTA_MODES}
    latency = tta_latency_ms(predictor)
    tta_default = choose_tta(val_ba, latency, tta_min_gain)
    # The test split runs only the views the chosen mode needs (reported: off and the chosen mode).
    test_views, signals["test"] = run_views(predictor, data["test"][0], tta_default)
    labels["test"] = data["test"][1]
    log.info("test: forward passes done with TTA %s (%.0f s)", tta_default, time.perf_counter() - t)
    preds_npz = run_dir / "predictions.npz"
    parity = None
    if preds_npz.is_file():
        with np.load(preds_npz) as saved:
            if saved["test_probs"].shape == test_views[:, 0].shape:
                parity = float(np.abs(saved["test_probs"] - test_views[:, 0]).max())
    del data
    test_ba = {m: float(skm.balanced_accuracy_score(labels["test"], test_views[:, :k].mean(1).argmax(1)))
               for m, k in (("off", 1), (tta_default, tta_count(tta_default)))}
    tta = {
        "default": tta_default,
        "rule": (f"the cheapest mode whose validation balanced-accuracy gain over 'off' is >= {tta_min_gain} per doubling of its cost, "
                 f"within 0.005 of the best mode, and whose one-image forward pass takes <= {TTA_MAX_FORWARD_MS:g} ms "
                 "here; else off"),
        "val_balanced_accuracy": val_ba, "val_gain": {m: val_ba[m] - val_ba["off"] for m in TTA_MODES},
        "test_balanced_accuracy": test_ba,
        "forward_ms_batch1": latency, "cost_ratio": {m: latency[m] / latency["off"] for m in TTA_MODES},
        "views": {m: tta_count(m) for m in TTA_MODES},
    }

    # Calibration: one temperature per TTA mode, each fitted on validation.
    temps = {m: fit_temperature(tta_average(view_probs["val"], m), labels["val"]) for m in TTA_MODES}
    raw_test = test_views.mean(axis=1)
    raw_val = tta_average(view_probs["val"], tta_default)
    cal_test = temperature_scale(raw_test, temps[tta_default])
    cal_val = temperature_scale(raw_val, temps[tta_default])
    calibration = {
        "method": "temperature scaling of log-probabilities, fitted on validation (NLL)",
        "temperature": temps[tta_default], "temperature_by_tta": temps, "tta": tta_default, "ece_bins": ECE_BINS,
        "ece_test_before": ece(raw_test, labels["test"]), "ece_test_after": ece(cal_test, labels["test"]),
        "nll_test_before": nll(raw_test, labels["test"]), "nll_test_after": nll(cal_test, labels["test"]),
        "ece_val_before": ece(raw_val, labels["val"]), "ece_val_after": ece(cal_val, labels["val"]),
        "nll_val_before": nll(raw_val, labels["val"]), "nll_val_after": nll(cal_val, labels["val"]),
        "note": "Prediction probabilities served by the API, pages and reports are calibrated with this temperature.",
    }

    # "Uncertain": chosen on calibrated validation probabilities.
    unc = choose_uncertain_threshold(cal_val, labels["val"], uncertain_target)
    unc_rule = (f"lowest t (0.30..0.95, step 0.01) such that validation answers with calibrated top probability >= t "
                f"are right >= {uncertain_target:.0%} of the time")
    uncertain = {**unc, "rule": unc_rule, "val": selective_figures(cal_val, labels["val"], unc["threshold"]),
                 "test": selective_figures(cal_test, labels["test"], unc["threshold"])}

    ood = fit_nonskin(predictor, signals, run_dir, run_views, sources, imagenet_labels, ood_dims, seed)

    # The malignant flag compares the *served* P(malignant) (TTA, temperature) with its
    # threshold, so the threshold is chosen on, and its figures are of, served probabilities.
    served = {"val": cal_val, "test": cal_test}
    malignant = choose_malignant_threshold(labels["val"], cal_val)
    document = card.to_dict()
    metrics = {s: {**document.get("metrics", {}).get(s, {}), "malignant": served_malignant(labels[s], p, malignant,
                                                                                           tta_default, temps[tta_default])}
               for s, p in served.items()}
    thresholds = {**document.get("thresholds", {}), "malignant": malignant, "uncertain": unc["threshold"],
                  "uncertain_rule": unc_rule}
    card = ModelCard.from_dict({**document, "tta": tta, "calibration": calibration, "thresholds": thresholds,
                                "uncertain": uncertain, "ood": ood, "metrics": {**document.get("metrics", {}), **metrics}})
    trust = {"tta": tta, "calibration": calibration, "uncertain": uncertain, "ood": ood,
             "predictions_parity_max_abs": parity, "duration_s": round(time.perf_counter() - t0, 1)}
    if "malignant" in card.test_metrics:
        trust["malignant_test"] = thawed(card.test_metrics["malignant"])
    return card, trust, served


def save_served(npz_path: Path, served: dict) -> None:
    """Add (or replace) the served probabilities, ``{split}_probs_served``, in a run's ``predictions.npz``."""
    saved = dict(np.load(npz_path)) if npz_path.is_file() else {}
    np.savez_compressed(npz_path, **{**saved, **{f"{s}_probs_served": p for s, p in served.items()}})


def served_malignant(labels, probs, threshold: float, tta: str, temperature: float) -> dict:
    """The malignant flag's figures on served probabilities, saying which."""
    figures = evaluate_predictions(labels, probs, malignant_threshold=threshold).get("malignant", {})
    return {**figures, "probabilities": f"served: TTA {tta}, temperature {temperature:.3f}"}


def add_imagenet_branch(model_path: Path, card: ModelCard, weights: str) -> ModelCard:
    """Re-save an exported model with the ImageNet branch beside its classifier (its class
    outputs are unchanged) and return the card pinned to the new file; a model that
    already carries the branch is left as it is."""
    import keras

    from server.model.runtime import split_branch
    from training.export import save_model, with_imagenet_branch

    model = keras.models.load_model(model_path, compile=False)
    classifier, branch = split_branch(model)
    if branch is not None:
        return card
    _, sha = save_model(with_imagenet_branch(classifier, weights), model_path.parent, model_path.name)
    log.info("%s now carries the ImageNet branch (sha256 %s)", model_path, sha[:12])
    return card.replace(sha256=sha)


def calibrate_run(run_dir, data_dir, imagenet_weights: str = "", imagenet_labels: str = "", **options) -> dict:
    """Calibrate an exported run: write its card, ``metrics.json`` and ``report.md`` once each; return the figures.

    With ``imagenet_weights`` a model exported without the ImageNet branch gets it first.
    """
    from server.model.files import CARD_FILENAME, check_model_files
    from server.model.predictor import Predictor
    from training.export import MODEL_FILENAME, imagenet_label_names
    from training.report import existing_plots, summary_table, write_report

    run_dir = Path(run_dir)
    card_path = run_dir / CARD_FILENAME
    model_path = run_dir / MODEL_FILENAME
    card, _ = check_model_files(model_path, card_path)
    if imagenet_weights:
        card = add_imagenet_branch(model_path, card, imagenet_weights)
    predictor = Predictor.load(model_path, card, card.sha256, run_dir, tta="off", ood=False, imagenet=True)
    labels = imagenet_label_names(imagenet_labels) if imagenet_labels else None
    card, trust, served = calibrate(predictor, card, run_dir, data_dir, imagenet_labels=labels, **options)
    save_served(run_dir / "predictions.npz", served)
    # The differential's thresholds from the served probabilities just saved (with the patient context:
    # the trainer's, which this step does not recompute).
    card = card_with_differential(card, run_dir / "predictions.npz", predictor.reads_patient)
    card.write(card_path)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["trust"] = trust
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    if {"val", "test"} <= set(metrics):
        write_report(run_dir, card, metrics, existing_plots(run_dir), trust)
    log.info("calibrate: %s", json.dumps(summary_table(trust)))
    return trust


@user_errors_in_one_line
def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a training run (or saved_models/): .h5, model_card.json, split.csv")
    p.add_argument("--data-dir", required=True, help="the HAM10000 folder the run was trained on")
    p.add_argument("--uncertain-target", type=float, default=UNCERTAIN_TARGET_ACCURACY)
    p.add_argument("--imagenet-weights", default="",
                   help="add the ImageNet classifier to a model exported without it: 'imagenet' or a with-top .h5")
    p.add_argument("--imagenet-labels", default="", help="its 1000 class names, one a line ('imagenet': download)")
    p.add_argument("--ood-dims", type=int, default=0, help="PCA dimensions for the non-skin check (0: all features)")
    p.add_argument("--tta-min-gain", type=float, default=TTA_MIN_GAIN)
    p.add_argument("--train-max", type=int, default=4000, help="training images sampled for the feature statistics")
    p.add_argument("--nonskin-only", action="store_true",
                   help="fit the non-skin check again and nothing else (weights, TTA, calibration, thresholds stay)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.nonskin_only:
        from training.report import nonskin_table

        from training.nonskin_refit import refit_nonskin

        ood = refit_nonskin(args.run_dir, args.data_dir, args.train_max, ood_dims=args.ood_dims)
        print("\n".join(nonskin_table(ood)))
        return 0
    trust = calibrate_run(args.run_dir, args.data_dir, uncertain_target=args.uncertain_target,
                          ood_dims=args.ood_dims, tta_min_gain=args.tta_min_gain, train_max=args.train_max,
                          imagenet_weights=args.imagenet_weights, imagenet_labels=args.imagenet_labels)
    from training.report import summary_table

    print(json.dumps(summary_table(trust), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
