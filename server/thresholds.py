"""Every threshold and target the service and the trainer decide with, named once.

The model card records the values a trained model was given (``thresholds``, ``ood``);
the constants here are the targets those values are chosen for and the defaults used
when a card has none. ``training`` imports them from here, never the other way round.
"""

from __future__ import annotations

import numpy as np

# The malignant flag's operating point is the highest threshold on P(malignant) that
# still catches this share of the malignant validation lesions.
MALIGNANT_TARGET_SENSITIVITY = 0.90
# "Uncertain" starts below the lowest calibrated top probability whose answers are right
# at least this often on validation.
UNCERTAIN_TARGET_ACCURACY = 0.90
# The differential: the smallest set of classes that holds the true class this often
# (split conformal prediction, score 1 - p(class), calibrated on validation; ``training.differential``).
DIFFERENTIAL_TARGET_COVERAGE = 0.90
# Rare classes (17 dermatofibromas, 21 vascular lesions on validation) can sit well under the
# overall coverage, so each class also gets its own, class-conditional threshold at a floor of
# coverage: the highest of these floors whose validation sets stay within the mean size below.
# A set of two classes on average is still a short list a clinician can act on; past that the
# differential stops narrowing anything down.
DIFFERENTIAL_CLASS_FLOORS = (0.90, 0.88, 0.85, 0.80)
DIFFERENTIAL_MAX_MEAN_SIZE = 1.85
# Without conformal thresholds (a card from before them), or for a photo unlike the training
# ones (where the measured coverage does not hold), the differential is the leading classes:
# the top two, and the third when it has at least this probability.
LEADING_MIN = 0.05
# The uncertain threshold for a card that has none (an older card, or no validated choice).
DEFAULT_UNCERTAIN_BELOW = 0.5
# The non-skin rule: each check divides its distance by its own threshold (a floor check its
# floor by the value), the score is the largest ratio, and a score above this makes the
# image *unusual*: far from the training images, screened with a warning and marked uncertain.
NONSKIN_UNUSUAL_ABOVE = 1.0
# Each check also has a refusal level, further out (``training.nonskin`` fits it beyond the
# validation lesions, plain, made harder and shifted as other clinics photograph them); the
# refusal score is the largest ratio to those levels, and above this the image is refused
# (422, no diagnosis): a made picture or a photo far beyond any lesion. A card without
# refusal levels refuses every unusual image, as cards did before there were two answers.
NONSKIN_REFUSE_ABOVE = 1.0
# An unusual image is refused, too, when the ImageNet branch names what it shows: its top
# class (not one that training lesions get) has at least this probability, and the classes
# lesions get (``ImagenetLabels.lesion_like``: tick, velvet, Petri dish...) together have at
# most the second. A lesion photographed another way keeps some of its lesion-like
# probability (under 1% for about 1 in 100 shifted validation lesions); a cat, a coffee cup
# or a rocket has none. The top class's probability alone names objects in 3% of shifted
# validation lesions (a round field reads as a "gong" or a "bubble"), too often to refuse on.
NONSKIN_NAMED_MIN_PROBABILITY = 0.25
NONSKIN_NAMED_MAX_LESION_LIKE = 0.01
# A card with an object check (``server/model/nonskin_imagenet.py``) refuses on it instead: a linear
# classifier on both networks' pooled features, everyday photos against lesion photos, refuses
# whatever it scores past every validation lesion (plain, made harder, shifted), unusual or not.
# The ImageNet top class could not hold that line: shifted validation lesions reach "harvestman",
# "bubble", "ping-pong ball" with 0.99, and a fruit on a hand gets no confident class. Fitted
# (``training/nonskin_object.py``) with this L2 strength (scikit-learn's C), cross-fitted over this many
# folds of whole photos, its threshold at the highest cross-fitted decision of a validation lesion. Chosen on
# the cross-fitted everyday share at that threshold (the older rule beside it): both networks' features
# beat either alone (592 of 603 against 572 for ImageNet's or the model's own), and C 0.01 beat 0.001 (588).
# Adding 1,500 training lesions and 150 of them shifted lowered the threshold (1.44 -> 0.47) for 3 more
# everyday photos, and refused more test lesions when measured afterwards: not taken.
NONSKIN_OBJECT_C = 0.01
NONSKIN_OBJECT_FOLDS = 5
# Served in int8, the non-skin check is re-run in float32 for any picture int8 places anywhere
# near a non-skin level: int8 moves the model's own feature distances by a few percent (shipped
# model, validation lesions: int8/float32 0.92 to 1.00, 5th to 95th percentile; an everyday photo
# 0.91), so a picture just beyond a refusal level could come back merely unusual. A picture is
# screened again in float32, and float32's answer kept, when int8 finds it unusual or refused or any
# ratio above ``1 - INT8_NONSKIN_MARGIN``; the ImageNet gate opens that much earlier in int8, so the
# branch runs on every picture float32 would run it on. About 1 lesion photo in 20 pays the float32 pass
# (73 of 1,432 validation photos).
INT8_NONSKIN_MARGIN = 0.15
# Served in int8, a close call is decided in float32 too (``server/model/second_look.py``): a picture
# whose calibrated int8 answer lies within this of the top-two tie, the malignant flag's threshold (or,
# without a differential, the uncertain threshold), or with a class's probability within a factor
# exp(INT8_LIST_LOG_MARGIN) of the minimum that lists it in the differential. Simulated on validation:
# 35% of photos take the float32 pass, and the top class then matches float32's for 99.4% of them, the
# list for 99.1% (int8 alone: 97.0% and 89.3%).
INT8_DECISION_MARGIN = 0.05
INT8_LIST_LOG_MARGIN = 0.2
# Before a host serves int8 by default, the int8 graphs answer a reference batch of validation photos
# on its CPU (``server/model/int8_check.py``) and must stay this close to float32's stored answers:
# at most these shares of photos with another top class or another malignant flag, at most this mean
# change of a (calibrated) class probability, and the ImageNet branch's pooled features at most this
# far from float32's (mean relative L2 gap). Measured on the shipped model's 48 reference photos
# (``bench/int8_other_cpus.py``), U8S8 graphs: natively with VNNI (they met their bar) top class 2.1%,
# flag 0%, mean change 0.0074, feature gap 0.097; on an emulated AVX2 CPU (qemu Haswell, where the
# same graphs lost 0.072 of balanced accuracy) 14.6%, 10.4%, 0.0341 and 0.563. And int8, counting the
# float32 pass its close calls take, must run at least this many times as fast as float32 at the
# worker's thread count, or its small accuracy cost buys nothing.
INT8_CHECK_MAX_TOP_CLASS_CHANGES = 0.10
INT8_CHECK_MAX_FLAG_CHANGES = 0.0625
INT8_CHECK_MAX_MEAN_CHANGE = 0.015
INT8_CHECK_MAX_FEATURE_GAP = 0.25
INT8_CHECK_MIN_SPEEDUP = 1.1
# The three answers of the non-skin check.
NONSKIN_USUAL, NONSKIN_UNUSUAL, NONSKIN_REFUSED = "usual", "unusual", "refused"


