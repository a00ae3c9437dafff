"""Stage 2: build and compile the chosen architecture, as the tutorial compiles it, and
optionally start it from an earlier run's weights, as the tutorial restores a checkpoint
into a new model."""

import logging
import warnings
from pathlib import Path

import keras

from pipeline.architectures import ARCHITECTURES
from pipeline.config import ModelConfig, OptimizerConfig, TrainingConfig
from pipeline.errors import ArtifactError, unreadable
from pipeline.formats import artifact_kind, checkpoint_prefix, tf_checkpoint

log = logging.getLogger(__name__)


def build_model(model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, input_shape: tuple, num_classes: int, mixed_precision: bool = False) -> keras.Model:
    """A compiled, untrained model: used for training and as the fresh model that loaders fill."""
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


def summary_text(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines)


def load_initial_weights(model: keras.Model, path: Path) -> None:
    """Fill `model` with the layer weights in a .weights.h5, .keras or .h5 file or a TF checkpoint.

    The optimizer starts fresh. A file from another architecture is refused whole,
    never half-loaded: Keras and TensorFlow match every layer and shape.
    """
    key = "model.init_weights"
    try:
        kind = artifact_kind(path)
    except ArtifactError as error:
        raise ArtifactError(f"{key}: {error}") from None
    try:
        if kind == "tf_checkpoint":
            tf_checkpoint(model, with_optimizer=False).restore(checkpoint_prefix(path)).assert_existing_objects_matched()
        else:
            with warnings.catch_warnings():  # the file's optimizer state is not wanted here
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model.load_weights(path)
    except ArtifactError:
        raise
    except (ValueError, AssertionError) as error:  # Keras's and TensorFlow's layer-by-layer matching
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:300]
        raise ArtifactError(f"{key}: {path} holds weights of a different architecture than {model.name} ({model.count_params():,} parameters): {detail}") from error
    except Exception as error:
        raise ArtifactError(f"{key}: {unreadable(path, 'checkpoint', error)}") from error


def build(model_cfg: ModelConfig, training: TrainingConfig, input_shape: tuple, num_classes: int) -> keras.Model:
    optimizer_cfg = training.optimizer
    model = build_model(model_cfg, optimizer_cfg, input_shape, num_classes, training.mixed_precision)
    precision = ", mixed_bfloat16" if training.mixed_precision else ""
    log.info("build   | %s: %s parameters, %s(learning_rate=%g)%s", model.name, f"{model.count_params():,}", optimizer_cfg.name, optimizer_cfg.learning_rate, precision)
    if model_cfg.init_weights:
        path = Path(model_cfg.init_weights).expanduser().resolve()
        load_initial_weights(model, path)
        log.info("build   | started from the weights in %s", path)
    return model
