"""Screen every image in a folder with one Predictor and write the probabilities as CSV.

    python -m server.batch FOLDER --out probs.csv [--model PATH] [--metadata patients.csv]
    lesion-predict-folder FOLDER --out probs.csv            (installed entry point)

Files go through the screening use case an upload takes (``server.screening.screen``), so
a batch result equals what the API would answer. A file that cannot be screened gets its
reason (``code: message``, as the API would say it) in the ``error`` column and the run goes on.
``--metadata`` gives images a patient context (``server/batch_metadata.py``); the ``age``,
``sex`` and ``site`` columns echo what each image was screened with.

A clinic's archive is thousands of phone photos: each is decoded only down to the working
size (``server/decoding.py``), and on a terminal a progress bar on stderr says how many are
done, the rate and the time left. Piped or redirected, the run prints nothing until its summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from tqdm import tqdm

from server.batch_metadata import Metadata, MetadataError, read_metadata
from server.config import DEFAULT_MODEL_PATH
from server.lesions import CLASS_CODES
from server.problems import ServiceError
from server.screening import ScreeningOptions, screen

COLUMNS = ["file", "age", "sex", "site", "top_code", "top_probability", "malignant_probability", "malignant_flag", "uncertain",
           "differential", *CLASS_CODES, "error"]


def image_files(folder: Path) -> list[Path]:
    """The folder's regular, non-hidden files, sorted so runs are reproducible (not recursive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def predict_row(predictor, path: Path, folder: Path, metadata: Metadata | None = None) -> dict:
    """One CSV row: the prediction, or the reason this file could not be screened.

    A bad metadata row is this image's error (as the API answers a bad field): the image is
    not screened without the context the user meant to give, and the other images go on.
    """
    name = str(path.relative_to(folder))
    row = {"file": name}
    patient = (metadata or Metadata()).for_file(name)
    if isinstance(patient, ServiceError):
        return {**row, "error": f"{patient.code}: {patient.message}"}
    row.update(patient.to_dict())
    try:
        prediction = screen(path.read_bytes(), ScreeningOptions(), predictor, patient=patient)
    except ServiceError as exc:  # as the API: not a usable JPEG/PNG, or not a skin lesion (no diagnosis)
        return {**row, "error": f"{exc.code}: {exc.message}"}
    except OSError as exc:
        return {**row, "error": f"unreadable: {exc.strerror or exc}"}
    by_code = {c.code: c.probability for c in prediction.classes}
    return {
        **row,
        "top_code": prediction.top.code,
        "top_probability": prediction.top.probability,
        "malignant_probability": prediction.malignant_probability,
        "malignant_flag": "" if prediction.malignant_flag is None else int(prediction.malignant_flag),
        "uncertain": int(prediction.uncertain),
        "differential": " ".join(prediction.differential.codes),  # the types still possible, most likely first
        **by_code,
        "error": "",
    }


def service_predictor(model: Path):
    """The model as the service loads it, from the same environment (``server/config.py``): its
    precision, runtime, TTA, non-skin check and ONNX cache, so a row says what the API would."""
    from server.config import config_from_env, predictor_options
    from server.model.predictor import Predictor

    return Predictor.from_path(model, **predictor_options(config_from_env()))


def progress(files: list[Path], stream=None):
    """``files`` wrapped in a progress bar (count, rate, ETA) on ``stream`` (stderr) when it is a
    terminal; silent otherwise, so logs and pipes get no carriage-return clutter."""
    stream = stream or sys.stderr
    return tqdm(files, total=len(files), unit="image", file=stream, disable=not stream.isatty(), smoothing=0.05)


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
    parser.add_argument("--metadata", type=Path, metavar="CSV",
                        help="optional patient context: a CSV with columns filename,age,sex,site (blank = not given)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Exit 0 when the CSV was written (even if some files had errors), 2 on bad arguments
    (an unusable metadata CSV included), 3 when the model cannot be loaded."""
    args = parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    try:
        metadata = read_metadata(args.metadata) if args.metadata else Metadata()
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = image_files(args.folder)
    for line in metadata.warnings:
        print(f"warning: {line}", file=sys.stderr)
    unmatched = metadata.unmatched(str(path.relative_to(args.folder)) for path in files)
    if unmatched:
        print(f"warning: {len(unmatched)} filename(s) in {args.metadata} match no image in {args.folder}: "
              f"{', '.join(unmatched)}", file=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from server.model.files import ModelLoadError

    try:
        predictor = service_predictor(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    rows = [predict_row(predictor, path, args.folder, metadata) for path in progress(files)]
    write_csv(rows, args.out)
    failed = sum(1 for r in rows if r["error"])
    print(f"wrote {len(rows)} rows to {args.out} ({len(rows) - failed} screened, {failed} with errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
