"""Phase 3: the patient's age, sex and lesion site join the image features in the head.

A dermatologist reads a new pigmented lesion on a 70-year-old man's back differently from
one on a child's palm; HAM10000 records all three for almost every image.

How they join. If the context and the image are independent given the class, Bayes says
``log p(c | image, context) = log p(c | image) + log p(context | c) / p(context) + const``.
The second term is learnt from the metadata alone: a logistic regression on the training
split's contexts (``server.patient``'s encoding), fitted on copies with *metadata dropout*
(whole contexts and single fields zeroed at random) so that a partly given context is an
ordinary input. Its logits less their value for an empty context are linear, ``W m``, and
enter the graph as extra kernel rows of the softmax layer, fed by a ``patient`` input
concatenated to the last hidden features. With nothing given those rows add exactly zero:
the model without context *is* the image-only model. The strength ``lambda * W`` is chosen
on validation (``lambda = 1`` is the Bayes weight).

Why not a head retrained on pooled features plus context: tried first (four augmented
views per training image, the backbone frozen). The head fitted the training features the
backbone had already learnt; validation balanced accuracy fell from 0.782 to 0.75-0.77
over 20 epochs, and the context added at most 0.004 (``phase3_fusion_head.json`` in the
shipped run). Learning from the metadata alone does not see those features at all.
"""

from __future__ import annotations

import logging

import numpy as np

from server.patient import (AGE_SLICE, GENERAL_SITES, HAM10000_SITE_COUNTS, MODEL_VECTOR_SIZE, SEX_SLICE, SITE_SLICE,
                            SITES, model_vectors)

log = logging.getLogger("training")

PATIENT_INPUT = "patient"
CONCAT_LAYER = "head_concat"
P_DROP_ALL = 0.5
P_DROP_FIELD = 0.25
DROPOUT_COPIES = 4
REGULARISATION_C = 1.0  # scikit-learn's default: fixed, not tuned on validation
STRENGTH_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
MIN_GAIN = 0.01  # validation balanced accuracy the context must add for the model to read it
# ISIC's general sites as groups of HAM10000's (its two extremity words also cover hands and feet):
# the coarse encoding phase 3 can learn the site in (``TrainConfig.context_sites``).
GENERAL_SITE_GROUPS = {**GENERAL_SITES, "upper extremity": ("upper extremity", "hand"),
                       "lower extremity": ("lower extremity", "foot")}


def general_site_mix() -> np.ndarray:
    """(sites, sites): row i is site i's general group, its sites mixed in HAM10000's proportions."""
    mix = np.zeros((len(SITES), len(SITES)), np.float32)
    for covered in GENERAL_SITE_GROUPS.values():
        counts = np.array([HAM10000_SITE_COUNTS[s] for s in covered], np.float64)
        rows = [SITES.index(s) for s in covered]
        mix[np.ix_(rows, rows)] = counts / counts.sum()
    return mix


def coarsened(vectors: np.ndarray) -> np.ndarray:
    """Patient vectors with each site read as its general group's mix (``general_site_mix``)."""
    out = vectors.copy()
    out[:, SITE_SLICE] = vectors[:, SITE_SLICE] @ general_site_mix()
    return out


def served_weights(weights: np.ndarray, sites: str) -> np.ndarray:
    """Context weights learnt on ``sites``' encoding, as rows the served model's own vector feeds.

    Learnt on coarsened vectors, the site rows become ``mix @ W``: then ``v @ served == coarsened(v) @ W``
    for every vector the service makes, so the service needs no second encoding."""
    if sites == "ham10000":
        return weights
    out = weights.copy()
    out[SITE_SLICE] = general_site_mix() @ weights[SITE_SLICE]
    return out


def patient_vectors(df) -> np.ndarray:
    """HAM10000 metadata rows (``age``, ``sex``, ``localization``) -> the model's patient input."""
    return model_vectors(df["age"].tolist(), df["sex"].tolist(), df["localization"].tolist())


def dropped(vectors: np.ndarray, rng: np.random.Generator, p_all: float = P_DROP_ALL,
            p_field: float = P_DROP_FIELD) -> np.ndarray:
    """Metadata dropout: a copy with whole contexts and single fields zeroed ("not given") at random."""
    out = vectors.copy()
    out[rng.random(len(out)) < p_all] = 0.0
    for cols in (AGE_SLICE, SEX_SLICE, SITE_SLICE):
        out[rng.random(len(out)) < p_field, cols] = 0.0
    return out


