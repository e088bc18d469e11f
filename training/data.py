"""HAM10000 metadata, the lesion-grouped split, image loading and class weights.

The split is by ``lesion_id``: HAM10000 holds 2,545 extra photographs of lesions already
in the set, and letting one lesion's photographs fall on both sides of a split inflates
every figure (a published InceptionV3 fell from 0.76 to 0.685 balanced accuracy once
split by lesion).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from server.imaging import COLOUR_NONE, load_square_uint8
from server.lesions import CLASS_CODES
from server.patient import GENERAL_SITES, MAX_AGE, MIN_AGE, SEXES, SITES, parse_age, parse_sex, parse_site
from server.problems import ImageRejected, ServiceError

SPLITS = ("train", "val", "test")
PATIENT_COLUMNS = ("age", "sex", "localization")  # HAM10000's patient context, encoded by server.patient


class DatasetError(ValueError):
    """The data folder does not hold a usable HAM10000-layout dataset."""


def load_metadata(data_dir: Path) -> pd.DataFrame:
    """Read a HAM10000-layout folder: ``HAM10000_metadata.csv`` (or ``images.csv``) + images.

    Returns one row per image with ``image_id, lesion_id, dx, path, label`` and the
    patient context ``age, sex, localization`` (unknown where the file lacks a column). Rows whose
    image file is missing are an error, not silently dropped: a half-copied dataset must
    not train quietly on the half that arrived.
    """
    data_dir = Path(data_dir)
    meta_path = next((data_dir / n for n in ("HAM10000_metadata.csv", "images.csv") if (data_dir / n).is_file()), None)
    if meta_path is None:
        raise DatasetError(f"no HAM10000_metadata.csv or images.csv in {data_dir}")
    df = pd.read_csv(meta_path)
    missing_cols = {"image_id", "lesion_id", "dx"} - set(df.columns)
    if missing_cols:
        raise DatasetError(f"{meta_path} lacks columns {sorted(missing_cols)}")
    blank = [c for c in ("image_id", "lesion_id", "dx") if df[c].isna().any()]
    if blank:
        raise DatasetError(f"{meta_path} has empty {', '.join(blank)} cells (give a lesion of unknown id its image_id)")
    repeated = df.loc[df["image_id"].duplicated(), "image_id"]
    if len(repeated):
        raise DatasetError(f"{meta_path} lists {len(repeated)} image ids twice, e.g. {repeated.iloc[0]}")
    df["dx"] = df["dx"].astype(str).str.strip().str.lower()  # "MEL " is mel
    unknown = sorted(set(df["dx"]) - set(CLASS_CODES))
    if unknown:
        raise DatasetError(f"{meta_path} has unknown dx values {unknown}; expected {list(CLASS_CODES)}")
    if "file" in df.columns:
        df["path"] = [str(data_dir / f) for f in df["file"]]
    else:
        df["path"] = [str(_find_image(data_dir, i)) for i in df["image_id"]]
    absent = [p for p in df["path"] if not Path(p).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} images listed in {meta_path} are missing, e.g. {absent[0]}")
    df["label"] = df["dx"].map(CLASS_CODES.index).astype(int)
    for column in PATIENT_COLUMNS:  # a dataset without them trains as if no patient gave any
        if column not in df.columns:
            df[column] = np.nan if column == "age" else "unknown"
    check_patient_values(df, meta_path)
    return df[["image_id", "lesion_id", "dx", "path", "label", *PATIENT_COLUMNS]].reset_index(drop=True)


def check_patient_values(df: pd.DataFrame, meta_path: Path) -> None:
    """Refuse (DatasetError) patient values the service's parsers would refuse, before any training.

    The context is encoded in phase 3, hours into a run: a site written "arm" in a new dataset must
    stop the run at its start, with every such value named, not crash it at the end.
    """
    parsers = {"age": parse_age, "sex": parse_sex, "localization": parse_site}
    problems = []
    for column, parse in parsers.items():
        bad = []
        for value in df[column].dropna().unique():
            try:
                parse(value)
            except ServiceError:
                bad.append(value)
        if bad:
            problems.append(f"{column} {sorted(map(str, bad))[:8]}")
    if problems:
        raise DatasetError(f"{meta_path} has patient values the service cannot read: {'; '.join(problems)}. "
                           f"Ages are years {MIN_AGE} to {MAX_AGE}; sex {' or '.join(SEXES)}; sites {', '.join(SITES)}, or ISIC's general "
                           f"sites {', '.join(GENERAL_SITES)}; 'unknown' or empty where not recorded")


def split_frame(data_dir: Path, split_csv: Path, split: str) -> pd.DataFrame:
    """``split_csv``'s rows of one split, in file order (the trainer's, so ``predictions.npz``'s), joined
    with ``load_metadata``'s columns (path, label, patient context); DatasetError when an image is absent."""
    rows = pd.read_csv(split_csv)
    rows = rows.loc[rows["split"] == split, ["image_id", "split"]]
    merged = rows.merge(load_metadata(Path(data_dir)), on="image_id", how="left", validate="one_to_one")
    if merged["path"].isna().any():
        missing = merged.loc[merged["path"].isna(), "image_id"]
        raise DatasetError(f"{len(missing)} images of {split_csv} are not in {data_dir}, e.g. {missing.iloc[0]}")
    return merged.reset_index(drop=True)


