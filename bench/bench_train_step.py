"""What whole-network fine-tuning costs on this machine, per image, at each input size
(a script, not a test).

    python bench/bench_train_step.py                        # 128 160 192 224 px, batch 32
    python bench/bench_train_step.py --sizes 192 --steps 12

It times ``train_on_batch`` of the trainer's own model (``training.model.build_model``,
every layer trainable but BatchNorm, AdamW, no XLA) on synthetic batches, and prints
images per second and what one epoch of the 7,152-image training split would take.

Why it prints the CPU and its load: an earlier version reported 17.7 img/s for the whole
network at 224 px, which decided against whole-network fine-tuning. Re-run on the idle
2-core CPU the same code gives 36-38 img/s: the low figure was taken while another job
held the cores. A throughput figure is only worth its conditions, so the script states
them, and warns when the 1-minute load average says the CPU was not its own.
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

from training.clock import cpu_summary  # noqa: E402

TRAIN_IMAGES = 7152  # the lesion-grouped training split of the shipped run


def images_per_second(input_size: int, batch: int, steps: int, warmup_steps: int = 2) -> float:
    """Median training throughput of the whole network (BatchNorm frozen) at ``input_size``."""
    import keras
    import tensorflow as tf

    from server.lesions import CLASS_CODES
    from training.model import build_model, set_trainable_from

    model = build_model(len(CLASS_CODES), input_size, 1.0, None, 256, 0.3, seed=0)
    set_trainable_from(model, model.layers[1].name)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4), loss="categorical_crossentropy",
                  jit_compile=False)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, size=(batch, input_size, input_size, 3)).astype(np.float32))
    y = tf.constant(np.eye(len(CLASS_CODES), dtype=np.float32)[rng.integers(0, len(CLASS_CODES), batch)])
    for _ in range(warmup_steps):  # trace, build and let the allocator settle
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 160, 192, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    import tensorflow as tf

    load = os.getloadavg()[0]
    print(f"{cpu_summary()}, TensorFlow {tf.__version__}; batch {args.batch}, "
          f"{args.steps} timed steps each; 1-min load average before start {load:.2f}")
    if load > 0.5:
        print(f"warning: the CPU is busy (load {load:.2f}); these figures will be low", file=sys.stderr)
    print("| input | img/s | one epoch of 7,152 images | 20 epochs |")
    print("|---|---|---|---|")
    for size in args.sizes:
        rate = images_per_second(size, args.batch, args.steps)
        epoch_min = TRAIN_IMAGES / rate / 60
        print(f"| {size} | {rate:.1f} | {epoch_min:.1f} min | {20 * epoch_min:.0f} min |", flush=True)
    print(f"1-min load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
