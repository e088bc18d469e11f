"""Fit the non-skin check of an exported run again, and nothing else (``python -m training.calibrate --nonskin-only``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from server.model.card import ModelCard
from training.nonskin import fit_nonskin
from training.split_views import load_split_images, run_views

log = logging.getLogger("training.calibrate")


def refit_nonskin(run_dir, data_dir, train_max: int = 4000, seed: int = 42, ood_dims: int = 0) -> dict:
    """Fit the non-skin check of an exported run again, and nothing else: its card's ``ood``, ``ood_stats.npz``,
    ``metrics.json`` (``trust.ood``) and ``report.md``; the weights, TTA, calibration and thresholds stay.

    The check the card had is measured on the same sets first (``ood.previous_check``), and the
    ImageNet class names stored with it are kept. Returns the new ``ood`` section.
    """
    from server.model.files import CARD_FILENAME, check_model_files
    from server.model.predictor import Predictor, load_nonskin
    from training.export import MODEL_FILENAME
    from training.report import existing_plots, write_report

    run_dir = Path(run_dir)
    card, _ = check_model_files(run_dir / MODEL_FILENAME, run_dir / CARD_FILENAME)
    previous = load_nonskin(card, run_dir) if card.ood is not None else None
    labels = list(previous.labels.names) if previous is not None and previous.labels is not None else None
    predictor = Predictor.load(run_dir / MODEL_FILENAME, card, card.sha256, run_dir, tta="off", ood=False, imagenet=True)
    t = time.perf_counter()
    data, sources = load_split_images(run_dir, Path(data_dir), predictor.input_size, train_max, seed, predictor.colour)
    signals = {s: run_views(predictor, images)[1] for s, (images, _) in data.items()}
    log.info("forward passes of the splits done (%.0f s)", time.perf_counter() - t)
    ood = fit_nonskin(predictor, signals, run_dir, run_views, sources, labels, ood_dims, seed, previous=previous)
    card = ModelCard.from_dict({**card.to_dict(), "ood": ood})
    card.write(run_dir / CARD_FILENAME)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "trust" in metrics:
        metrics["trust"]["ood"] = ood
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        if {"val", "test"} <= set(metrics):
            write_report(run_dir, card, metrics, existing_plots(run_dir), metrics["trust"])
    log.info("non-skin check refitted in %.0f s", time.perf_counter() - t)
    return ood
