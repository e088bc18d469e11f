"""The patient context measured out of fold: nested choices, and ISIC's coarse site encoding."""

from __future__ import annotations

import numpy as np

from server.lesions import CLASS_CODES
from server.patient import SITE_SLICE, SITES, PatientContext
from training.context_folds import coarse, nested_fold


def test_coarse_sites_read_each_site_as_its_groups_mix():
    face = PatientContext.parse(site="face").model_vector()[None]
    head_neck = PatientContext.parse(site="head/neck").model_vector()[None]
    assert np.allclose(coarse(face), head_neck)  # the face becomes ISIC's head/neck
    hand = coarse(PatientContext.parse(site="hand").model_vector()[None])[0, SITE_SLICE]
    assert {SITES[i] for i in np.flatnonzero(hand)} == {"upper extremity", "hand"}
    assert coarse(face)[0, :SITE_SLICE.start].tolist() == face[0, :SITE_SLICE.start].tolist()  # age, sex untouched


def test_a_context_that_tells_the_class_helps_the_held_out_fold_with_every_choice_made_outside_it():
    rng = np.random.default_rng(0)
    n, k = 700, len(CLASS_CODES)
    labels = rng.integers(0, k, n)
    sites = np.array([SITES[c] for c in labels])  # each class on its own site: the context alone tells the class
    context = np.stack([PatientContext.parse(site=s).model_vector() for s in sites])
    probs = np.full((n, k), 1.0 / k) + rng.uniform(0, 0.05, (n, k))  # an image model that knows nothing
    probs /= probs.sum(1, keepdims=True)
    fold_of = rng.integers(0, 3, n)
    base, with_context, chosen = nested_fold(0, fold_of, probs, context, labels, seed=1)
    held = labels[fold_of == 0]
    assert base.shape == with_context.shape == ((fold_of == 0).sum(), k)
    assert chosen["strength"] > 0
    assert (with_context.argmax(1) == held).mean() > 0.9 > (base.argmax(1) == held).mean()
