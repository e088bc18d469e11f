"""Write a trained model as ``.h5`` plus ``model_card.json``: the pair the service loads.

The card is the contract between trainer and service: class order, input size and the
preprocessing id must match what ``server/`` implements, and ``sha256`` ties the card to
the exact ``.h5`` bytes so a swapped file is caught at load time.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

from server.imaging import PREPROCESSING_ID
from server.lesions import CLASS_CODES, LIMITATIONS
from server.model.card import CARD_FILENAME, ModelCard
from server.model.files import file_sha256

MODEL_FILENAME = "ham10000_mobilenetv2.h5"

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
INTENDED_USE = (
    "Screening aid for dermoscopic images of single pigmented skin lesions. Not a diagnosis; "
    "not for clinical decisions without a qualified clinician."
)


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit the trainer ran from, so a model can be traced to its code."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def base_card(*, name: str, version: str, input_size: int, architecture: str, **extra) -> dict:
    """The fields every card has; the trainer adds metrics, data and config via ``extra``."""
    return {
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASS_CODES),
        "input_size": int(input_size),
        "preprocessing": PREPROCESSING_ID,
        "architecture": architecture,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "data": {"source": HAM10000_SOURCE},
        "licence": HAM10000_LICENCE,
        **extra,
    }


def save_model(model, out_dir: Path, filename: str = MODEL_FILENAME) -> tuple[Path, str]:
    """Save ``model`` as legacy HDF5 without optimizer state: (its path, its sha256)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / filename
    model.save(model_path, include_optimizer=False)
    return model_path, file_sha256(model_path)


def export_model(model, out_dir: Path, card: dict, filename: str = MODEL_FILENAME) -> tuple[Path, Path]:
    """Save ``model`` and write its card (checked as a ``ModelCard``) beside it, pinned to the file's sha256."""
    model_path, sha = save_model(model, out_dir, filename)
    card = ModelCard.from_dict({**card, "model_file": filename, "sha256": sha})
    return model_path, card.write(Path(out_dir) / CARD_FILENAME)
