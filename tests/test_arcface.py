"""Cosine classifier and ArcFace loss."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from src.arcface import ArcFaceLoss, build_submodel, load_submodel


def test_outputs_are_cosines():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(5, 8)).astype(np.float32)
    model = build_submodel(8, 5, initial_weights=weights)
    x = rng.normal(size=(4, 8)).astype(np.float32) * 10
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (weights / np.linalg.norm(weights, axis=1, keepdims=True)).T
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("cosine").normalized_weights(), weights / np.linalg.norm(weights, axis=1, keepdims=True), atol=1e-6)


def test_loss_by_hand():
    cosine = np.array([[0.6, 0.2, -0.1]], np.float32)
    loss = ArcFaceLoss(margin=0.5, scale=10.0)(np.array([0]), cosine)
    target = math.cos(math.acos(0.6) + 0.5)
    logits = 10.0 * np.array([target, 0.2, -0.1])
    expected = -logits[0] + np.log(np.exp(logits).sum())
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_margin_raises_loss():
    cosine = np.array([[0.6, 0.2, -0.1]], np.float32)
    without = float(ArcFaceLoss(margin=0.0, scale=10.0)(np.array([0]), cosine))
    with_margin = float(ArcFaceLoss(margin=0.5, scale=10.0)(np.array([0]), cosine))
    assert with_margin > without


def test_loss_and_gradient_finite_at_extremes():
    cosine = tf.Variable([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.3], [1.0, 1.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = ArcFaceLoss()(np.array([0, 0, 2]), cosine)
    gradient = tape.gradient(loss, cosine)
    assert np.isfinite(float(loss))
    assert np.isfinite(gradient.numpy()).all()


def test_save_load_safe_mode(tmp_path):
    model = build_submodel(8, 3, initial_weights=np.eye(3, 8, dtype=np.float32))
    model.compile(optimizer="sgd", loss=ArcFaceLoss())
    model.fit(np.eye(3, 8, dtype=np.float32), np.arange(3), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_submodel(path)
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_training_lowers_loss():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16)).astype(np.float32)
    y = np.repeat(np.arange(10), 20)
    x = centers[y] + rng.normal(size=(200, 16)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_submodel(16, 10)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=ArcFaceLoss(scale=16.0))
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
