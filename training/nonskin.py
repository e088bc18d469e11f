"""Fitting the non-skin check for a run: the statistics, each check's two levels, and the rates.

The checks themselves (distances, floors, ceilings, stored format, the one rule) are the
service's, in ``server/model/nonskin.py``. Here, from the training and validation splits only:

- Mahalanobis statistics of training images for the model's own pooled features and for
  the ImageNet branch's pooled features;
- where "unusual" starts: each distance threshold at one percentile of the validation
  distances, the lowest of ``NONSKIN_PERCENTILE_CANDIDATES`` that keeps the combined unusual
  share within ``NONSKIN_MAX_UNUSUAL`` on validation lesions and ``NONSKIN_MAX_UNUSUAL_HARD``
  on validation lesions made harder (``training/nonskin_corpus.py``); floors on texture and
  colour at a low percentile of the validation lesions, ceilings on texture (noise) and the
  flat share at the matching high one;
- where refusal starts: each check's ``NONSKIN_REFUSE_PERCENTILE`` percentile of its ratios
  over the validation lesions, plain, made harder and shifted as other clinics photograph them;
- the ImageNet classes that are the top class of training lesions, which a refusal never names.

Then it reports, never fits: refused and unusual shares of the test lesions, of test lesions
made harder and shifted, and of the named corpus of everyday photographs and made pictures.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from server.imaging import COLOUR_NONE, centre_square, colour_normalised
from server.model.files import file_sha256
from server.model.nonskin import (
    FEATURES,
    FLOORS,
    IMAGENET,
    PICTURE_CHECKS,
    DistanceCheck,
    FloorCheck,
    Mahalanobis,
    NonSkinCheck,
    compact_ood,
    ood_distances,
)
from server.thresholds import (
    LOOKS_LIKE_MIN_PROBABILITY,
    NONSKIN_FLOOR_PERCENTILE,
    NONSKIN_IMAGENET_GATE_PERCENTILE,
    NONSKIN_MAX_UNUSUAL,
    NONSKIN_MAX_UNUSUAL_HARD,
    NONSKIN_NAMED_MAX_LESION_LIKE,
    NONSKIN_NAMED_MIN_PROBABILITY,
    NONSKIN_PERCENTILE_CANDIDATES,
    NONSKIN_REFUSE_PERCENTILE,
    NONSKIN_UNUSUAL_ABOVE,
)
from training import nonskin_corpus as corpus
from training import nonskin_everyday, nonskin_shifted
from training.nonskin_figures import IMAGENET_PROBS, corpus_description, measure
from server.model.nonskin_imagenet import ImagenetLabels, ObjectCheck
from training.nonskin_object import fit_object_check, lesion_names

log = logging.getLogger("training.calibrate")

OOD_FILENAME = "ood_stats.npz"
HARD_LESIONS = 150  # lesions per split made harder in each of the corpus's ways
SHIFTED_LESIONS = 200  # lesions per split shifted in each of the corpus's ways (other clinics)
LESION_LIKE_SHARE = 0.005  # an ImageNet class that is the top class of more training lesions than this is lesion-like
# The lesion photos the corpus changes, by set: (how many per split, the corpus function, seed offset).
LESION_SETS = {"hard": (HARD_LESIONS, corpus.hard_cases),
               "shifted": (SHIFTED_LESIONS, nonskin_shifted.shifted_lesions)}
TEST_SEED_OFFSET = 10_000


def fit_ood(train_features, dims: int = 0, seed: int = 0) -> dict:
    """Mean, Ledoit-Wolf precision (and PCA projection when ``dims``) of pooled training features."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, np.float64)
    mean = x.mean(axis=0)
    z = x - mean
    stats = {"mean": mean.astype(np.float32)}
    if dims and dims < x.shape[1]:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        projection = vt[:dims].T
        z = z @ projection
        stats["projection"] = projection.astype(np.float32)
    lw = LedoitWolf(assume_centered=True).fit(z)
    stats["precision"] = lw.precision_
    stats["shrinkage"] = np.float32(lw.shrinkage_)
    return stats


def save_ood(stats: dict, path: Path) -> str:
    np.savez_compressed(path, **stats)
    return file_sha256(path)


