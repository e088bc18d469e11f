"""Fitting the object check: everyday photos against lesion photos, on both networks' pooled features.

    python -m training.nonskin_object --run-dir saved_models --data-dir ../shared/data/ham10000

A logistic regression (scikit-learn, L2, balanced classes, standardised inputs) on the model's own
pooled features beside the ImageNet branch's: what the named corpus calls everyday photos and
made pictures (``training/nonskin_everyday.py``, ``training/nonskin_corpus.py``) on one side,
validation lesions plain, made harder and shifted as other clinics photograph them on the other.
The test split is never read. Every picture gets a cross-fitted decision (folds of whole
photos: a photo and its lesion-like versions, a lesion and its shifted copies, stay in one
fold), the threshold lies at the highest cross-fitted decision of a validation lesion, and the
cross-fitted decisions give the figures the card quotes for those sets: the shipped classifier,
fitted on every picture, would score its own fitting photos too kindly.

The command adds the check to a run that has the rest already (the classifier into its
``ood_stats.npz``, the threshold and figures into its card); ``training.nonskin.fit_nonskin``
fits it with the rest on a new run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from server.model.nonskin import FEATURES, IMAGENET
from server.model.nonskin_imagenet import OBJECT_BIAS, OBJECT_WEIGHTS
from server.thresholds import NONSKIN_OBJECT_C, NONSKIN_OBJECT_FOLDS
from training.nonskin_figures import CROSSFIT_DECISIONS

log = logging.getLogger("training.calibrate")

NONSKIN_SETS = ("everyday", "made")  # what the check must call an object
LESION_SETS = ("val", "hard_val", "shifted_val")  # what it must never call one


def photo_groups(names, set_name: str) -> list[str]:
    """A fold group per source photo: 'opencv-doc:apple.jpg+crop+skin cast' -> its photo, 'lesion12.blur' -> lesion12."""
    cut = "+" if set_name in NONSKIN_SETS else "."
    return [f"{set_name}:{str(n).split(cut)[0]}" for n in names]


def lesion_names(kinds: list) -> list[str]:
    """The source photo of each item of a changed lesion set, from its kinds in order ('lesion3' for the 4th of a kind)."""
    seen: dict = {}
    out = []
    for kind in kinds:
        out.append(f"lesion{seen.get(kind, 0)}")
        seen[kind] = seen.get(kind, 0) + 1
    return out


def inputs(signals: dict) -> np.ndarray:
    """The classifier's input: the model's own pooled features, then the ImageNet branch's."""
    return np.hstack([signals[FEATURES], signals[IMAGENET]]).astype(np.float64)


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=NONSKIN_OBJECT_C, class_weight="balanced",
                                                              max_iter=3000))


def folded_weights(model) -> tuple[np.ndarray, float]:
    """(weights, bias) on raw inputs: the scaler folded into the regression, so the service needs numpy alone."""
    scaler, regression = model[0], model[-1]
    w = regression.coef_[0] / scaler.scale_
    return w, float(regression.intercept_[0] - w @ scaler.mean_)


