"""Does a 12 MP phone photo get the answer its 600x450 copy gets? And what does decoding it cost?

    python bench/bench_photo_size.py                                   # the test split, 4000x3000, shipped settings
    python bench/bench_photo_size.py --limit 200 --sides 192,384,full --precision float32,int8

For each photo of the split (``saved_models/split.csv``, ``training.data.split_frame``; the
shared files are 224x224 crops and 200x150 frames), screens it upscaled (bicubic, quality-90
JPEG, as ``bench_predict.upscaled_jpeg`` makes every benchmark's upload) to 600x450 and to
``--size``, as an upload is screened: ``open_upload`` then ``Predictor.predict_image``. With
``--sides``, the large upload is decoded down to each working side in turn (``full``: every pixel,
as before #37), which is how ``WORKING_SIDE`` in ``server/decoding.py`` was chosen.

Prints per working side: the share of photos with the same top class, the same malignant flag and
the same non-skin answer (refused or not) at both sizes, the largest and 99th-percentile change of
any class probability, and the median decode time of the large upload (``open_upload``; 1 thread,
noisy on a shared machine: compare within one run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench_predict import upscaled_jpeg  # noqa: E402
from server.decoding import WORKING_SIDE, open_upload  # noqa: E402

FULL = 1 << 30  # a working side no photo reaches: every pixel decoded
SEED = 42
SMALL = (600, 450)  # the size every other benchmark posts


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_sides(text: str) -> list[int]:
    return [FULL if s.strip() == "full" else int(s) for s in text.split(",")]


def answer(predictor, data: bytes, side: int) -> tuple[np.ndarray, bool, bool, float]:
    """(served probabilities in class order, malignant flag, refused as non-skin, decode ms)."""
    started = time.perf_counter()
    img = open_upload(data, working_side=side)
    decode_ms = (time.perf_counter() - started) * 1000.0
    p = predictor.predict_image(img)
    index = {code: i for i, code in enumerate(predictor.classes)}
    probs = np.zeros(len(index))
    for c in p.classes:
        probs[index[c.code]] = c.probability
    return probs, bool(p.malignant_flag), bool(p.out_of_distribution), decode_ms


def compare(predictors: dict, paths: list[Path], size: tuple[int, int], sides: list[int]) -> dict:
    """Per (precision, working side): the small and large answers of every photo, side by side."""
    rows = {(name, side): {"small": [], "large": [], "decode_ms": []} for name in predictors for side in sides}
    for n, path in enumerate(paths, 1):
        small, large = upscaled_jpeg(path, SMALL), upscaled_jpeg(path, size)
        for (name, side), row in rows.items():
            row["small"].append(answer(predictors[name], small, side))
            got = answer(predictors[name], large, side)
            row["large"].append(got)
            row["decode_ms"].append(got[3])
        if n % 100 == 0:
            print(f"  {n}/{len(paths)} photos", file=sys.stderr, flush=True)
    return rows


def figures(row: dict) -> dict:
    small_p = np.stack([a[0] for a in row["small"]])
    large_p = np.stack([a[0] for a in row["large"]])
    change = np.abs(small_p - large_p).max(axis=1)
    return {
        "n": len(small_p),
        "same_top": float(np.mean(small_p.argmax(1) == large_p.argmax(1))),
        "same_flag": float(np.mean([a[1] == b[1] for a, b in zip(row["small"], row["large"])])),
        "same_refusal": float(np.mean([a[2] == b[2] for a, b in zip(row["small"], row["large"])])),
        "max_change": float(change.max()),
        "p99_change": float(np.percentile(change, 99)),
        "decode_ms": statistics.median(row["decode_ms"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "saved_models")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--split", default="test")
    parser.add_argument("--size", type=parse_size, default=(4000, 3000), help="the large upload, WxH")
    parser.add_argument("--sides", type=parse_sides, default=[WORKING_SIDE],
                        help=f"working sides to decode the large upload to, comma-separated, 'full' for all pixels "
                             f"(default: the service's {WORKING_SIDE})")
    parser.add_argument("--precision", default=os.environ.get("INFERENCE_PRECISION", "auto"),
                        help="float32, int8 or auto (the service's default), or several, comma-separated")
    parser.add_argument("--limit", type=int, default=0, help="a random sample of this many photos (0: all)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_INTRA_OP_THREADS", "1")
    os.environ.setdefault("TF_INTER_OP_THREADS", "1")
    from server.config import onnx_cache_dir
    from server.model.card import CARD_FILENAME
    from server.model.predictor import Predictor
    from training.data import split_frame

    frame = split_frame(args.data_dir, args.run_dir / "split.csv", args.split)
    if args.limit:
        frame = frame.sample(min(args.limit, len(frame)), random_state=SEED)
    model = args.run_dir / "ham10000_mobilenetv2.h5"
    predictors = {}
    for wanted in args.precision.split(","):
        p = Predictor.from_path(model, args.run_dir / CARD_FILENAME, threads=1, onnx_cache=onnx_cache_dir() or None,
                                precision=wanted.strip())
        predictors[p.precision] = p
    rows = compare(predictors, [Path(p) for p in frame["path"]], args.size, args.sides)
    width, height = args.size
    print(f"{args.split} split, {len(frame)} photos upscaled to 600x450 against {width}x{height} (JPEG q90); "
          f"runtime {p.runtime}, TTA {p.tta}")
    print("| precision | working side | same top class | same malignant flag | same non-skin answer | largest change "
          "| p99 change | decode ms (large, median) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, side), row in rows.items():
        f = figures(row)
        label = "full (every pixel)" if side == FULL else f"{side} px"
        print(f"| {name} | {label} | {f['same_top']:.2%} | {f['same_flag']:.2%} | {f['same_refusal']:.2%} "
              f"| {f['max_change']:.3f} | {f['p99_change']:.3f} | {f['decode_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
