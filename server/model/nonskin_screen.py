"""The non-skin check on one served image: the card's check loaded, and its answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.model.card import ModelCard
from server.model.files import ModelLoadError, file_sha256
from server.model.nonskin import FEATURES, FLOORS, IMAGENET, PICTURE, NonSkinCheck, largest
from server.model.nonskin_pictures import floor_statistics, image_statistics
from server.thresholds import LOOKS_LIKE_MIN_PROBABILITY, NONSKIN_REFUSED


def load_nonskin(card: ModelCard, card_dir: Path) -> NonSkinCheck | None:
    """The card's non-skin checks, from the .npz its ``ood`` section pins by sha256, or None."""
    spec = card.ood
    if spec is None:
        return None
    path = Path(card_dir) / spec.file
    if not path.is_file():
        raise ModelLoadError(f"the model card's non-skin statistics {path} are missing: run training.calibrate")
    if spec.sha256 and file_sha256(path) != spec.sha256:
        raise ModelLoadError(f"{path} does not match the sha256 its model card records")
    return NonSkinCheck.load(path, spec.thresholds(), spec.imagenet_gate, spec.refusal(), spec.object_threshold)


def screen_nonskin(check: NonSkinCheck | None, x: np.ndarray, feature_map: np.ndarray,
                   forward_imagenet) -> tuple[float | None, str | None, str | None]:
    """(the non-skin score of one image (the largest ratio of its checks), its answer
    (``server.thresholds.nonskin_answer``), what a refused image seemed to show), or
    (None, None, None) without a check. ``forward_imagenet``: the ImageNet branch, run only
    for images the model's own features place far out."""
    if check is None:
        return None, None, None
    signals = {FEATURES: feature_map.mean(axis=(0, 1))[None]}
    needed = check.signals_needed()
    if PICTURE in needed:
        signals[PICTURE] = image_statistics(x)
    if FLOORS in needed:
        signals[FLOORS] = floor_statistics(x)
    ratios = check.ratios(signals)
    in_features = in_probs = None
    if check.imagenet_runs(ratios)[0]:
        in_features, in_probs = forward_imagenet(x)
        ratios[IMAGENET] = check.check(IMAGENET).ratios(in_features)
    objects = check.object_photos(ratios, signals[FEATURES], in_features)
    answer = str(check.answers(ratios, in_probs, objects)[0])
    looks_like = None
    if answer == NONSKIN_REFUSED and in_probs is not None and check.labels is not None:
        looks_like = check.labels.looks_like(in_probs[0], LOOKS_LIKE_MIN_PROBABILITY)
    return float(largest(ratios)[0]), answer, looks_like
