"""Cosine classifier and additive angular margin (ArcFace) loss in Keras 3.

A submodel maps a feature vector to one cosine per class: the input and each class weight are
L2-normalized, so its outputs lie in [-1, 1]. The loss adds the angular margin m to the target
class's angle and scales all logits by s before softmax cross-entropy (Deng et al., "ArcFace:
Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

# Keeps sqrt(1 - cos^2) and its gradient finite at cos = +-1.
_EPS = 1e-7


@keras.saving.register_keras_serializable(package="mixmaxsim")
class CosineClassifier(keras.layers.Layer):
    """Dense layer without bias whose outputs are cosines between input and class weights."""

    def __init__(self, n_classes: int, initial_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.n_classes = int(n_classes)
        self._initial_weights = initial_weights

    def build(self, input_shape):
        if self._initial_weights is not None:
            initial = np.asarray(self._initial_weights, dtype="float32").T
            initializer = keras.initializers.Constant(initial)
        else:
            initializer = keras.initializers.GlorotUniform()
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.n_classes), initializer=initializer
        )
        self._initial_weights = None

    def call(self, inputs):
        x = inputs / ops.maximum(ops.norm(inputs, axis=-1, keepdims=True), _EPS)
        w = self.kernel / ops.maximum(ops.norm(self.kernel, axis=0, keepdims=True), _EPS)
        return ops.clip(ops.matmul(x, w), -1.0, 1.0)

    def normalized_weights(self) -> np.ndarray:
        """Return the class weights as an (n_classes, dim) array with unit rows."""
        kernel = np.asarray(keras.ops.convert_to_numpy(self.kernel), dtype=np.float32).T
        return kernel / np.maximum(np.linalg.norm(kernel, axis=1, keepdims=True), _EPS)

    def get_config(self):
        config = super().get_config()
        config.update({"n_classes": self.n_classes})
        return config


@keras.saving.register_keras_serializable(package="mixmaxsim")
class ArcFaceLoss(keras.losses.Loss):
    """Additive angular margin loss on cosine outputs and integer labels."""

    def __init__(self, margin: float = 0.5, scale: float = 64.0, name: str = "arcface_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        cosine = ops.clip(y_pred, -1.0 + _EPS, 1.0 - _EPS)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(cosine)[-1], dtype=cosine.dtype)

        sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), _EPS))
        cos_m, sin_m = math.cos(self.margin), math.sin(self.margin)
        with_margin = cosine * cos_m - sine * sin_m
        # Past theta = pi - m, cos(theta + m) would grow again; fall back to a linear penalty
        # there, as the reference implementation does, so the target logit keeps decreasing.
        threshold = math.cos(math.pi - self.margin)
        fallback = cosine - math.sin(math.pi - self.margin) * self.margin
        with_margin = ops.where(cosine > threshold, with_margin, fallback)

        logits = self.scale * (one_hot * with_margin + (1.0 - one_hot) * cosine)
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True)

    def get_config(self):
        return {"name": self.name, "margin": self.margin, "scale": self.scale}


def build_submodel(dim: int, n_classes: int, initial_weights=None, name: str = "submodel") -> keras.Model:
    """Build an uncompiled cosine classifier over ``n_classes`` classes for ``dim``-d inputs.

    ``initial_weights`` (n_classes, dim), typically the class centers, starts every class weight
    at its class's mean feature instead of at random, which shortens training.
    """
    inputs = keras.Input(shape=(dim,), name="features")
    outputs = CosineClassifier(n_classes, initial_weights=initial_weights, name="cosine")(inputs)
    return keras.Model(inputs, outputs, name=name)


def load_submodel(path) -> keras.Model:
    """Load a saved submodel with Keras safe mode on, so no serialized Python code is run."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
