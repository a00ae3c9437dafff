"""Stage 2: build and compile the chosen architecture, as the tutorial compiles it."""

import logging

import keras

from pipeline.architectures import ARCHITECTURES
from pipeline.config import ModelConfig, OptimizerConfig

log = logging.getLogger(__name__)


def build_model(model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    """A compiled, untrained model: used for training and as the fresh model that loaders fill."""
    model = ARCHITECTURES[model_cfg.architecture].build(model_cfg, input_shape, num_classes)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer_cfg.name, "config": {"learning_rate": optimizer_cfg.learning_rate}}),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def summary_text(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines)


def build(model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    model = build_model(model_cfg, optimizer_cfg, input_shape, num_classes)
    log.info("build   | %s: %s parameters, %s(learning_rate=%g)", model.name, f"{model.count_params():,}", optimizer_cfg.name, optimizer_cfg.learning_rate)
    return model