def context_weights(context: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                    copies: int = DROPOUT_COPIES, c: float = REGULARISATION_C) -> np.ndarray:
    """(``MODEL_VECTOR_SIZE``, classes) log-likelihood-ratio weights ``W``: how each given value
    shifts each class's log-odds, learnt from the contexts alone (the originals plus
    ``copies`` with metadata dropout)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = np.concatenate([context] + [dropped(context, rng) for _ in range(copies)])
    y = np.tile(labels, copies + 1)
    fit = LogisticRegression(C=c, max_iter=5000).fit(x, y)
    weights = np.zeros((context.shape[1], num_classes), np.float32)
    # A two-class fit has one coefficient row (class 1 against class 0): split it evenly.
    coef = np.concatenate([-fit.coef_ / 2, fit.coef_ / 2]) if len(fit.classes_) == 2 else fit.coef_
    weights[:, fit.classes_] = coef.T  # a class absent from training gets no shift
    return weights


def with_context(probs: np.ndarray, context: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """softmax(log p + context @ weights): what the widened graph computes, in numpy."""
    from training.posthoc import shifted

    return shifted(probs, context @ weights)


def choose_strength(val_probs: np.ndarray, val_context: np.ndarray, y_val: np.ndarray, weights: np.ndarray,
                    grid=STRENGTH_GRID) -> tuple[float, dict[float, float]]:
    """The strength with the best validation balanced accuracy with context (the smallest on a tie)."""
    from sklearn.metrics import balanced_accuracy_score

    scores = {float(s): float(balanced_accuracy_score(y_val, with_context(val_probs, val_context, s * weights).argmax(1)))
              for s in grid}
    best = max(scores.values())
    return min(s for s, v in scores.items() if v == best), scores


def with_patient_input(model, weights: np.ndarray):
    """The classifier widened with a ``patient`` input concatenated to the softmax layer's input.

    The softmax layer's kernel gains ``weights`` as its last rows; every other weight is
    shared with ``model``, so with an all-zero context the two give the same probabilities.
    """
    import keras

    patient = keras.Input((MODEL_VECTOR_SIZE,), name=PATIENT_INPUT)
    old_out = model.get_layer("head_out")
    x = keras.layers.Concatenate(name=CONCAT_LAYER)([old_out.input, patient])
    out_layer = keras.layers.Dense(old_out.units, activation="softmax", name="head_out")
    outputs = out_layer(x)
    widened = keras.Model([model.inputs[0], patient], outputs, name=model.name)
    kernel, bias = old_out.get_weights()
    out_layer.set_weights([np.concatenate([kernel, weights.astype(kernel.dtype)]), bias])
    return widened


def phase3(model, val_probs: np.ndarray, prepared, *, seed: int, min_gain: float = MIN_GAIN, sites: str = "ham10000"):
    """Fit the context weights, choose their strength on validation and apply the shipping rule.

    ``val_probs``: ``model``'s validation probabilities (logit adjustment included); ``sites``:
    the site encoding the weights are learnt in (``TrainConfig.context_sites``). Returns (the
    model to ship: widened when the context adds at least ``min_gain`` validation balanced
    accuracy, else ``model`` unchanged, and the record the card keeps).
    """
    from sklearn.metrics import balanced_accuracy_score

    encode = coarsened if sites == "general" else (lambda vectors: vectors)
    context = {s: encode(patient_vectors(prepared.df.loc[prepared.parts[s]])) for s in ("train", "val")}
    weights = context_weights(context["train"], prepared.y["train"], val_probs.shape[1], seed)
    strength, scores = choose_strength(val_probs, context["val"], prepared.y["val"], weights)
    image_only = float(balanced_accuracy_score(prepared.y["val"], val_probs.argmax(1)))
    gain = scores[strength] - image_only
    ship = strength > 0 and gain >= min_gain
    record = {"shipped": "image + patient context" if ship else "image only",
              "method": "softmax(log p(c | image) + lambda * W m): W from a logistic regression on the training "
                        "split's contexts alone, with metadata dropout; lambda chosen on validation",
              "rule": f"read the context only if it adds at least {min_gain} validation balanced accuracy",
              "strength": strength, "val_balanced_accuracy_by_strength": {str(k): round(v, 4) for k, v in scores.items()},
              "val_balanced_accuracy_image_only": round(image_only, 4), "val_gain": round(gain, 4),
              "metadata_dropout": {"p_all": P_DROP_ALL, "p_field": P_DROP_FIELD, "copies": DROPOUT_COPIES},
              "sites": "ISIC's general site groups" if sites == "general" else "HAM10000's 14 sites"}
    log.info("phase 3: %s (validation balanced accuracy %.4f image only, %.4f with context at strength %g)",
             record["shipped"], image_only, scores[strength], strength)
    return (with_patient_input(model, strength * served_weights(weights, sites)) if ship else model), record