# A refusal names what the image seemed to show only when the ImageNet classifier gives
# its top class at least this probability (a cat photo: 0.5-0.7; a flat colour: < 0.1).
LOOKS_LIKE_MIN_PROBABILITY = 0.25
# Each distance check's threshold (where "unusual" starts) is this percentile of the
# validation lesions' distances, the lowest of the candidates that keeps the combined
# unusual shares within the targets below (validation lesions, and validation lesions made
# harder: darker, brighter, blurred, rotated, with a ruler or hair, at 150 px). Floors use
# the matching low percentile, ceilings the matching high one.
NONSKIN_PERCENTILE_CANDIDATES = (99.5, 99.6, 99.7, 99.8, 99.9)
NONSKIN_FLOOR_PERCENTILE = 0.1
# Each check's refusal level is this percentile of its ratios over the validation lesions,
# plain, made harder and shifted as other clinics photograph them (``training/nonskin_corpus.py``),
# and never below its unusual level: 100, the furthest of them, so that no validation lesion,
# however photographed, is refused by a distance, a floor or a ceiling.
NONSKIN_REFUSE_PERCENTILE = 100.0
# The ImageNet check runs only for images whose own features lie beyond this percentile of
# the validation lesions' distances: the three quarters of lesions that look most typical
# skip it and its cost (a second MobileNetV2 pass), and no validation figure changed.
NONSKIN_IMAGENET_GATE_PERCENTILE = 75
NONSKIN_MAX_UNUSUAL = 0.01
NONSKIN_MAX_UNUSUAL_HARD = 0.02


def nonskin_answer(score, refusal_score, named, everyday_object=False):
    """The one non-skin rule: ``NONSKIN_REFUSED``, ``NONSKIN_UNUSUAL`` or ``NONSKIN_USUAL`` (arrays: element-wise).

    Refused only on evidence that the image is not skin: beyond a refusal level (a made
    picture, or a photo further out than any validation lesion however it was photographed),
    found to be an ``everyday_object`` by the object check (however usual its colour and texture),
    or (older cards) unusual and ``named`` as an everyday object by the ImageNet branch. An image that is
    merely unusual (another clinic's lighting, colour or framing) is screened with a warning:
    refusing a real melanoma is the worst answer this product can give.
    """
    unusual = np.asarray(score) > NONSKIN_UNUSUAL_ABOVE
    refused = ((np.asarray(refusal_score) > NONSKIN_REFUSE_ABOVE) | (unusual & np.asarray(named, bool))
               | np.asarray(everyday_object, bool))
    answer = np.where(refused, NONSKIN_REFUSED, np.where(unusual, NONSKIN_UNUSUAL, NONSKIN_USUAL))
    return str(answer) if answer.ndim == 0 else answer


# The product's quality bar: what a model must reach on the held-out test split before the
# service may call it good enough (README, "The shipped model"). (card figure, words, minimum);
# ``server.reports.quality`` reads the figures from the card and says, in words, which are met.
QUALITY_BAR = (
    ("balanced_accuracy", "Balanced accuracy", 0.80),
    ("accuracy", "Accuracy", 0.85),
    ("melanoma_recall", "Melanoma recall", 0.80),
    ("malignant_auc", "Malignant AUC", 0.95),
    ("lowest_class_recall", "Lowest class recall", 0.60),
)


# Per-subgroup figures (``training.subgroups``, the card's ``subgroups``): a subgroup is
# flagged when its melanoma recall on the test split is more than this below the whole
# split's (0.10 = ten percentage points).
MELANOMA_RECALL_FLAG_DROP = 0.10
# A body site gets its own row only with at least this many test images.
SUBGROUP_MIN_SITE_IMAGES = 30
# A subgroup figure gets a bootstrap interval only when its denominator holds at least this
# many resampled units (lesions): with 3 melanomas all found, every resample finds every
# melanoma too, and a percentile interval of "100 to 100%" would claim a certainty it lacks.
SUBGROUP_MIN_CASES_FOR_INTERVAL = 10
