"""The task: one job from a composed config to its metrics.

`run` is what the Hydra entry point, sweepers and tests call. It validates the
config before anything is loaded, opens one MLflow run around the stages, and
returns the metrics that the run logged.
"""

import logging
from pathlib import Path

import keras
from omegaconf import DictConfig, OmegaConf

from pipeline.architectures import ARCHITECTURES
from pipeline.config import Config, validate
from pipeline.errors import PipelineError
from pipeline.paths import RunPaths
from pipeline.plots import plot_training_curves
from pipeline.stages.build import build, build_model, summary_text
from pipeline.stages.data import load_data
from pipeline.stages.fit import fit
from pipeline.stages.reload_verify import reload_verify
from pipeline.stages.save import save
from pipeline.tracking import Tracker, git_state, tracked_run

log = logging.getLogger(__name__)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_tags(settings: Config) -> dict:
    return {
        "architecture": settings.model.architecture,
        "checkpoint_policy": settings.checkpoint.policy.value,
        "save_formats": ",".join(settings.save),
        "dataset": settings.data.name,
        **git_state(),
    }


def _log_inputs(cfg: DictConfig, paths: RunPaths, tracker: Tracker) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tracker.log_params(flatten(resolved))
    paths.resolved_config.write_text(OmegaConf.to_yaml(resolved))
    tracker.log_files([paths.resolved_config])
    if paths.hydra.is_dir():
        tracker.log_folder(paths.hydra, "hydra")


def run(cfg: DictConfig) -> dict[str, float]:
    settings = validate(cfg)
    paths = RunPaths(Path(settings.paths.output_dir).resolve())
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create the output folder {paths.root}: {error.strerror}") from None

    with tracked_run(settings, paths.root, run_tags(settings)) as tracker:
        _log_inputs(cfg, paths, tracker)
        keras.utils.set_random_seed(settings.seed)
        if settings.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()

        data = load_data(settings.data, ARCHITECTURES[settings.model.architecture].layout)
        model = build(settings.model, settings.training.optimizer, data.input_shape, data.num_classes)
        paths.model_summary.write_text(summary_text(model))
        tracker.log_files([paths.model_summary])

        result = fit(model, data, settings, paths, tracker)
        tracker.log_files([plot_training_curves(result.history, paths.plots / "training_curves.png", f"{model.name} on {data.name}")])

        saved = save(model, settings.save, paths, tracker)
        report = reload_verify(
            model,
            data,
            saved,
            result.checkpoint,
            lambda: build_model(settings.model, settings.training.optimizer, data.input_shape, data.num_classes),
            settings,
            paths,
            tracker,
        )
        metrics = tracker.client.get_run(tracker.run_id).data.metrics
        log.info("done    | run %s: trained accuracy %.2f%%, outputs in %s", tracker.run_id, 100 * report.trained_accuracy, paths.root)
    return metrics
