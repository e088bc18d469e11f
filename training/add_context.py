"""Add phase 3 (the patient context, ``training.patient_context``) to a finished run, without fine-tuning again.

    python -m training.add_context --run-dir saved_models --data-dir ../shared/data/ham10000 \
        --imagenet-weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_with_top.h5 \
        --imagenet-labels ../shared/weights/imagenet_labels.txt

Reads the run's ``.h5`` (its logit adjustment already folded in) and card, fits the context
weights on the training split's metadata, chooses their strength on validation and applies
the shipping rule. When the rule says the context helps, the run is exported again through
the trainer's own ``export_and_evaluate``: a new ``.h5`` and card, calibration, non-skin
statistics and report, the test split scored once. Otherwise the run is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from server.imaging import scale_pixels
    from server.model.card import CARD_FILENAME, thawed
    from server.model.files import load_card
    from server.model.runtime import split_branch
    from training.config import TrainConfig
    from training.patient_context import phase3
    from training.phases import batched_predict
    from training.prepare import prepare_data
    from training.train import export_and_evaluate, setup_logging

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--imagenet-weights", default="", help="as the trainer's option (the branch is exported again)")
    p.add_argument("--imagenet-labels", default="")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    setup_logging(run_dir)
    card = load_card(run_dir / CARD_FILENAME)
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in card.training["config"].items() if k in known})
    cfg = replace(cfg, data_dir=args.data_dir, out_dir=str(run_dir), imagenet_weights=args.imagenet_weights,
                  imagenet_labels=args.imagenet_labels)
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, run_dir)
    del prepared.images["train"]
    model, _ = split_branch(keras.models.load_model(run_dir / card.model_file, compile=False))
    if len(model.inputs) > 1:
        raise SystemExit(f"{run_dir / card.model_file} already reads the patient context")
    val_probs = batched_predict(model, scale_pixels(prepared.images["val"]))
    shipped, record = phase3(model, val_probs, prepared, seed=cfg.seed, sites=cfg.context_sites)
    print(json.dumps(record, indent=2))
    if shipped is model:
        return 0
    timings = {"phase3_context": time.perf_counter() - t0}
    export_and_evaluate(shipped, cfg, prepared, thawed(card.training["logit_adjustment"]), timings, t0,
                        score_test=True, context_record=record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
