"""The patient context measured out of fold: nested choices, and ISIC's coarse site encoding."""

from __future__ import annotations

import numpy as np

from server.lesions import CLASS_CODES
from server.patient import GENERAL_SITES, SITE_SLICE, SITES, PatientContext
from training.context_folds import ENCODINGS, context_choice, nested_fold
from training.patient_context import coarsened, served_weights


def test_coarse_sites_read_each_site_as_its_groups_mix():
    face = PatientContext.parse(site="face").model_vector()[None]
    head_neck = PatientContext.parse(site="head/neck").model_vector()[None]
    assert np.allclose(coarsened(face), head_neck)  # the face becomes ISIC's head/neck
    hand = coarsened(PatientContext.parse(site="hand").model_vector()[None])[0, SITE_SLICE]
    assert {SITES[i] for i in np.flatnonzero(hand)} == {"upper extremity", "hand"}
    assert coarsened(face)[0, :SITE_SLICE.start].tolist() == face[0, :SITE_SLICE.start].tolist()  # age, sex untouched


def test_weights_learnt_on_general_sites_serve_the_services_own_vectors_unchanged():
    """The student's context can be learnt on ISIC's groups and still read the vector the service makes."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(SITE_SLICE.stop, len(CLASS_CODES))).astype(np.float32)
    given = [PatientContext.parse(age=70, sex="male", site=s) for s in (*SITES, *GENERAL_SITES)]
    vectors = np.stack([p.model_vector() for p in given])
    assert np.allclose(vectors @ served_weights(weights, "general"), coarsened(vectors) @ weights, atol=1e-5)
    assert served_weights(weights, "ham10000") is weights
    face, scalp = (PatientContext.parse(site=s).model_vector() @ served_weights(weights, "general") for s in ("face", "scalp"))
    assert np.allclose(face, scalp, atol=1e-5)  # one group, one reading


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


def measured(ham_gain: float, ham_never_lower: bool, general_gain: float, general_never_lower: bool) -> dict:
    """``measure``'s result reduced to what ``context_choice`` reads."""
    def one(gain, never_lower):
        return {"pooled": {"change_95": {"balanced_accuracy": [gain, gain - 0.01, gain + 0.01]}},
                "melanoma_recall_never_lower": never_lower}
    return {ENCODINGS["ham10000"]: one(ham_gain, ham_never_lower), ENCODINGS["general"]: one(general_gain, general_never_lower)}


def test_the_student_learns_isic_groups_unless_hams_sites_add_clearly_more():
    assert context_choice(measured(0.030, True, 0.025, True))["context_sites"] == "general"
    assert context_choice(measured(0.040, True, 0.025, True))["context_sites"] == "ham10000"
    assert context_choice(measured(0.040, False, 0.010, True))["context_sites"] == "general"  # HAM's cost melanomas


def test_no_context_when_every_encoding_costs_melanoma_recall_in_a_fold_or_adds_nothing():
    for result in (measured(0.05, False, 0.04, False), measured(0.0, True, -0.01, True)):
        choice = context_choice(result)
        assert choice["patient_context"] is False and "melanoma recall" in choice["why"]
    only_ham = context_choice(measured(0.02, True, 0.0, True))  # the groups add nothing: HAM10000's sites
    assert only_ham["patient_context"] is True and only_ham["context_sites"] == "ham10000"
