"""Fitting the non-skin check for a run: the statistics, each check's threshold, and the rates.

The checks themselves (distances, floors, stored format, the one rule) are the service's,
in ``server/model/nonskin.py``. Here, from the training and validation splits only:

- Mahalanobis statistics of training images for the model's own pooled features and for
  the ImageNet branch's pooled features;
- each distance threshold at one percentile of the validation distances, the lowest of
  ``NONSKIN_PERCENTILE_CANDIDATES`` that keeps the combined false refusals within
  ``NONSKIN_MAX_FALSE_REFUSALS`` on validation lesions and ``NONSKIN_MAX_FALSE_REFUSALS_HARD``
  on validation lesions made harder (``training/nonskin_corpus.py``);
- floors on texture and colour at a low percentile of the validation lesions;
- the ImageNet classes that are the top class of training lesions, which a refusal never names.

Then it reports, never fits: refusals of the test lesions, of test lesions made harder, and
of the named corpus of everyday photographs and made pictures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from server.imaging import COLOUR_NONE, centre_square, colour_normalised
from server.model.files import file_sha256
from server.model.nonskin import (
    COLOUR_FLOOR,
    FEATURES,
    FLOORS,
    IMAGENET,
    TEXTURE_FLOOR,
    DistanceCheck,
    FloorCheck,
    ImagenetLabels,
    Mahalanobis,
    NonSkinCheck,
    compact_ood,
    ood_distances,
)
from server.thresholds import (
    LOOKS_LIKE_MIN_PROBABILITY,
    NONSKIN_FLOOR_PERCENTILE,
    NONSKIN_IMAGENET_GATE_PERCENTILE,
    NONSKIN_MAX_FALSE_REFUSALS,
    NONSKIN_MAX_FALSE_REFUSALS_HARD,
    NONSKIN_PERCENTILE_CANDIDATES,
    refuses_as_non_skin,
)
from training import nonskin_corpus as corpus

log = logging.getLogger("training.calibrate")

OOD_FILENAME = "ood_stats.npz"
IMAGENET_PROBS = "imagenet_probs"  # the branch's class probabilities, beside the signals the checks read
HARD_LESIONS = 150  # lesions per split made harder in each of the corpus's ways
LESION_LIKE_SHARE = 0.005  # an ImageNet class that is the top class of more training lesions than this is lesion-like


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
    """The lowest candidate percentile whose check (``check_at(percentile)``) keeps the false
    refusals of validation lesions, plain and made harder, within the targets."""
    for pct in NONSKIN_PERCENTILE_CANDIDATES:
        check = check_at(pct)
        if (refuses_as_non_skin(check.score(val)).mean() <= NONSKIN_MAX_FALSE_REFUSALS
                and refuses_as_non_skin(check.score(hard_val)).mean() <= NONSKIN_MAX_FALSE_REFUSALS_HARD):
            return pct
    return NONSKIN_PERCENTILE_CANDIDATES[-1]


def lesion_like_classes(train_probs: np.ndarray) -> np.ndarray:
    """ImageNet classes that are the top class of more than ``LESION_LIKE_SHARE`` of training lesions."""
    counts = np.bincount(train_probs.argmax(axis=1), minlength=train_probs.shape[1])
    return np.flatnonzero(counts > LESION_LIKE_SHARE * len(train_probs)).astype(np.int32)


def squares(images, size: int, colour: str = COLOUR_NONE) -> np.ndarray:
    """PIL images -> uint8 model-input squares, through the service's own preprocessing (geometry and colour)."""
    return np.stack([colour_normalised(np.asarray(centre_square(img.convert("RGB"), size), np.uint8), colour)
                     for img in images])


