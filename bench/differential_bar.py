"""The differential's bar (issue #34) through the service's own path: every test photo read as an upload.

    python bench/differential_bar.py                               # shipped model, test split, int8 and float32
    python bench/differential_bar.py --split val --precision int8 --limit 300
    python bench/differential_bar.py --precision int8 --shifted 100   # and 100 test lesions shifted 13 ways

The thresholds were fitted (``training/differential.py``) on float32 validation outputs saved by
the calibration step; the service answers in int8 by default. This reads each photo of the split
as ``open_upload`` does, screens it with ``Predictor.predict_image`` (photo alone, then with the
patient's own age, sex and site from HAM10000's metadata) and measures the lists the answers
carry, against the bar: coverage >= 0.88 overall and >= 0.80 for every class with at least 30
photos (>= 0.75 for df and vasc), mean size <= 1.9, single-type answers right >= 0.90, and every
answer's JSON carrying ``differential`` and ``differential_coverage``. A photo the non-skin check
refuses has no list (a 422); those are counted, not scored. ``--shifted N`` adds N test lesions
shifted in each of the ways other clinics photograph them (``training/nonskin_shifted.py``: white
balance, contrast, a round field, gel bubbles, hair, ruler and ink, JPEG, a wider field, and their
combinations), the nearest this project has to other clinics' photos.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from training.clock import cpu_summary  # noqa: E402

BAR = {"coverage": 0.88, "class_coverage": 0.80, "rare_coverage": 0.75, "rare": ("df", "vasc"), "min_photos": 30,
       "mean_size": 1.9, "single_accuracy": 0.90}


def patient_of(row):
    """HAM10000's metadata as a PatientContext, as the form would send it (missing values: not given)."""
    from server.patient import PatientContext

    age = row["age"]
    age = None if age is None or (isinstance(age, float) and math.isnan(age)) else str(int(age))
    return PatientContext.parse(age, row["sex"], row["localization"])


def screen(predictor, uploads, patients) -> dict:
    """The lists of every upload's answer, as codes, and whether its JSON carries both keys."""
    from server.imaging import open_upload
    from server.problems import ImageRejected

    lists, carried, refused = [], 0, 0
    for data, patient in zip(uploads, patients):
        try:
            prediction = predictor.predict_image(open_upload(data), patient=patient)
        except ImageRejected:
            refused += 1
            lists.append(None)
            continue
        if prediction.out_of_distribution:  # the API answers 422 for it
            refused += 1
            lists.append(None)
            continue
        body = prediction.to_dict()
        carried += "differential" in body and "differential_coverage" in body
        lists.append([c["code"] for c in body["differential"]])
    return {"lists": lists, "carried": carried, "refused": refused}


def figures(lists, labels, classes) -> dict:
    """Coverage, mean size and single-type accuracy, overall and by class, of the answered photos."""
    kept = [(codes, classes[y]) for codes, y in zip(lists, labels) if codes is not None]
    covered = np.array([truth in codes for codes, truth in kept])
    size = np.array([len(codes) for codes, _ in kept])
    truths = np.array([truth for _, truth in kept])
    single = size == 1
    return {"n": len(kept), "coverage": float(covered.mean()), "mean_size": float(size.mean()),
            "single_share": float(single.mean()), "single_accuracy": float(covered[single].mean()) if single.any() else float("nan"),
            "by_class": {c: (int((truths == c).sum()), float(covered[truths == c].mean()) if (truths == c).any()
                             else float("nan")) for c in classes}}


def verdict(f: dict) -> list[str]:
    """The bar's lines that ``f`` misses (empty: it meets the bar)."""
    misses = []
    if f["coverage"] < BAR["coverage"]:
        misses.append(f"coverage {f['coverage']:.3f} < {BAR['coverage']}")
    for code, (n, cov) in f["by_class"].items():
        floor = BAR["rare_coverage"] if code in BAR["rare"] else BAR["class_coverage"]
        if (n >= BAR["min_photos"] or code in BAR["rare"]) and cov < floor:
            misses.append(f"{code} coverage {cov:.3f} < {floor} ({n} photos)")
    if f["mean_size"] > BAR["mean_size"]:
        misses.append(f"mean size {f['mean_size']:.2f} > {BAR['mean_size']}")
    if f["single_accuracy"] < BAR["single_accuracy"]:
        misses.append(f"single-type accuracy {f['single_accuracy']:.3f} < {BAR['single_accuracy']}")
    return misses


