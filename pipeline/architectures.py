"""The model architectures a config can choose, by name.

Layers are named explicitly so that a fresh model built later in the same
process lines up with a saved one layer for layer.
"""

from dataclasses import dataclass
from typing import Callable

import keras

from pipeline.config import ModelConfig


@keras.saving.register_keras_serializable(package="pipeline")
class ResidualDense(keras.layers.Layer):
    """relu(x + Dense(Dropout(Dense(x)))): a custom layer that every save format must carry.

    Registration plus `get_config` is what lets `.keras`, `.h5` and SavedModel
    rebuild it without the user passing `custom_objects`.
    """

    def __init__(self, units: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dropout = dropout
        self.inner = keras.layers.Dense(units, activation="relu", name="inner")
        self.drop = keras.layers.Dropout(dropout)
        self.outer = keras.layers.Dense(units, name="outer")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.units))

    def call(self, inputs, training=None):
        return keras.activations.relu(inputs + self.outer(self.drop(self.inner(inputs), training=training)))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}


def _mlp(cfg: ModelConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    """The tutorial's model: Dense(512, relu) -> Dropout(0.2) -> Dense(10) logits."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Dense(cfg.hidden_units, activation="relu", name="hidden"),
            keras.layers.Dropout(cfg.dropout, name="dropout"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="mlp",
    )


def _cnn(cfg: ModelConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    layers = [keras.Input(shape=input_shape)]
    for i, filters in enumerate(cfg.conv_filters):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}"),
            keras.layers.MaxPooling2D(padding="same", name=f"pool{i}"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dropout(cfg.dropout, name="dropout"),
        keras.layers.Dense(num_classes, name="logits"),
    ]
    return keras.Sequential(layers, name="cnn")


def _residual(cfg: ModelConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Dense(cfg.hidden_units, activation="relu", name="hidden"),
            ResidualDense(cfg.hidden_units, cfg.dropout, name="residual"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="residual",
    )


@dataclass(frozen=True)
class Architecture:
    build: Callable[[ModelConfig, tuple, int], keras.Model]
    layout: str  # "flat" vectors or "image" (height, width, 1) tensors, as the data stage shapes them


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(_mlp, "flat"),
    "cnn": Architecture(_cnn, "image"),
    "residual": Architecture(_residual, "flat"),
}
