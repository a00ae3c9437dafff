"""The one way a model is made: the config's `model._target_`, built-in or the user's.

The target is called with `input_shape`, `num_classes` and the `model` group's other
keys. A model that comes back uncompiled is compiled from `training`; one that
compiled itself keeps its own optimizer, loss and metrics. The same factory makes
the model to train and every fresh model a loader fills, so they always match.
"""

from contextlib import nullcontext
from typing import Callable

import keras
import numpy as np

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.errors import ConfigError
from pipeline.targets import check_arguments, resolve

SUPPLIED = ("input_shape", "num_classes")


def model_kind(model: keras.Model) -> str:
    """What Keras can save of it: Sequential and functional models are graphs of layers Keras
    can rebuild from a config; a subclassed model's `call` is Python only its class knows."""
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        return "sequential"
    return "functional" if isinstance(model, Functional) else "subclassed"


def unregistered(model: keras.Model) -> str:
    """The model's class if it is subclassed and Keras could not find it by name when loading, else ''."""
    cls = type(model)
    if model_kind(model) != "subclassed" or keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls:
        return ""
    return f"{cls.__module__}.{cls.__qualname__}"


def model_builder(cfg: ModelConfig) -> Callable[..., keras.Model]:
    """The callable `model._target_` names, checked against the keys the config passes it."""
    build = resolve(cfg.target, "model._target_")
    check_arguments(build, cfg.arguments, SUPPLIED, "model", cfg.target)
    return build


class ModelFactory:
    """Makes a fresh, compiled, built model of the run's architecture each time it is called."""

    def __init__(self, cfg: ModelConfig, training: TrainingConfig, input_shape: tuple, num_classes: int, strategy=None):
        self.cfg, self.training = cfg, training
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.build = model_builder(cfg)
        self.compiled_by = "training"  # or "model", once a model has come back compiled
        self.strategy = strategy  # a tf.distribute strategy whose scope the model and optimizer are made in

    def __call__(self, distributed: bool = False) -> keras.Model:
        """A fresh model; `distributed`, the one to train, made in the strategy's scope (every other
        model, one a saved file is loaded into, is made as a user would load it: on one device)."""
        with self.scope() if distributed else nullcontext():
            return self._make()

    def scope(self):
        """The strategy's scope, where the training model's variables are created and restored."""
        return self.strategy.scope() if self.strategy else nullcontext()

    def _make(self) -> keras.Model:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16" if self.training.mixed_precision else "float32")  # read as each layer is made
        try:
            model = self.build(input_shape=self.input_shape, num_classes=self.num_classes, **self.cfg.arguments)
        except (ValueError, TypeError) as error:
            detail = " ".join(str(error).split())[:300]
            raise ConfigError(f"model._target_={self.cfg.target} could not build a model for inputs of shape {self.input_shape}: {detail}") from None
        finally:
            keras.config.set_dtype_policy(previous)
        if not isinstance(model, keras.Model):
            raise ConfigError(f"model._target_={self.cfg.target} returned a {type(model).__name__}, not a keras.Model")
        if model_kind(model) == "subclassed":
            # Keras creates a subclassed model's variables when it is first called; this call also
            # gives SavedModel export its input signature, from the data's shape.
            model(np.zeros((1, *self.input_shape), dtype="float32"))
        if getattr(model, "compiled", False):
            self.compiled_by = "model"
        else:
            model.compile(optimizer=self._optimizer(), loss=self._loss(), metrics=[self._accuracy()])
        return model

    def _optimizer(self) -> keras.optimizers.Optimizer:
        optimizer = self.training.optimizer
        return keras.optimizers.get({"class_name": optimizer.name, "config": {"learning_rate": optimizer.learning_rate}})

    def _loss(self) -> keras.losses.Loss:
        """`sparse_categorical_crossentropy` or `SparseCategoricalCrossentropy`: the Loss class, which takes from_logits."""
        name = self.training.loss
        class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
        loss = getattr(keras.losses, class_name, None)
        if not (isinstance(loss, type) and issubclass(loss, keras.losses.Loss)):
            valid = sorted(n for n, c in vars(keras.losses).items() if isinstance(c, type) and issubclass(c, keras.losses.Loss) and c is not keras.losses.Loss)
            raise ConfigError(f"training.loss={name!r} is not a Keras loss class: {', '.join(valid)}")
        try:
            return loss(from_logits=self.training.from_logits)
        except TypeError:
            raise ConfigError(f"training.loss={name!r} takes no from_logits; for integer labels use sparse_categorical_crossentropy") from None

    def _accuracy(self) -> keras.metrics.Metric:
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def declared(self) -> tuple:
        """The package of a user's model: its classes are the user's own, allowed in their saved files."""
        package = self.build.__module__.split(".")[0]
        return () if package in ("pipeline", "keras") else (package,)