def compact_faithfully(full_stats: dict, val_vectors) -> tuple[dict, float]:
    """(the stored form, its largest relative distance error on validation): float16 when faithful, else float32."""
    exact = ood_distances(full_stats, val_vectors)
    for dtype in (np.float16, np.float32):
        stats = compact_ood(full_stats, dtype)
        error = float(np.max(np.abs(ood_distances(stats, val_vectors) - exact) / np.maximum(exact, 1e-9)))
        if error <= 0.005:
            break
        log.warning("%s precision moves distances by up to %.2f%%", np.dtype(dtype).name, 100 * error)
    return stats, error


def choose_percentile(check_at, val: dict, hard_val: dict) -> float:
    """The lowest candidate percentile whose check (``check_at(percentile)``) keeps the unusual shares
    of validation lesions, plain and made harder, within the targets."""
    for pct in NONSKIN_PERCENTILE_CANDIDATES:
        check = check_at(pct)
        if (unusual_or_worse(check, val).mean() <= NONSKIN_MAX_UNUSUAL
                and unusual_or_worse(check, hard_val).mean() <= NONSKIN_MAX_UNUSUAL_HARD):
            return pct
    return NONSKIN_PERCENTILE_CANDIDATES[-1]


def unusual_or_worse(check: NonSkinCheck, signals: dict) -> np.ndarray:
    return check.score(signals) > NONSKIN_UNUSUAL_ABOVE


def with_refusal_levels(check: NonSkinCheck, pooled: list[dict]) -> NonSkinCheck:
    """``check`` with each check's refusal level at ``NONSKIN_REFUSE_PERCENTILE`` of its ratios over the
    ``pooled`` signal sets (validation lesions however photographed), never below its unusual level."""
    ratios = [check.ratios(signals) for signals in pooled]
    out = []
    for c in check.checks:
        factor = max(1.0, float(np.percentile(np.concatenate([r[c.name] for r in ratios]), NONSKIN_REFUSE_PERCENTILE)))
        if isinstance(c, FloorCheck):
            out.append(replace(c, refuse_floor=c.floor - c.sign * float(np.log(factor))))
        else:
            out.append(replace(c, refuse_threshold=c.threshold * factor))
    return NonSkinCheck(tuple(out), check.labels, check.imagenet_gate, check.objects)


def lesion_like_classes(train_probs: np.ndarray) -> np.ndarray:
    """ImageNet classes that are the top class of more than ``LESION_LIKE_SHARE`` of training lesions."""
    counts = np.bincount(train_probs.argmax(axis=1), minlength=train_probs.shape[1])
    return np.flatnonzero(counts > LESION_LIKE_SHARE * len(train_probs)).astype(np.int32)


def squares(images, size: int, colour: str = COLOUR_NONE) -> np.ndarray:
    """PIL images -> uint8 model-input squares, through the service's own preprocessing (geometry and colour)."""
    return np.stack([colour_normalised(np.asarray(centre_square(img.convert("RGB"), size), np.uint8), colour)
                     for img in images])


def lesion_signals(predictor, run_views, sources: dict, seed: int) -> tuple[dict, dict]:
    """({set name: signals}, {set name: kinds}) of the lesion photos the corpus changes, by ``LESION_SETS``
    and split (``hard_val``, ``shifted_test``...): ``sources`` maps each such name to photo paths."""
    from PIL import Image

    sets, kinds = {}, {}
    for name, (_, make) in LESION_SETS.items():
        for split in ("val", "test"):
            key = f"{name}_{split}"
            lesions = [Image.open(p).convert("RGB") for p in sources[key]]
            items = make(lesions, seed=seed + (0 if split == "val" else TEST_SEED_OFFSET))
            kinds[key] = [k for _, k, _ in items]
            sets[key] = run_views(predictor, squares([img for _, _, img in items], predictor.input_size, predictor.colour))[1]
    return sets, kinds


