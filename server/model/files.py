"""The model's files: find, read and check a card and its ``.h5`` without TensorFlow, and what they serve as.

Class order and preprocessing must match what ``server/`` implements, and ``sha256``
ties the card to the exact ``.h5`` bytes, so a swapped file is caught at load time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from server.imaging import COLOURS, colour_of, preprocessing_id
from server.lesions import CLASS_CODES
from server.model.card import CARD_FILENAME, CardFieldError, ModelCard
from server.model.card_quality import quoted_figure
from server.model.trust import TTA_MODES
from server.prediction import ModelInfo


class ModelLoadError(RuntimeError):
    """The model or its card is missing, corrupt or does not match this service."""


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MB chunks: the one hash that pins models and statistics."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path_for(model_path: Path) -> Path:
    """The card sits beside its model as ``model_card.json`` (the trainer's export layout)."""
    return Path(model_path).with_name(CARD_FILENAME)


def parse_card(data: Mapping, card_path: Path) -> ModelCard:
    """Type a card document and check it describes a model this service can serve (ModelLoadError if not)."""
    try:
        card = ModelCard.from_dict(data)
    except CardFieldError as exc:
        if str(exc).endswith(" missing"):
            raise ModelLoadError(f"model card {card_path} lacks {exc.field}") from None
        raise ModelLoadError(f"model card {card_path}: field {exc}") from None
    if card.classes != CLASS_CODES:
        raise ModelLoadError(
            f"model card {card_path} lists classes {list(card.classes)}, but the service catalogue is {list(CLASS_CODES)}"
        )
    for name in ("file", "threshold"):
        if card.ood is not None and getattr(card.ood, name) is None:
            raise ModelLoadError(f"model card {card_path}: field ood.{name} is missing")
    if colour_of(card.preprocessing) is None:
        implemented = " or ".join(repr(preprocessing_id(c)) for c in COLOURS)
        raise ModelLoadError(
            f"model card {card_path} was trained with preprocessing {card.preprocessing!r}; "
            f"this service implements {implemented}"
        )
    return card


def load_card(card_path: Path) -> ModelCard:
    """Read a model card and check it describes a model this service can serve."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelLoadError(f"model card not found at {card_path}: export the model with `python -m training.train`")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc})") from None
    return parse_card(data, card_path)


def check_model_files(model_path, card_path=None) -> tuple[ModelCard, str]:
    """Check the model file and its card belong together, without importing TensorFlow.

    Cheap enough for gunicorn's master to run before forking (``server/boot.py``), so a
    missing file, a bad card or a swapped ``.h5`` stops the service with one line.
    Returns the card and the file's sha256.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelLoadError(
            f"model file not found at {model_path}: train one with `python -m training.train` "
            "or set MODEL_PATH to an exported .h5"
        )
    card = load_card(Path(card_path) if card_path else card_path_for(model_path))
    sha = file_sha256(model_path)
    if card.sha256 and card.sha256 != sha:
        raise ModelLoadError(
            f"{model_path} has sha256 {sha[:12]}…, but its card expects {card.sha256[:12]}…: "
            "the model and its card do not belong together"
        )
    return card, sha


def model_info(card: ModelCard, sha256: str, precision: str = "float32", context_given: bool = False) -> ModelInfo:
    """Which model answered, with the test figure measured as it answered (precision, patient context)."""
    figure = quoted_figure(card, precision, context_given)
    return ModelInfo(name=card.name, version=card.version, sha256=sha256, input_size=card.input_size,
                     test_balanced_accuracy=figure.balanced_accuracy if figure else None, test_figure=figure)


def resolve_tta(tta: str | None, card: ModelCard) -> str:
    """The TTA mode to serve: the setting, or with ``auto`` (or none) the card's measured choice."""
    chosen = (tta or "").strip().lower() or "auto"
    if chosen == "auto":
        chosen = card.tta_default
    if chosen not in TTA_MODES:
        raise ModelLoadError(f"TTA={chosen!r} is not one of auto, {', '.join(TTA_MODES)}")
    return chosen