def shifted_set(frame, n: int) -> tuple:
    """(name, uploads, patients, labels) of ``n`` test lesions shifted every way, as lossless uploads, photo alone."""
    from PIL import Image

    from training import nonskin_shifted as corpus
    from training.int8_bar import upload_of

    sample = frame.sample(min(n, len(frame)), random_state=1)
    lesions = [Image.open(path).convert("RGB") for path in sample["path"]]
    pictures = corpus.shifted_lesions(lesions, seed=10_000)
    labels = np.array([sample["label"].to_numpy()[int(name.split(".")[0].removeprefix("lesion"))]
                       for name, _, _ in pictures])
    return (f"{len(lesions)} test lesions x {len(corpus.shifted_kinds())} shifts", [upload_of(img) for _, _, img in pictures],
            [None] * len(pictures), labels, [kind for _, kind, _ in pictures])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=str(ROOT / "saved_models"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--precision", nargs="+", default=["int8", "float32"], choices=("int8", "float32"))
    p.add_argument("--limit", type=int, default=0, help="a random sample of this many photos (0: all)")
    p.add_argument("--shifted", type=int, default=0, help="also this many test lesions, shifted every way (0: none)")
    args = p.parse_args(argv)

    from server.config import onnx_cache_dir
    from server.model.files import CARD_FILENAME
    from server.model.predictor import Predictor
    from training.data import split_frame
    from training.export import MODEL_FILENAME

    run_dir, data_dir = Path(args.run_dir), Path(args.data_dir)
    if not (data_dir / "HAM10000_metadata.csv").is_file():
        print(f"error: {data_dir} has no HAM10000 (this bench needs the images)", file=sys.stderr)
        return 2
    frame = split_frame(data_dir, run_dir / "split.csv", args.split)
    if args.limit:
        frame = frame.sample(min(args.limit, len(frame)), random_state=0)
    uploads = [Path(path).read_bytes() for path in frame["path"]]
    labels = frame["label"].to_numpy()
    patients = [patient_of(row) for _, row in frame.iterrows()]
    print(f"# {args.split} split, {len(uploads)} photos, through open_upload + predict_image; CPU: {cpu_summary()}")
    sets = [("photo alone", uploads, [None] * len(uploads), labels, None),
            ("with the patient context", uploads, patients, labels, None)]
    if args.shifted:
        sets.append(shifted_set(split_frame(data_dir, run_dir / "split.csv", "test"), args.shifted))
    for precision in args.precision:
        predictor = Predictor.from_path(run_dir / MODEL_FILENAME, run_dir / CARD_FILENAME, onnx_cache=onnx_cache_dir(),
                                        precision=precision)
        print(f"\n## {predictor.precision} (TTA {predictor.tta})")
        print("| inputs | answered | refused | carry both keys | coverage | mean size | single share | single right | "
              + " | ".join(predictor.classes) + " | meets the bar |")
        print("|---" * (8 + len(predictor.classes)) + "|")
        for inputs, pictures, given, truth, kinds in sets:
            t = time.perf_counter()
            out = screen(predictor, pictures, given)
            f = figures(out["lists"], truth, predictor.classes)
            by = " | ".join(f"{cov:.3f} ({n})" for n, cov in f["by_class"].values())
            misses = verdict(f)
            print(f"| {inputs} | {f['n']} | {out['refused']} | {out['carried']}/{f['n']} | {f['coverage']:.3f} | "
                  f"{f['mean_size']:.2f} | {f['single_share']:.3f} | {f['single_accuracy']:.3f} | {by} | "
                  f"{'yes' if not misses else 'no: ' + '; '.join(misses)} |  ({time.perf_counter() - t:.0f} s)")
            if kinds is not None:
                print("  by shift (coverage, mean size): " + "; ".join(
                    f"{kind} {by_kind['coverage']:.2f}, {by_kind['mean_size']:.2f}" for kind, by_kind in (
                        (k, figures([c for c, x in zip(out["lists"], kinds) if x == k],
                                    truth[np.array(kinds) == k], predictor.classes)) for k in dict.fromkeys(kinds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
