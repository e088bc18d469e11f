"""What fine-tuning costs on this machine, per image, for each place the trainable part can start
(a script, not a test).

    python bench/bench_train_step.py                       # cuts: block_9_add (shipped), block_5_add, none (whole net)
    python bench/bench_train_step.py --cuts none --input-size 299 --steps 6

Why: the trainer caches the frozen bottom's activations so that only the top trains, and
the quality bar of issue #4 is usually reached with the whole network trained on fresh
augmentations for tens of epochs. This prints training images per second for each cut
and what one epoch of HAM10000's 7,152 training images would take, so the CPU budget
behind each choice is a measured figure, not a guess. BatchNorm stays frozen, as in the
trainer; the optimizer is the trainer's AdamW.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAIN_IMAGES = 7152  # the lesion-grouped training split of the shipped run


def images_per_second(cut: str, input_size: int, batch: int, steps: int) -> float:
    """Median training throughput of everything after ``cut`` ('none': the whole network)."""
    import keras
    import tensorflow as tf

    from server.lesions import CLASS_CODES
    from training.model import build_model, layer_after, set_trainable_from, split_model

    model = build_model(len(CLASS_CODES), input_size, 1.0, None, 256, 0.3, seed=0)
    if cut == "none":
        trainable, x_shape = model, (batch, input_size, input_size, 3)
        set_trainable_from(model, model.layers[1].name)
    else:
        bottom, trainable = split_model(model, cut)
        set_trainable_from(model, layer_after(model, cut))
        x_shape = (batch,) + tuple(int(s) for s in bottom.output_shape[1:])
    trainable.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=1e-4), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=x_shape).astype(np.float32))
    y = tf.constant(np.eye(len(CLASS_CODES), dtype=np.float32)[rng.integers(0, len(CLASS_CODES), batch)])
    trainable.train_on_batch(x, y)  # trace and build
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainable.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuts", nargs="+", default=["block_9_add", "block_5_add", "none"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} CPU cores, input {args.input_size} px, batch {args.batch}, {args.steps} timed steps each")
    print("| trainable part | img/s | one epoch of 7,152 images | 30 epochs |")
    print("|---|---|---|---|")
    for cut in args.cuts:
        rate = images_per_second(cut, args.input_size, args.batch, args.steps)
        epoch_min = TRAIN_IMAGES / rate / 60
        label = "whole network" if cut == "none" else f"after {cut}"
        print(f"| {label} | {rate:.1f} | {epoch_min:.1f} min | {30 * epoch_min / 60:.1f} h |", flush=True)
    print("The cut runs also need the activation cache once (about 40 img/s for each augmented copy here).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
