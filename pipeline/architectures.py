"""The model architectures a config can choose, by name, and the one way a model is built.

Layers are named explicitly so that a fresh model built later in the same
process lines up with a saved one layer for layer.
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable

import keras

from pipeline.config import ModelConfig, OptimizerConfig, TrainingConfig
from pipeline.layers import ResidualDense


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


def model_factory(model_cfg: ModelConfig, training: TrainingConfig, input_shape: tuple, num_classes: int) -> Callable[[], keras.Model]:
    """The run's one way to make a fresh, compiled model: for training, and for every loader that fills one."""
    return partial(build_model, model_cfg, training.optimizer, input_shape, num_classes, training.mixed_precision)


def build_model(model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, input_shape: tuple, num_classes: int, mixed_precision: bool = False) -> keras.Model:
    """A compiled, untrained model, as the tutorial compiles it: for training, and as the fresh model loaders fill."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if mixed_precision else "float32")  # read as each layer is made
    try:
        model = ARCHITECTURES[model_cfg.architecture].build(model_cfg, input_shape, num_classes)
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer_cfg.name, "config": {"learning_rate": optimizer_cfg.learning_rate}}),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
