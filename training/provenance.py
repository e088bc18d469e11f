"""What a model's card says it learned from: the data's name, citation and licence.

The card names its data on ``/model`` and in every PDF report, and the licence's terms pass to
the model. HAM10000's record is known here; a folder of other photos states its own in a
``dataset.json`` beside its metadata; without one, the card names the folder and claims no
licence, since a clinic's own photos neither are HAM10000 nor carry its terms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from training.data import DatasetError

DATASET_FILE = "dataset.json"
HAM10000_SOURCE = {
    "name": "HAM10000 (Human Against Machine with 10000 training images)",
    "citation": (
        "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
        "dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018)."
    ),
    "doi": "10.7910/DVN/DBW86T",
    "url": "https://doi.org/10.7910/DVN/DBW86T",
}
HAM10000_LICENCE = {
    "name": "CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial)",
    "url": "https://creativecommons.org/licenses/by-nc/4.0/",
    "note": "The model is trained on HAM10000 and inherits its non-commercial terms.",
}
HAM10000_LESION_PREFIX = "HAM_"  # every HAM10000 lesion id, and only theirs


@dataclass(frozen=True)
class Provenance:
    """The card's ``data.source`` and ``licence`` (None: the card states none)."""

    source: dict
    licence: dict | None


HAM10000 = Provenance(HAM10000_SOURCE, HAM10000_LICENCE)


def provenance_of(data_dir: Path, lesion_ids) -> Provenance:
    """The provenance of the photos a run trains on; DatasetError for an unreadable ``dataset.json``.

    Read when the data loads, so a broken record stops the run before training, not at export.
    """
    path = Path(data_dir) / DATASET_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(record, dict) or not str(record.get("name") or "").strip():
            raise DatasetError(f"{path} must be a JSON object with a 'name' (and 'citation', 'url', 'licence' "
                               f"where known)")
        licence = record.pop("licence", None)
        return Provenance(record, licence if isinstance(licence, dict) or licence is None else {"name": str(licence)})
    ids = [str(i) for i in lesion_ids]
    if ids and all(i.startswith(HAM10000_LESION_PREFIX) for i in ids):
        return HAM10000
    return Provenance({"name": f"the {len(ids)} photos in {Path(data_dir).resolve().name}/",
                       "note": f"no {DATASET_FILE} in the data folder: its origin, citation and terms are not "
                               f"recorded"}, None)
