"""Stage 2: build the model `model._target_` names, compiled from `training` unless it
compiled itself, and optionally start it from an earlier run's weights, as the tutorial
restores a checkpoint into a new model."""

import json
import logging
from pathlib import Path

import keras

from pipeline.config import ModelConfig
from pipeline.context import RunContext
from pipeline.distribute import describe
from pipeline.errors import ArtifactError, unreadable
from pipeline.formats import detect
from pipeline.models import ModelFactory, model_kind

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


def build(fresh_model: ModelFactory, cfg: ModelConfig, ctx: RunContext) -> keras.Model:
    """The model to train: a fresh one from the run's factory, started from `cfg.init_weights` if given.
    Its kind and what compiled it are tagged; its compile config is logged as a file."""
    model = fresh_model(distributed=True)
    optimizer = model.optimizer
    precision = ", mixed_bfloat16" if fresh_model.training.mixed_precision else ""
    compiled = "compiled by the model itself" if fresh_model.compiled_by == "model" else "compiled from training.*"
    log.info(
        "build   | %s (%s, from %s): %s parameters, %s(learning_rate=%g), %s%s",
        model.name, model_kind(model), cfg.target, f"{model.count_params():,}", type(optimizer).__name__,
        float(keras.ops.convert_to_numpy(optimizer.learning_rate)), compiled, precision,
    )
    if fresh_model.strategy:
        log.info("build   | %s", describe(fresh_model.strategy, fresh_model.training.batch_size))
    if cfg.init_weights:
        path = Path(cfg.init_weights).expanduser().resolve()
        with fresh_model.scope():
            load_initial_weights(model, path)
        log.info("build   | started from the weights in %s", path)
    ctx.paths.model_summary.write_text(summary_text(model))
    ctx.paths.compile_config.write_text(json.dumps(model.get_compile_config(), indent=2, default=str))
    ctx.tracker.log_files([ctx.paths.model_summary, ctx.paths.compile_config])
    ctx.tracker.set_tags({"model_kind": model_kind(model), "compiled_by": fresh_model.compiled_by, "replicas": model.distribute_strategy.num_replicas_in_sync})
    return model
