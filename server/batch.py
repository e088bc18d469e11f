"""Screen every image in a folder with one Predictor and write the probabilities as CSV.

    python -m server.batch FOLDER --out probs.csv [--model PATH]
    lesion-predict-folder FOLDER --out probs.csv            (installed entry point)

Files go through exactly the path an upload takes (``imaging.open_upload`` then
``Predictor.predict_image``), so a batch result equals what the API would answer. A file
that cannot be screened gets its reason in the ``error`` column and the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from server.config import DEFAULT_MODEL_PATH
from server.imaging import ImageRejected, open_upload
from server.lesions import CLASS_CODES

COLUMNS = ["file", "top_code", "top_probability", "malignant_probability", "malignant_flag", "uncertain",
           *CLASS_CODES, "error"]
NOT_A_SKIN_LESION = "not_a_skin_lesion: the image does not look like a skin-lesion photo; no diagnosis given"


def image_files(folder: Path) -> list[Path]:
    """The folder's regular, non-hidden files, sorted so runs are reproducible (not recursive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def predict_row(predictor, path: Path, folder: Path) -> dict:
    """One CSV row: the prediction, or the reason this file could not be screened."""
    row = {"file": str(path.relative_to(folder))}
    try:
        prediction = predictor.predict_image(open_upload(path.read_bytes()))
    except ImageRejected as exc:
        return {**row, "error": f"{exc.code}: {exc.message}"}
    except OSError as exc:
        return {**row, "error": f"unreadable: {exc.strerror or exc}"}
    if prediction.out_of_distribution:  # as the API: a non-skin image gets no diagnosis
        return {**row, "error": NOT_A_SKIN_LESION}
    by_code = {c.code: c.probability for c in prediction.classes}
    return {
        **row,
        "top_code": prediction.top.code,
        "top_probability": prediction.top.probability,
        "malignant_probability": prediction.malignant_probability,
        "malignant_flag": "" if prediction.malignant_flag is None else int(prediction.malignant_flag),
        "uncertain": int(prediction.uncertain),
        **by_code,
        "error": "",
    }


def write_csv(rows, out: Path) -> None:
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="lesion-predict-folder", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of JPEG/PNG images (not searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH),
                        help="exported .h5 with model_card.json beside it (default: $MODEL_PATH or the shipped model)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Exit 0 when the CSV was written (even if some files had errors), 2 on bad arguments,
    3 when the model cannot be loaded."""
    args = parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from server.predictor import ModelLoadError, Predictor

    try:
        predictor = Predictor.from_path(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    rows = [predict_row(predictor, path, args.folder) for path in image_files(args.folder)]
    write_csv(rows, args.out)
    failed = sum(1 for r in rows if r["error"])
    print(f"wrote {len(rows)} rows to {args.out} ({len(rows) - failed} screened, {failed} with errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