def fit_nonskin(predictor, signals: dict, run_dir: Path, run_views, sources: dict, label_names=None,
                ood_dims: int = 0, seed: int = 0, previous: NonSkinCheck | None = None) -> dict:
    """Fit the checks on ``signals`` (by split: ``features``, ``floors`` and, when the model
    carries the ImageNet branch, ``imagenet`` and ``imagenet_probs``), write ``ood_stats.npz``
    into ``run_dir`` and return the card's ``ood`` section with its figures.

    ``sources``: by set and split (``hard_val``, ``hard_test``, ``shifted_val``, ``shifted_test``),
    lesion photo paths to change. ``previous``: the check the run's card had, measured on the
    same sets (``previous_check``) so a refit says what it changed.
    """
    has_imagenet = signals["train"].get(IMAGENET) is not None
    distance_signals = (FEATURES, IMAGENET) if has_imagenet else (FEATURES,)
    stored, storage_error = {}, {}
    for name in distance_signals:
        full = fit_ood(signals["train"][name], ood_dims if name == FEATURES else 0, seed)
        stored[name], storage_error[name] = compact_faithfully(full, signals["val"][name])

    lesion_sets, kinds = lesion_signals(predictor, run_views, sources, seed)
    sets = {**signals, **lesion_sets}
    size = predictor.input_size
    everyday, made = nonskin_everyday.everyday_photos(), corpus.made_pictures(size, seed)
    sets["everyday"] = run_views(predictor, squares([img for _, _, img in everyday], size, predictor.colour))[1]
    sets["made"] = run_views(predictor, squares([img for _, _, img in made], size, predictor.colour))[1]

    val_floors = signals["val"][FLOORS]
    levels = {name: float(np.percentile(val_floors[:, column], 100 - NONSKIN_FLOOR_PERCENTILE if ceiling
                                        else NONSKIN_FLOOR_PERCENTILE))
              for name, (column, ceiling) in PICTURE_CHECKS.items()}
    picture_checks = [FloorCheck(name, column, levels[name], ceiling=ceiling)
                      for name, (column, ceiling) in PICTURE_CHECKS.items()]
    measures = {n: Mahalanobis.from_arrays(stored[n]) for n in distance_signals}
    val_distances = {n: m.distances(signals["val"][n]) for n, m in measures.items()}
    gate = float(np.percentile(val_distances[FEATURES], NONSKIN_IMAGENET_GATE_PERCENTILE)) if has_imagenet else None

    labels = None
    arrays = dict(stored[FEATURES])
    if has_imagenet:
        arrays.update({f"imagenet_{k}": v for k, v in stored[IMAGENET].items()})
        lesion_like = lesion_like_classes(signals["train"][IMAGENET_PROBS])
        arrays["imagenet_lesion_like"] = lesion_like
        if label_names is not None:
            arrays["imagenet_labels"] = np.asarray(label_names)
            labels = ImagenetLabels(tuple(label_names), frozenset(lesion_like.tolist()))  # as the service reads them

    def check_at(pct: float) -> NonSkinCheck:
        """Every check, its distance thresholds at the ``pct`` percentile of validation distances."""
        distance_checks = (DistanceCheck(n, n, measures[n], float(np.percentile(val_distances[n], pct)))
                           for n in distance_signals)
        return NonSkinCheck((*distance_checks, *picture_checks), labels, gate)

    percentile = choose_percentile(check_at, sets["val"], sets["hard_val"])
    check = with_refusal_levels(check_at(percentile), [sets["val"], sets["hard_val"], sets["shifted_val"]])
    object_card = {}
    if has_imagenet:
        names = {"everyday": [n for n, _, _ in everyday], "made": [n for n, _, _ in made],
                 "val": [f"lesion{i}" for i in range(len(sets["val"][FEATURES]))],
                 **{k: lesion_names(v) for k, v in kinds.items()}}
        object_arrays, object_card = fit_object_check(sets, names)
        arrays.update(object_arrays)
        check = NonSkinCheck(check.checks, labels, gate, ObjectCheck.from_arrays(arrays, object_card["object_threshold"]))
    level = {c.name: c for c in check.checks}
    sha = save_ood(arrays, run_dir / OOD_FILENAME)

    looks = {}
    if labels is not None:
        for (name, _, _), p in zip(everyday, sets["everyday"][IMAGENET_PROBS]):
            looks[name] = check.labels.looks_like(p, LOOKS_LIKE_MIN_PROBABILITY)
    checks_text = ["the model's own pooled features (Mahalanobis distance, Ledoit-Wolf shrinkage precision)"]
    if has_imagenet:
        checks_text.append("the ImageNet branch's pooled features (the same)")
    checks_text.append("floors on texture (mean gradient) and colour (saturation); ceilings on texture (noise) and "
                       "the flat share (equal neighbouring pixels along the flatter axis)")
    figures = measure(check, sets, kinds, everyday, made)
    out = {
        "method": "each check has an unusual level and a refusal level further out: " + "; ".join(checks_text),
        "file": OOD_FILENAME, "sha256": sha, "feature_layer": predictor.feature_layer,
        "dims": int(stored[FEATURES]["dim"]), "train_images": int(len(signals["train"][FEATURES])),
        "storage": "means float32, precisions as upper triangles scaled by their maximum",
        "storage_max_relative_distance_error_val": storage_error,
        "threshold": level[FEATURES].threshold, "refuse_threshold": level[FEATURES].refuse_threshold,
        "imagenet_threshold": level[IMAGENET].threshold if has_imagenet else None,
        "imagenet_refuse_threshold": level[IMAGENET].refuse_threshold if has_imagenet else None,
        "imagenet_gate": gate,
        "imagenet_gate_rule": (f"the ImageNet check runs for images whose own-feature distance exceeds the "
                               f"{NONSKIN_IMAGENET_GATE_PERCENTILE}th percentile of validation lesions'"),
        "imagenet_runs_val": float(np.mean(val_distances[FEATURES] > gate)) if has_imagenet else None,
        "texture_floor": level["texture"].floor, "texture_refuse_floor": level["texture"].refuse_floor,
        "colour_floor": level["colour"].floor, "colour_refuse_floor": level["colour"].refuse_floor,
        "noise_ceiling": level["noise"].floor, "noise_refuse_ceiling": level["noise"].refuse_floor,
        "flat_ceiling": level["flat"].floor, "flat_refuse_ceiling": level["flat"].refuse_floor,
        "threshold_rule": (f"unusual: distance thresholds at the {percentile:g}th percentile of validation distances, the "
                           f"lowest of {list(NONSKIN_PERCENTILE_CANDIDATES)} with combined unusual shares <= "
                           f"{NONSKIN_MAX_UNUSUAL:.0%} of validation lesions and <= {NONSKIN_MAX_UNUSUAL_HARD:.0%} of "
                           f"validation lesions made harder; floors at the {NONSKIN_FLOOR_PERCENTILE:g}th and ceilings "
                           f"at the {100 - NONSKIN_FLOOR_PERCENTILE:g}th percentile of validation lesions. Refused: each "
                           f"check at the {NONSKIN_REFUSE_PERCENTILE:g}th percentile of its ratios over validation "
                           f"lesions, plain, made harder and shifted as other clinics photograph them"),
        "refuse_factors": {c.name: c.refuse_factor for c in check.checks},
        "percentile": percentile,
        "rule": ("refused (422) when any check is beyond its refusal level, or when " + (
                     "the ImageNet branch ran and the object check finds an everyday object (decision > object_threshold)"
                     if check.objects is not None else
                     f"the image is unusual and the ImageNet branch names an object (top class not lesion-like, p >= "
                     f"{NONSKIN_NAMED_MIN_PROBABILITY}, lesion-like classes <= {NONSKIN_NAMED_MAX_LESION_LIKE})")
                 + "; unusual (200, uncertain, with a warning) when any check is beyond its unusual level (score = the "
                 "largest ratio > 1); else usual"),
        "looks_like_rule": (f"a refusal names the ImageNet top class when its probability is >= {LOOKS_LIKE_MIN_PROBABILITY} "
                            f"and it is not the top class of > {LESION_LIKE_SHARE:.1%} of training lesions"),
        **figures,
        **object_card,
        "everyday_looks_like": looks,
        "corpus": corpus_description(SHIFTED_LESIONS),
        "api": ("422 not_a_skin_lesion with error.looks_like: no diagnosis is given for a refused image; an unusual "
                "image is screened with unusual_image: true and marked uncertain"),
    }
    if previous is not None:
        out["previous_check"] = measure(previous, sets, kinds, everyday, made)
    return out
