"""The student's distillation: soft targets from the fold members, the loss, and a student run end to end."""

from __future__ import annotations

import numpy as np
import pytest

from server.lesions import CLASS_CODES
from training.distill import distillation_loss, load_teacher, soft_targets

K = len(CLASS_CODES)


def test_soft_targets_average_the_members_probabilities_and_soften_with_temperature():
    members = np.zeros((2, 1, K))
    members[0, 0, 0] = 4.0
    members[1, 0, 1] = 4.0
    q1, q4 = soft_targets(members, 1.0), soft_targets(members, 4.0)
    assert np.allclose(q1.sum(1), 1) and np.allclose(q4.sum(1), 1)
    assert q1[0, 0] == pytest.approx(q1[0, 1])  # two members, each sure of another class: an even split
    assert q4[0, 0] < q1[0, 0]  # a higher temperature spreads the mass


def test_loss_is_the_label_cross_entropy_at_alpha_0_and_zero_soft_term_when_the_student_matches():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, K))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.eye(K)[[0, 3, 4, 5]]
    teacher_t = soft_targets(logits[None], 2.0)  # the student's own softened output
    y_true = np.concatenate([labels, teacher_t], axis=1).astype(np.float32)
    hard = -np.log((labels * p).sum(1))
    only_labels = np.asarray(distillation_loss(K, 0.0, 2.0)(y_true, p.astype(np.float32)))
    assert np.allclose(only_labels, hard, atol=1e-5)
    only_teacher = np.asarray(distillation_loss(K, 1.0, 2.0)(y_true, p.astype(np.float32)))
    assert np.allclose(only_teacher, 0, atol=1e-5)
    wrong = np.concatenate([labels, np.roll(teacher_t, 1, axis=1)], axis=1).astype(np.float32)
    assert (np.asarray(distillation_loss(K, 1.0, 2.0)(wrong, p.astype(np.float32))) > 0.01).all()


def test_a_teacher_made_on_another_split_is_refused(tmp_path):
    path = tmp_path / "teacher.npz"
    np.savez(path, image_ids=np.array(["ISIC_1", "ISIC_2"]), members=np.zeros((5, 2, K), np.float16))
    assert load_teacher(path, ["ISIC_2", "ISIC_1"], 2.0).shape == (2, K)
    with pytest.raises(ValueError, match="another split"):
        load_teacher(path, ["ISIC_1", "ISIC_3"], 2.0)