def _find_image(data_dir: Path, image_id: str) -> Path:
    for folder in ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "."):
        for ext in (".jpg", ".jpeg", ".png"):
            candidate = data_dir / folder / f"{image_id}{ext}"
            if candidate.is_file():
                return candidate
    return data_dir / "images" / f"{image_id}.jpg"


def _grouped_holdout(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a ~``fraction`` holdout, stratified by class and grouped by lesion."""
    n_splits = max(2, round(1.0 / fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        _, held = next(folds.split(df, df["label"], groups=df["lesion_id"]))
    except ValueError as exc:  # fewer photos than holdout parts in every class
        raise DatasetError(f"too few photos to hold out 1/{n_splits} by lesion ({exc}); lesions per class: "
                           f"{df.groupby('dx')['lesion_id'].nunique().to_dict()}") from None
    mask = np.zeros(len(df), bool)
    mask[held] = True
    return mask


def split_by_lesion(df: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42) -> pd.Series:
    """Assign each image to train/val/test so no lesion spans two splits.

    StratifiedGroupKFold keeps class shares close to the whole set's; the holdout sizes
    are 1/round(1/fraction) of the data, so the default 15% gives 14.3% (1/7).
    """
    split = pd.Series("train", index=df.index)
    test = _grouped_holdout(df, test_fraction, seed)
    split[test] = "test"
    rest = df[~test]
    val_rel = val_fraction / (1.0 - test_fraction)
    val = _grouped_holdout(rest.reset_index(drop=True), val_rel, seed + 1)
    split.loc[rest.index[val]] = "val"
    return split


def check_split(df: pd.DataFrame, split: pd.Series) -> None:
    """Fail loudly if a lesion leaks across splits (AssertionError: a bug) or a class is missing from one
    (DatasetError: a dataset with too few lesions of that class, named in one line)."""
    spans = df.groupby("lesion_id").apply(lambda g: split[g.index].nunique(), include_groups=False)
    leaked = spans[spans > 1]
    if len(leaked):
        raise AssertionError(f"{len(leaked)} lesions appear in more than one split, e.g. {leaked.index[0]}")
    for name in SPLITS:
        present = set(df.loc[split == name, "dx"])
        if present != set(CLASS_CODES):  # the data's fault, not the split's: too few lesions of a class
            lesions = df.groupby("dx")["lesion_id"].nunique().reindex(list(CLASS_CODES), fill_value=0)
            raise DatasetError(f"split {name} gets no {', '.join(sorted(set(CLASS_CODES) - present))} photos: every class "
                               f"needs lesions enough for train, val and test (lesions per class: {lesions.to_dict()})")


def load_images(paths, size: int, workers: int = 4, colour: str = COLOUR_NONE) -> np.ndarray:
    """Load images as uint8 (n, size, size, 3) through the shared decoding and preprocessing; a file the
    service would refuse (broken, not a JPEG/PNG, too small) is a DatasetError naming it."""
    out = np.empty((len(paths), size, size, 3), np.uint8)

    def _load(i_path):
        i, path = i_path
        try:
            out[i] = load_square_uint8(path, size, colour)
        except ImageRejected as exc:  # what the service would refuse, it must not learn from either
            raise DatasetError(f"{path}: {exc.message}") from None

    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        list(pool.map(_load, enumerate(paths)))
    return out


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k * n_c): rare classes count as much as common ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}
