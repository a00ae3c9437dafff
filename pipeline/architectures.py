"""The built-in architectures, each an ordinary `model._target_` like a user's own.

Each takes `input_shape` and `num_classes` and the keys of its config, and returns
an uncompiled model; `pipeline.models` compiles it from `training`. Layers are
named so that a fresh model lines up with a saved one layer for layer.
"""

import keras

from pipeline.layers import ResidualDense


def _check(hidden_units: int = 1, dropout: float = 0.0, conv_filters: tuple = ()) -> None:
    if hidden_units < 1:
        raise ValueError(f"model.hidden_units must be at least 1 (got {hidden_units})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1) (got {dropout})")
    if any(f < 1 for f in conv_filters):
        raise ValueError(f"model.conv_filters must be positive (got {list(conv_filters)})")


def _flat_input(input_shape: tuple) -> list:
    """The tutorial feeds flat vectors; images are flattened by the model itself, so the saved
    model takes the data as it comes."""
    return [keras.Input(shape=input_shape)] + ([keras.layers.Flatten(name="flatten")] if len(input_shape) > 1 else [])


def mlp(input_shape: tuple, num_classes: int, hidden_units: int = 512, dropout: float = 0.2) -> keras.Model:
    """The tutorial's model: Dense(512, relu) -> Dropout(0.2) -> Dense(10) logits."""
    _check(hidden_units, dropout)
    return keras.Sequential(
        [
            *_flat_input(input_shape),
            keras.layers.Dense(hidden_units, activation="relu", name="hidden"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="mlp",
    )


def cnn(input_shape: tuple, num_classes: int, conv_filters: list = (16, 32), dropout: float = 0.2) -> keras.Model:
    """Conv/pool blocks -> dropout -> logits, on (height, width, channels) images."""
    _check(dropout=dropout, conv_filters=tuple(conv_filters))
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs (height, width, channels) images; the data gives examples of shape {tuple(input_shape)}")
    layers = [keras.Input(shape=input_shape)]
    for i, filters in enumerate(conv_filters):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}"),
            keras.layers.MaxPooling2D(padding="same", name=f"pool{i}"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(num_classes, name="logits"),
    ]
    return keras.Sequential(layers, name="cnn")


def residual(input_shape: tuple, num_classes: int, hidden_units: int = 128, dropout: float = 0.1) -> keras.Model:
    """An MLP with a custom, registered layer, so custom objects go through every save format."""
    _check(hidden_units, dropout)
    return keras.Sequential(
        [
            *_flat_input(input_shape),
            keras.layers.Dense(hidden_units, activation="relu", name="hidden"),
            ResidualDense(hidden_units, dropout, name="residual"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="residual",
    )


def application(input_shape: tuple, num_classes: int, application: str = "MobileNetV3Small", **options) -> keras.Model:
    """A Keras Applications model (`keras.applications.<application>`), untrained, with
    `num_classes` logits; `options` are its own arguments, e.g. `alpha` or `minimalistic`."""
    if not hasattr(keras.applications, application):
        valid = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise ValueError(f"model.application={application!r} is not in keras.applications: {', '.join(valid)}")
    build = getattr(keras.applications, application)
    return build(input_shape=tuple(input_shape), classes=num_classes, weights=None, classifier_activation=None, **options)
