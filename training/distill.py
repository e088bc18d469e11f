"""The student's loss: copy the fold ensemble's softened outputs, and still learn the labels.

Five fold models averaged rank lesions better than any one of them, but cost five forward
passes. A single MobileNetV2 trained to match their averaged outputs keeps much of that gain
at one pass (Hinton et al. 2015; Furlanello et al. 2018; Noothout et al. 2022, where an
ensemble of one architecture distilled into one network matched the ensemble).

The loss per image is ``(1 - alpha) * CE(label, p) + alpha * T^2 * KL(q_T || p_T)``: ``q_T`` is
the mean of the members' softmax at temperature ``T``, ``p_T`` the student's. ``T^2`` keeps the
soft term's gradients on the scale of the hard one's (Hinton et al.). Class loss weights apply
to both terms through the sample weight, as they do to the label loss alone.

The targets travel with the labels: ``y_true`` is ``[one-hot label | q_T]``, 2k wide, so the
augmented ``tf.data`` stream and Keras's ``fit`` need no other change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEACHER_FILE = "teacher.npz"


def soft_targets(member_logits: np.ndarray, temperature: float) -> np.ndarray:
    """(members, n, k) logits -> (n, k) mean of the members' softmax at ``temperature``.

    Averaging probabilities, not logits, is what the ensemble the student copies would answer.
    """
    z = np.asarray(member_logits, np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p.mean(axis=0).astype(np.float32)


def load_teacher(path: Path, image_ids, temperature: float) -> np.ndarray:
    """The soft targets for ``image_ids`` (the run's training split, in its order) from ``teacher.npz``.

    Refuses a teacher made on another split: a row out of place would teach one lesion another's answer.
    """
    with np.load(path, allow_pickle=False) as teacher:
        ids = [str(i) for i in teacher["image_ids"]]
        members = teacher["members"]
    index = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise ValueError(f"{path} has no soft targets for {len(missing)} training images, e.g. {missing[0]}: "
                         "it was made on another split")
    rows = np.array([index[i] for i in image_ids])
    return soft_targets(members[:, rows], temperature)


def distillation_loss(num_classes: int, alpha: float, temperature: float):
    """A Keras loss for ``y_true = [one-hot | q_T]`` and softmax outputs ``y_pred``."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="training")
    def distillation(y_true, y_pred):
        label, teacher = y_true[..., :num_classes], y_true[..., num_classes:]
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        hard = -ops.sum(label * log_p, axis=-1)
        # The student's probabilities at temperature T: softmax(log p / T) = softmax(z / T).
        log_p_t = ops.log_softmax(log_p / temperature, axis=-1)
        soft = ops.sum(teacher * (ops.log(ops.clip(teacher, 1e-7, 1.0)) - log_p_t), axis=-1)
        return (1.0 - alpha) * hard + alpha * temperature ** 2 * soft

    return distillation


def label_accuracy(num_classes: int):
    """Accuracy against the hard label part of ``y_true`` (Keras's own would read the soft part too)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="training")
    def accuracy(y_true, y_pred):
        return ops.cast(ops.argmax(y_true[..., :num_classes], -1) == ops.argmax(y_pred, -1), "float32")

    return accuracy


def student_recipe(cfg, train_image_ids) -> dict:
    """Phase 2's loss, metrics and per-image soft targets for a student run (``cfg.distill_teacher`` set)."""
    from server.lesions import CLASS_CODES

    k = len(CLASS_CODES)
    return {"loss": distillation_loss(k, cfg.distill_alpha, cfg.distill_temperature),
            "metrics": (label_accuracy(k),),
            "soft_targets": load_teacher(Path(cfg.distill_teacher), list(train_image_ids), cfg.distill_temperature)}