def fit_object_check(sets: dict, names: dict) -> tuple[dict, dict]:
    """({stored arrays}, {the card's threshold and cross-fitted figures}) from ``sets`` (signals by set name:
    ``NONSKIN_SETS`` and ``LESION_SETS``) and ``names`` (each set's item names, for the folds). Each fitting
    set's signals get its cross-fitted decisions (``CROSSFIT_DECISIONS``), so that its figures are honest."""
    from sklearn.model_selection import GroupKFold

    order = [n for n in NONSKIN_SETS + LESION_SETS if n in sets]
    x = np.vstack([inputs(sets[n]) for n in order])
    y = np.concatenate([np.full(len(sets[n][FEATURES]), n in NONSKIN_SETS) for n in order])
    which = np.concatenate([[n] * len(sets[n][FEATURES]) for n in order])
    _, groups = np.unique(sum((photo_groups(names[n], n) for n in order), []), return_inverse=True)
    crossed = np.zeros(len(y))
    for train, held in GroupKFold(NONSKIN_OBJECT_FOLDS).split(x, y, groups):
        crossed[held] = _classifier().fit(x[train], y[train]).decision_function(x[held])
    threshold = float(crossed[~y].max())
    for n in order:
        sets[n][CROSSFIT_DECISIONS] = crossed[which == n]
    weights, bias = folded_weights(_classifier().fit(x, y))
    figures = {f"object_crossfit_{n}_beyond": int((crossed[which == n] > threshold).sum()) for n in order}
    figures.update({f"object_crossfit_{n}_images": int((which == n).sum()) for n in order})
    card = {"object_threshold": threshold, "object_check": {
        "method": (f"logistic regression (C={NONSKIN_OBJECT_C}, balanced, standardised) on the model's own and the "
                   f"ImageNet branch's pooled features: {' + '.join(NONSKIN_SETS)} against validation lesions "
                   f"({', '.join(LESION_SETS)}); threshold at the highest of the validation lesions' decisions, "
                   f"cross-fitted over {NONSKIN_OBJECT_FOLDS} folds of whole photos"),
        **figures}}
    return {OBJECT_WEIGHTS: weights.astype(np.float32), OBJECT_BIAS: np.float64(bias)}, card


REPORT_SETS = ("test", "hard_test", "shifted_test")  # measured with the new check, never fitted on


def add_to_run(run_dir: Path, data_dir: Path, cache: str) -> dict:
    """Fit the object check for an exported run and store it: ``ood_stats.npz`` (the classifier; its sha256 in
    the card) and the card's ``ood`` (threshold, figures, and the rates of the whole rule measured again on
    the same sets as before). Every other statistic and threshold stays."""
    from server.model.card import ModelCard
    from server.model.files import CARD_FILENAME, file_sha256
    from server.model.nonskin_screen import load_nonskin
    from server.model.predictor import Predictor
    from training.export import MODEL_FILENAME
    from training.nonskin import SHIFTED_LESIONS
    from training.nonskin_figures import corpus_description, measure
    from training.nonskin_views import all_views

    predictor = Predictor.from_path(run_dir / MODEL_FILENAME, tta="off", imagenet=True)
    views = all_views(predictor, data_dir, run_dir / "split.csv", NONSKIN_SETS + LESION_SETS + REPORT_SETS, cache)
    sets = {n: dict(v[0]) for n, v in views.items()}
    arrays, ood = fit_object_check(sets, {n: [i for i, _ in v[1]] for n, v in views.items()})
    card_path = run_dir / CARD_FILENAME
    document = json.loads(card_path.read_text())
    npz = run_dir / document["ood"]["file"]
    with np.load(npz) as f:
        stored = {k: f[k] for k in f.files}
    np.savez_compressed(npz, **{**stored, **arrays})
    document["ood"] = {**document["ood"], **ood, "sha256": file_sha256(npz)}
    check = load_nonskin(ModelCard.from_dict(document), run_dir)
    kinds = {n: [k for _, k in v[1]] for n, v in views.items()}
    items = {n: [(name, kind, None) for name, kind in v[1]] for n, v in views.items()}
    figures = measure(check, sets, kinds, items["everyday"], items["made"])
    document["ood"] = {**document["ood"], **figures, "corpus": corpus_description(SHIFTED_LESIONS), "rule": (
        "refused (422) when any check is beyond its refusal level, or when the ImageNet branch ran and the object "
        "check finds an everyday object (decision > object_threshold); unusual (200, uncertain, with a warning) when "
        "any check is beyond its unusual level (score = the largest ratio > 1); else usual")}
    ModelCard.from_dict(document).write(card_path)
    return {**ood, **figures}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--cache", default="/tmp/nonskin-views", help="where the model's views are cached ('off': nowhere)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ood = add_to_run(args.run_dir, args.data_dir, args.cache)
    print(json.dumps({k: v for k, v in ood.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
