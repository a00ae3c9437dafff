"""Stage 2: build and compile the chosen architecture, as the tutorial compiles it, and
optionally start it from an earlier run's weights, as the tutorial restores a checkpoint
into a new model."""

import logging
from pathlib import Path
from typing import Callable

import keras

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.context import RunContext
from pipeline.errors import ArtifactError, unreadable
from pipeline.formats import detect

log = logging.getLogger(__name__)


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
        fmt = detect(path)
        fmt.init_weights(model, path)
    except ArtifactError as error:
        raise ArtifactError(f"{key}: {error}") from None
    except (ValueError, AssertionError) as error:  # Keras's and TensorFlow's layer-by-layer matching
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:300]
        raise ArtifactError(f"{key}: {path} holds weights of a different architecture than {model.name} ({model.count_params():,} parameters): {detail}") from error
    except Exception as error:
        raise ArtifactError(f"{key}: {unreadable(path, 'checkpoint', error)}") from error


def build(fresh_model: Callable[[], keras.Model], cfg: ModelConfig, training: TrainingConfig, ctx: RunContext) -> keras.Model:
    """The model to train: a fresh one from the run's factory, started from `cfg.init_weights` if given."""
    model = fresh_model()
    optimizer = training.optimizer
    precision = ", mixed_bfloat16" if training.mixed_precision else ""
    log.info("build   | %s: %s parameters, %s(learning_rate=%g)%s", model.name, f"{model.count_params():,}", optimizer.name, optimizer.learning_rate, precision)
    if cfg.init_weights:
        path = Path(cfg.init_weights).expanduser().resolve()
        load_initial_weights(model, path)
        log.info("build   | started from the weights in %s", path)
    ctx.paths.model_summary.write_text(summary_text(model))
    ctx.tracker.log_files([ctx.paths.model_summary])
    return model
