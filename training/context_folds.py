"""Does the patient context help on unseen folds, and never cost melanoma recall? Measured out of fold.

    python -m training.context_folds --folds-dir saved_models/folds --data-dir ../shared/data/ham10000

The shipped context gained +0.059 balanced accuracy internally and nothing on other clinics'
photos, where it cost melanoma recall (0.661 against 0.708): part of its gain came from how
HAM10000's two clinics recorded sites and ages. One validation split cannot tell a real gain
from that; the folds' out-of-fold predictions (about 7,000) can, paired, image by image.

For each fold k, as phase 3 does it (``training.patient_context``) but nested: the context
weights are learnt from the metadata of the images outside fold k, logit adjustment's tau and
the context's strength are chosen on the other folds' out-of-fold predictions, and fold k's own
predictions are then scored with and without the context. Two site encodings are compared:
HAM10000's 14 sites, and ISIC's coarse general sites (each site read as its group's mix), which
other clinics record and which may carry less of HAM10000's own habits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from server.lesions import CLASS_CODES
from training.compare import lesion_resamples
from training.folds import FOLDS_CSV, softmax
from training.patient_context import choose_strength, coarsened, context_weights, patient_vectors, with_context
from training.posthoc import adjust, choose_tau, class_prior
from training.teacher import labels_of, member_logits, out_of_fold

MEL = CLASS_CODES.index("mel")
# measure()'s names for TrainConfig.context_sites' values.
ENCODINGS = {"ham10000": "HAM10000 sites", "general": "ISIC general sites"}
# How much more pooled out-of-fold balanced accuracy HAM10000's own sites must add than ISIC's
# groups for the student to learn them: the groups are what other clinics record.
SITES_MARGIN = 0.01


def figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    pred = probs.argmax(1)
    return {"balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "melanoma_recall": float((pred[labels == MEL] == MEL).mean())}


def nested_fold(k: int, fold_of: np.ndarray, probs: np.ndarray, context: np.ndarray, labels: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fold ``k``'s probabilities without and with the context, every choice made outside fold ``k``."""
    inside, outside = fold_of == k, fold_of != k
    prior = class_prior(labels[outside], len(CLASS_CODES))
    tau, _ = choose_tau(probs[outside], labels[outside], prior)
    weights = context_weights(context[outside], labels[outside], len(CLASS_CODES), seed)
    strength, _ = choose_strength(adjust(probs[outside], prior, tau), context[outside], labels[outside], weights)
    base = adjust(probs[inside], prior, tau)
    return base, with_context(base, context[inside], strength * weights), {"tau": tau, "strength": strength}


def measure(folds_dir: Path, data_dir: Path, resamples: int = 200, seed: int = 42) -> dict:
    """Per fold and pooled: balanced accuracy and melanoma recall without and with each site encoding."""
    from training import data as D

    folds = pd.read_csv(folds_dir / FOLDS_CSV)
    meta = D.load_metadata(data_dir).set_index("image_id").loc[folds["image_id"]]
    labels, fold_of = labels_of(folds), folds["fold"].to_numpy()
    members = member_logits(folds_dir, "train")
    if len(members) != fold_of.max() + 1:
        raise FileNotFoundError(f"{folds_dir} holds {len(members)} finished folds of {fold_of.max() + 1}")
    probs = softmax(out_of_fold(members, fold_of))
    fine = patient_vectors(meta)
    result = {}
    for encoding, context in ((ENCODINGS["ham10000"], fine), (ENCODINGS["general"], coarsened(fine))):
        without, withc = np.zeros_like(probs), np.zeros_like(probs)
        per_fold = []
        for k in range(fold_of.max() + 1):
            inside = fold_of == k
            without[inside], withc[inside], chosen = nested_fold(k, fold_of, probs, context, labels, seed)
            a, b = figures(labels[inside], without[inside]), figures(labels[inside], withc[inside])
            per_fold.append({"fold": k, **chosen, **{f"{key}_change": round(b[key] - a[key], 4) for key in a}})
        pooled = {"without": figures(labels, without), "with": figures(labels, withc)}
        draws = []
        for idx in lesion_resamples(folds["lesion_id"].to_numpy(), resamples, seed):
            a, b = figures(labels[idx], without[idx]), figures(labels[idx], withc[idx])
            draws.append([b[key] - a[key] for key in a])
        low, high = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
        pooled["change_95"] = {key: [round(pooled["with"][key] - pooled["without"][key], 4), round(float(lo), 4),
                                     round(float(hi), 4)] for key, lo, hi in zip(pooled["without"], low, high)}
        result[encoding] = {"per_fold": per_fold, "pooled": pooled,
                            "melanoma_recall_never_lower": all(f["melanoma_recall_change"] >= 0 for f in per_fold)}
    return result


def context_choice(result: dict) -> dict:
    """What the chain's student reads (``TrainConfig.patient_context``, ``context_sites``), from ``measure``.

    Issue #33's rule, written before the five folds existed: an encoding qualifies when it
    lowers melanoma recall in no fold and raises pooled balanced accuracy; of two that
    qualify, ISIC's groups unless HAM10000's sites add ``SITES_MARGIN`` more; none: no context.
    """
    gain = {key: result[name]["pooled"]["change_95"]["balanced_accuracy"][0] for key, name in ENCODINGS.items()
            if result[name]["melanoma_recall_never_lower"] and result[name]["pooled"]["change_95"]["balanced_accuracy"][0] > 0}
    if not gain:
        return {"patient_context": False, "context_sites": "ham10000",
                "why": "no site encoding raised balanced accuracy out of fold without lowering melanoma recall in a fold"}
    sites = "general" if "general" in gain and gain.get("ham10000", -1.0) < gain["general"] + SITES_MARGIN else "ham10000"
    return {"patient_context": True, "context_sites": sites,
            "why": f"{ENCODINGS[sites]}: pooled balanced accuracy {gain[sites]:+.4f} out of fold, melanoma recall "
                   f"lower in no fold" + (f" (qualified: {', '.join(ENCODINGS[k] for k in gain)})")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="The patient context's gain, out of fold, per site encoding.")
    p.add_argument("--folds-dir", type=Path, required=True, help="a training.folds run, or saved_models/folds")
    p.add_argument("--data-dir", type=Path, required=True, help="HAM10000 folder (its metadata gives the contexts)")
    p.add_argument("--resamples", type=int, default=200)
    args = p.parse_args(argv)
    try:
        result = measure(args.folds_dir, args.data_dir, args.resamples)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"choice": context_choice(result), "measured": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
