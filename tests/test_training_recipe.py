"""The training recipe's parts, each on its own: class weights, the augmented views, balanced sampling,
post-hoc logit adjustment and the dermatoscope field (the whole trainer runs in test_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training import data as D


def test_class_weights_balance_the_classes():
    labels = np.array([0] * 90 + [1] * 10)
    w = D.class_weights(labels, 2)
    assert w[0] * 90 == pytest.approx(w[1] * 10)
    assert w[0] * 90 + w[1] * 10 == pytest.approx(len(labels))  # the total weight is unchanged


def test_focal_loss_matches_hand_computed_value():
    from training.losses import make_loss

    y_true = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    y_pred = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], np.float32)
    # FL = -(1 - p_t)^gamma * log(p_t), averaged over the batch (alpha = 1, gamma = 2)
    expected = np.mean([-(1 - 0.7) ** 2 * np.log(0.7), -(1 - 0.5) ** 2 * np.log(0.5)])
    got = float(make_loss("focal", gamma=2.0)(y_true, y_pred))
    assert got == pytest.approx(expected, rel=1e-4)
    ce = float(make_loss("crossentropy")(y_true, y_pred))
    assert ce == pytest.approx(np.mean([-np.log(0.7), -np.log(0.5)]), rel=1e-4)


def test_square_root_weights_sit_between_none_and_balanced():
    from training.train import class_loss_weights

    labels = np.array([5] * 90 + [0] * 10)
    balanced, sqrt = class_loss_weights("class_weight", labels), class_loss_weights("sqrt", labels)
    assert balanced[0] / balanced[5] == pytest.approx(9.0)
    assert sqrt[0] / sqrt[5] == pytest.approx(3.0)
    assert sqrt[labels].mean() == pytest.approx(1.0)  # the average sample still weighs 1
    assert (class_loss_weights("sampling", labels) == 1).all() and (class_loss_weights("none", labels) == 1).all()


def test_augmented_views_are_fresh_each_draw_reproducible_and_in_model_range():
    from training.augment import training_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5])
    weights = np.arange(1, 8, dtype=np.float32)

    def first_batches(seed, first_draw=0):
        ds = training_dataset(images, labels, weights, size=32, batch_size=6, seed=seed, num_classes=7,
                              first_draw=first_draw)
        return [tuple(t.numpy() for t in batch) for batch in ds.take(2)]

    (x1, y1, w1), (x2, y2, _) = first_batches(seed=1)
    assert x1.shape == (6, 32, 32, 3) and x1.dtype == np.float32
    assert x1.min() >= -1.0 and x1.max() <= 1.0
    assert y1.shape == (6, 7) and (y1.sum(1) == 1).all()
    assert (w1 == weights[y1.argmax(1)]).all()  # each sample carries its class's weight
    assert sorted(y1.argmax(1)) == sorted(y2.argmax(1)) == list(range(6))  # an epoch shows every image once
    # The same image comes back as another view in the next epoch: augmentation is fresh.
    first = {int(c): x for c, x in zip(y1.argmax(1), x1)}
    second = {int(c): x for c, x in zip(y2.argmax(1), x2)}
    assert all(np.abs(first[c] - second[c]).mean() > 0.01 for c in first)
    again = first_batches(seed=1)[0][0]
    assert np.array_equal(again, x1)  # same seed, same views
    resumed = first_batches(seed=1, first_draw=12)[0][0]
    assert not np.array_equal(np.sort(resumed.ravel()), np.sort(x1.ravel()))  # a resumed run draws new views


def test_balanced_sampling_draws_rare_classes_as_often_as_common_ones():
    from training.augment import training_dataset

    images = np.zeros((100, 16, 16, 3), np.uint8)
    labels = np.array([5] * 95 + [0] * 5)
    ds = training_dataset(images, labels, np.ones(7, np.float32), size=16, batch_size=50, seed=0, num_classes=7,
                          balanced_sampling=True)
    drawn = np.concatenate([y.numpy().argmax(1) for _, y, _ in ds.take(8)])
    share = (drawn == 0).mean()
    assert 0.4 < share < 0.6


def test_logit_adjustment_folded_into_the_bias_equals_the_adjusted_probabilities():
    import keras

    from training.posthoc import adjust, choose_tau, class_prior, fold_into_bias

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head_out")(inputs))
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    prior = class_prior(np.array([0] * 80 + [1] * 15 + [2] * 5), 3)
    before = model.predict(x, verbose=0)
    fold_into_bias(model, prior, 1.0)
    assert np.allclose(model.predict(x, verbose=0), adjust(before, prior, 1.0), atol=1e-5)
    assert (adjust(before, prior, 1.0)[:, 2] > before[:, 2]).all()  # the rarest class gains everywhere

    # A model that always leans to the common class: adjustment recovers the rare one, and tau is chosen for it.
    probs = np.array([[0.6, 0.3, 0.1]] * 3 + [[0.5, 0.2, 0.3]] * 3)
    labels = np.array([0, 0, 0, 2, 2, 2])
    tau, scores = choose_tau(probs, labels, prior)
    assert scores[0.0] == pytest.approx(0.5) and scores[tau] == pytest.approx(1.0) and tau > 0
    assert tau == min(t for t, s in scores.items() if s == 1.0)


def test_the_dermatoscope_field_darkens_corners_only_where_drawn():
    import tensorflow as tf

    from training.augment import dermatoscope_field

    mask = dermatoscope_field(2, 16, tf.constant([True, False]), tf.constant([0.9, 0.9])).numpy()[..., 0]
    assert mask.shape == (2, 16, 16)
    assert mask[0, 0, 0] == 0 and mask[0, 8, 8] == 1 and 0 < mask[0].mean() < 1  # dark rim, bright centre
    assert (mask[1] == 1).all()  # no field drawn: the view is untouched
