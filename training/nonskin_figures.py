"""The non-skin check's figures on the report sets: each picture's answer, refused and unusual shares, by kind and by check."""

from __future__ import annotations

import numpy as np

from server.model.nonskin import FEATURES, IMAGENET, NonSkinCheck
from server.thresholds import NONSKIN_REFUSED, NONSKIN_UNUSUAL
from training.nonskin_shifted import shifted_kinds

IMAGENET_PROBS = "imagenet_probs"  # the branch's class probabilities, beside the signals the checks read
# The object check's cross-fitted decisions, beside the signals of a set it was fitted on: its figures there
# are what a classifier fitted without each picture said about it (``training/nonskin_object.py``).
CROSSFIT_DECISIONS = "object_crossfit_decisions"
# Issue #35's bar, by set: everyday photos refused at least this share; test lesions, plain and shifted as
# other clinics photograph them, refused at most this share. The card records each as ``<set>_true_flag_rate``
# (everyday) or ``<set>_false_flag_rate`` (lesions).
NONSKIN_BAR = {"everyday": 0.98, "test": 0.0, "shifted_test": 0.005}


def answers(check: NonSkinCheck, signals: dict) -> np.ndarray:
    """Per image, the service's answer (usual, unusual, refused) from its precomputed ``signals``."""
    ratios = check.ratios(signals)
    objects = check.object_photos(ratios, signals[FEATURES], signals.get(IMAGENET))
    if check.objects is not None and CROSSFIT_DECISIONS in signals:
        objects = check.imagenet_runs(ratios) & (signals[CROSSFIT_DECISIONS] > check.objects.threshold)
    return check.answers(ratios, signals.get(IMAGENET_PROBS), objects)


def shares(flags_by_answer: np.ndarray) -> dict:
    """{n, refused, unusual} counts of an array of answers."""
    return {"n": int(len(flags_by_answer)), "refused": int((flags_by_answer == NONSKIN_REFUSED).sum()),
            "unusual": int((flags_by_answer == NONSKIN_UNUSUAL).sum())}


def by_kind(kinds, answered) -> dict[str, dict]:
    kinds = np.asarray(kinds)
    return {kind: shares(answered[kinds == kind]) for kind in dict.fromkeys(kinds.tolist())}


def measure(check: NonSkinCheck, sets: dict, kinds: dict, everyday, made) -> dict:
    """The figures of ``check`` on the report sets: refused and unusual shares, by kind and by check."""
    answered = {name: answers(check, sets[name]) for name in
                ("val", "test", "hard_val", "hard_test", "shifted_val", "shifted_test", "everyday", "made")}

    def rate(name, answer):
        return float(np.mean(answered[name] == answer))

    def refused_by_check(name):
        refused = answered[name] == NONSKIN_REFUSED
        factors = {c.name: c.refuse_factor for c in check.checks}
        return {n: int((refused & (r > factors[n])).sum()) for n, r in check.ratios(sets[name]).items()}

    def not_refused(items, name):
        return [item for (item, _, _), a in zip(items, answered[name]) if a != NONSKIN_REFUSED]

    def changed(name):
        """The figures of a set of test lesions the corpus changed, overall and by kind."""
        return {f"{name}_false_flag_rate": rate(name, NONSKIN_REFUSED), f"{name}_unusual_rate": rate(name, NONSKIN_UNUSUAL),
                f"{name}_images": int(len(answered[name])), f"{name}_by_kind": by_kind(kinds[name], answered[name]),
                f"{name}_refused_by_check": refused_by_check(name)}

    every_refused, made_refused = answered["everyday"] == NONSKIN_REFUSED, answered["made"] == NONSKIN_REFUSED
    return {
        "val_false_flag_rate": rate("val", NONSKIN_REFUSED), "val_unusual_rate": rate("val", NONSKIN_UNUSUAL),
        "test_false_flag_rate": rate("test", NONSKIN_REFUSED), "test_unusual_rate": rate("test", NONSKIN_UNUSUAL),
        "test_refused_by_check": refused_by_check("test"),
        "hard_val_false_flag_rate": rate("hard_val", NONSKIN_REFUSED),
        **changed("hard_test"),
        "shifted_val_false_flag_rate": rate("shifted_val", NONSKIN_REFUSED),
        **changed("shifted_test"),
        "everyday_true_flag_rate": float(every_refused.mean()), "everyday_images": int(len(every_refused)),
        "everyday_passed": not_refused(everyday, "everyday"),
        "made_true_flag_rate": float(made_refused.mean()), "made_images": int(len(made_refused)),
        "made_passed": not_refused(made, "made"),
        "made_by_kind": {k: {"n": v["n"], "refused": v["refused"]}
                         for k, v in by_kind([k for _, k, _ in made], answered["made"]).items()},
        "nonskin_true_flag_rate": float(np.concatenate([every_refused, made_refused]).mean()),
        "nonskin_images": int(len(every_refused) + len(made_refused)),
        "counts": {name: shares(answered[name]) for name in ("test", "hard_test", "shifted_test", "everyday", "made")},
    }


def corpus_description(shifted_lesions: int) -> str:
    """The card's words for the named corpus its figures were measured on."""
    return ("training/nonskin_everyday.py: everyday photographs from installed packages (scikit-image, scikit-learn, "
            "matplotlib; Debian's opencv-doc, tuxpaint-stamps-default, plasma-workspace-wallpapers) and lesion-like "
            "versions of the food among them; training/nonskin_corpus.py: made pictures; test lesions made harder "
            f"(darker, brighter, blurred, rotated, ruler, hair, 150 px); {shifted_lesions} test lesions shifted as other "
            f"clinics photograph them, each way ({', '.join(shifted_kinds())})")