def fit_nonskin(predictor, signals: dict, run_dir: Path, run_views, hard_sources: dict, label_names=None,
                ood_dims: int = 0, seed: int = 0) -> dict:
    """Fit the checks on ``signals`` (by split: ``features``, ``floors`` and, when the model
    carries the ImageNet branch, ``imagenet`` and ``imagenet_probs``), write ``ood_stats.npz``
    into ``run_dir`` and return the card's ``ood`` section with its figures.

    ``hard_sources``: by split ("val", "test"), lesion photos (PIL) to make harder.
    """
    from PIL import Image

    size = predictor.input_size
    has_imagenet = signals["train"].get(IMAGENET) is not None
    distance_signals = (FEATURES, IMAGENET) if has_imagenet else (FEATURES,)
    stored, storage_error = {}, {}
    for name in distance_signals:
        full = fit_ood(signals["train"][name], ood_dims if name == FEATURES else 0, seed)
        stored[name], storage_error[name] = compact_faithfully(full, signals["val"][name])

    def hard(split):
        lesions = [Image.open(p).convert("RGB") for p in hard_sources[split]]
        items = corpus.hard_cases(lesions, seed=seed + (0 if split == "val" else 10_000))
        return [k for _, k, _ in items], run_views(predictor, squares([img for _, _, img in items], size, predictor.colour))[1]

    hard_kinds, sets = {}, dict(signals)
    for split in ("val", "test"):
        hard_kinds[split], sets[f"hard_{split}"] = hard(split)
    everyday, made = corpus.everyday_photos(), corpus.made_pictures(size, seed)
    sets["everyday"] = run_views(predictor, squares([img for _, _, img in everyday], size, predictor.colour))[1]
    sets["made"] = run_views(predictor, squares([img for _, _, img in made], size, predictor.colour))[1]

    columns = {"texture": TEXTURE_FLOOR, "colour": COLOUR_FLOOR}
    floors = {name: float(np.percentile(signals["val"][FLOORS][:, column], NONSKIN_FLOOR_PERCENTILE))
              for name, column in columns.items()}
    floor_checks = [FloorCheck(name, column, floors[name]) for name, column in columns.items()]
    measures = {n: Mahalanobis.from_arrays(stored[n]) for n in distance_signals}
    val_distances = {n: m.distances(signals["val"][n]) for n, m in measures.items()}
    gate = float(np.percentile(val_distances[FEATURES], NONSKIN_IMAGENET_GATE_PERCENTILE)) if has_imagenet else None

    def check_at(pct: float) -> NonSkinCheck:
        """Every check, its distance thresholds at the ``pct`` percentile of validation distances."""
        distance_checks = (DistanceCheck(n, n, measures[n], float(np.percentile(val_distances[n], pct)))
                           for n in distance_signals)
        return NonSkinCheck((*distance_checks, *floor_checks), imagenet_gate=gate)

    percentile = choose_percentile(check_at, sets["val"], sets["hard_val"])
    check = check_at(percentile)
    thresholds = {n: check.check(n).threshold for n in distance_signals}

    arrays = dict(stored[FEATURES])
    if has_imagenet:
        arrays.update({f"imagenet_{k}": v for k, v in stored[IMAGENET].items()})
        lesion_like = lesion_like_classes(signals["train"][IMAGENET_PROBS])
        arrays["imagenet_lesion_like"] = lesion_like
        if label_names is not None:
            arrays["imagenet_labels"] = np.asarray(label_names)
            check = NonSkinCheck(check.checks, ImagenetLabels(tuple(label_names), frozenset(lesion_like.tolist())), gate)
    sha = save_ood(arrays, run_dir / OOD_FILENAME)

    def refused(which):
        return refuses_as_non_skin(check.score(sets[which]))

    def by_check(which):
        return {name: int(refuses_as_non_skin(r).sum()) for name, r in check.ratios(sets[which]).items()}

    def by_kind(kinds, flags):
        out: dict[str, dict] = {}
        for kind, flag in zip(kinds, flags):
            out.setdefault(kind, {"n": 0, "refused": 0})
            out[kind]["n"] += 1
            out[kind]["refused"] += int(flag)
        return out

    def passed(items, flags):
        return [name for (name, _, _), flag in zip(items, flags) if not flag]

    every_flags, made_flags = refused("everyday"), refused("made")
    looks = {}
    if check.labels is not None:
        for (name, _, _), p in zip(everyday, sets["everyday"][IMAGENET_PROBS]):
            looks[name] = check.labels.looks_like(p, LOOKS_LIKE_MIN_PROBABILITY)
    checks_text = ["the model's own pooled features (Mahalanobis distance, Ledoit-Wolf shrinkage precision)"]
    if has_imagenet:
        checks_text.append("the ImageNet branch's pooled features (the same)")
    checks_text.append("floors on texture (mean gradient) and colour (saturation)")
    return {
        "method": "refused when any check fails: " + "; ".join(checks_text),
        "file": OOD_FILENAME, "sha256": sha, "feature_layer": predictor.feature_layer,
        "dims": int(stored[FEATURES]["dim"]), "train_images": int(len(signals["train"][FEATURES])),
        "storage": "means float32, precisions as upper triangles scaled by their maximum",
        "storage_max_relative_distance_error_val": storage_error,
        "threshold": thresholds[FEATURES], "imagenet_threshold": thresholds.get(IMAGENET), "imagenet_gate": gate,
        "imagenet_gate_rule": (f"the ImageNet check runs for images whose own-feature distance exceeds the "
                               f"{NONSKIN_IMAGENET_GATE_PERCENTILE}th percentile of validation lesions'"),
        "imagenet_runs_val": float(np.mean(val_distances[FEATURES] > gate)) if has_imagenet else None,
        "texture_floor": floors["texture"], "colour_floor": floors["colour"],
        "threshold_rule": (f"distance thresholds: the {percentile:g}th percentile of validation distances, the lowest of "
                           f"{list(NONSKIN_PERCENTILE_CANDIDATES)} with combined false refusals <= "
                           f"{NONSKIN_MAX_FALSE_REFUSALS:.0%} of validation lesions and <= "
                           f"{NONSKIN_MAX_FALSE_REFUSALS_HARD:.0%} of validation lesions made harder; floors: the "
                           f"{NONSKIN_FLOOR_PERCENTILE:g}th percentile of validation lesions"),
        "percentile": percentile,
        "rule": "refused when any check fails (score = the largest distance / threshold or floor ratio > 1)",
        "looks_like_rule": (f"a refusal names the ImageNet top class when its probability is >= {LOOKS_LIKE_MIN_PROBABILITY} "
                            f"and it is not the top class of > {LESION_LIKE_SHARE:.1%} of training lesions"),
        "val_false_flag_rate": float(refused("val").mean()),
        "test_false_flag_rate": float(refused("test").mean()),
        "test_refused_by_check": by_check("test"),
        "hard_val_false_flag_rate": float(refused("hard_val").mean()),
        "hard_test_false_flag_rate": float(refused("hard_test").mean()),
        "hard_test_images": int(len(hard_kinds["test"])),
        "hard_test_by_kind": by_kind(hard_kinds["test"], refused("hard_test")),
        "hard_test_refused_by_check": by_check("hard_test"),
        "everyday_true_flag_rate": float(every_flags.mean()), "everyday_images": int(len(every_flags)),
        "everyday_passed": passed(everyday, every_flags),
        "everyday_looks_like": looks,
        "made_true_flag_rate": float(made_flags.mean()), "made_images": int(len(made_flags)),
        "made_passed": passed(made, made_flags),
        "made_by_kind": by_kind([k for _, k, _ in made], made_flags),
        "nonskin_true_flag_rate": float(np.concatenate([every_flags, made_flags]).mean()),
        "nonskin_images": int(len(every_flags) + len(made_flags)),
        "corpus": "training/nonskin_corpus.py: everyday photographs from scikit-image, scikit-learn and matplotlib; "
                  "made pictures; test lesions made harder (darker, brighter, blurred, rotated, ruler, hair, 150 px)",
        "api": "422 not_a_skin_lesion with error.looks_like: no diagnosis is given for a refused image",
    }
