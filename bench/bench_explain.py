"""What Grad-CAM costs: ``predict_image`` with and without ``explain`` on the same image (a script, not a test).

    python bench/bench_explain.py                      # the shipped model (saved_models/)
    python bench/bench_explain.py --model RUN/ham10000_mobilenetv2.h5
    python bench/bench_explain.py --synthetic          # MobileNetV2 224 with ../shared's weights, random head

Both calls run the same single forward pass (the served graph also returns the feature
map); explaining adds the head gradient, the map, the overlay and its PNG. The issue asks
for at most 2x a plain prediction. Runs are interleaved, one inference thread (as under
gunicorn), TTA and the non-skin check as the served configuration has them unless
``--tta off``. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as gunicorn.conf.py sets for the workers

import numpy as np  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.h5"


def synthetic_model(out_dir: Path) -> Path:
    from server.lesions import CLASS_CODES
    from training.export import base_card, export_model
    from training.model import build_model

    model = build_model(len(CLASS_CODES), 224, 1.0, str(WEIGHTS) if WEIGHTS.is_file() else None)
    card = base_card(name="bench", version="synthetic", input_size=224, architecture="MobileNetV2 224, random head")
    return export_model(model, out_dir, card)[0]


def photo():
    """A 600x450 photo-like image (the HAM10000 original size): smooth colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:450, 0:600]
    base = np.stack([150 + 60 * np.sin(xx / 90), 110 + 40 * np.cos(yy / 70), 90 + 30 * np.sin((xx + yy) / 120)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "saved_models" / "ham10000_mobilenetv2.h5"))
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--tta", default="auto", help="auto (the card's choice) | off | flips | full")
    p.add_argument("-n", type=int, default=60)
    args = p.parse_args(argv)

    from server.model.predictor import Predictor
    from server.model.runtime import configure_tf_threads

    configure_tf_threads(1, 1)
    tmp = tempfile.TemporaryDirectory()
    model_path = synthetic_model(Path(tmp.name)) if args.synthetic else Path(args.model)
    predictor = Predictor.from_path(model_path, runtime=args.runtime, threads=1, tta=args.tta)
    img = photo()
    for _ in range(5):
        predictor.predict_image(img)
        predictor.predict_image(img, explain=True)
    plain, explained, explain_part = [], [], []
    for _ in range(args.n):
        t = time.perf_counter()
        predictor.predict_image(img)
        plain.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        out = predictor.predict_image(img, explain=True)
        explained.append((time.perf_counter() - t) * 1000)
        explain_part.append(out.timing.explain_ms)
    p50, e50 = float(np.median(plain)), float(np.median(explained))
    print(f"model {model_path.name} ({'synthetic' if args.synthetic else predictor.info.version}), runtime "
          f"{predictor.runtime}, TTA {predictor.tta}, feature map {predictor.feature_layer}, 1 thread, n={args.n}")
    print(f"predict_image            p50 {p50:7.2f} ms   p90 {np.percentile(plain, 90):7.2f} ms")
    print(f"predict_image explain=1  p50 {e50:7.2f} ms   p90 {np.percentile(explained, 90):7.2f} ms"
          f"   (Grad-CAM + overlay PNG p50 {np.median(explain_part):.2f} ms)")
    print(f"Grad-CAM cost ratio (explain / plain, p50): {e50 / p50:.2f}x   (target <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
