"""The task: one job from a composed config to its metrics.

`run` is what the Hydra entry point, sweepers and tests call. It validates the
config before anything is loaded, opens (or, to resume, reopens) one MLflow run
around the stages, and returns the metrics the run logged.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import keras
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import distribute
from pipeline.config import Config
from pipeline.console import RETRACING, move_log_file, without
from pipeline.context import RunContext
from pipeline.determinism import seed_everything
from pipeline.errors import PipelineError
from pipeline.files import unwritable
from pipeline.models import ModelFactory
from pipeline.optuna_trial import PRUNED, OptunaTrial
from pipeline.paths import RunPaths
from pipeline.plots import plot_training_curves
from pipeline.owner import owner_tags
from pipeline.resume import find_run_to_resume, finished_in_sweep
from pipeline.stages.build import build
from pipeline.stages.data import Dataset, load_data
from pipeline.stages.evaluate import evaluate
from pipeline.stages.fit import fit
from pipeline.stages.register import register
from pipeline.stages.reload_verify import reload_verify
from pipeline.stages.save import save
from pipeline.tracking.lifecycle import tracked_run
from pipeline.tracking.logged_model import keras_signature
from pipeline.tracking.provenance import environment_tags, git_state, installed_packages
from pipeline.tracking.store import connect
from pipeline.tracking.system_metrics import SystemMetrics
from pipeline.tracking.tracker import Tracker
from pipeline.validation import check_model, validate

log = logging.getLogger(__name__)

# Where a job runs and is tracked, not what it computes: left out of the config digest.
NOT_EXPERIMENT = ("paths", "tracking", "registry", "resume", "resume_every_seconds", "sweep")


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


def config_digest(resolved_cfg: dict) -> str:
    """The same experiment gives the same digest, wherever it runs and is tracked."""
    experiment = {k: v for k, v in resolved_cfg.items() if k not in NOT_EXPERIMENT}
    experiment["training"] = {k: v for k, v in experiment["training"].items() if k != "verbose"}
    return hashlib.sha256(json.dumps(experiment, sort_keys=True).encode()).hexdigest()


def weights_digest(model: keras.Model) -> str:
    return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()


def command_line_overrides() -> dict:
    """The overrides this job was started with, when it came from the Hydra command line."""
    if not HydraConfig.initialized():
        return {}
    return {"overrides": " ".join(HydraConfig.get().overrides.task) or "(none)"}


def default_run_name(settings: Config) -> str:
    """A name that says what the run is, e.g. `mlp-every_epoch-keras`, for runs with no overrides to name them."""
    return f"{settings.model.short_name}-{settings.checkpoint.policy.value}-{','.join(settings.save)}"


def continue_in(folder: Path, news: str) -> None:
    """A resumed run keeps its first folder: this session's log is appended to that folder's
    pipeline.log, after the line `news`, and the folder Hydra made for this session goes,
    unless it holds more than that."""
    session_log = move_log_file(folder / "pipeline.log")
    log.info(news)
    if session_log is None or session_log.parent == folder:
        return
    session = session_log.parent
    if {p.name for p in session.iterdir()} <= {".hydra", session_log.name}:
        shutil.rmtree(session)


def run_tags(settings: Config, digest: str, output_dir: Path) -> dict:
    return {
        "architecture": settings.model.short_name,
        "model_target": settings.model.target,
        "data_target": settings.data.target,
        "checkpoint_policy": settings.checkpoint.policy.value,
        "save_formats": ",".join(settings.save),
        "dataset": settings.data.name,
        "config_digest": digest,
        **({"imports": ",".join(settings.imports)} if settings.imports else {}),
        "output_dir": str(output_dir),
        **command_line_overrides(),
        **owner_tags(),
        **git_state(),
        **environment_tags(),
        **settings.tracking.tags,
    }


def _log_inputs(resolved_cfg: dict, paths: RunPaths, tracker: Tracker) -> None:
    """The config and environment a re-run needs."""
    tracker.log_params(flatten(resolved_cfg))
    paths.resolved_config.write_text(OmegaConf.to_yaml(resolved_cfg))
    tracker.log_files([paths.resolved_config])

    def record_environment():  # a third of a second of reading package metadata: in the tracking process
        paths.requirements.parent.mkdir(parents=True, exist_ok=True)
        paths.requirements.write_text(tracker.aside(installed_packages))
        tracker.log_files([paths.requirements])

    tracker.background(record_environment)
    if paths.hydra.is_dir():
        tracker.log_folder(paths.hydra, "hydra")


def _log_datasets(data: Dataset, tracker: Tracker, as_inputs: bool) -> None:
    tracker.log_dataset(data.train_record, data.y_train, f"{data.name}-train", data.source, "training", as_inputs)
    tracker.log_dataset(data.x_test, data.y_test, f"{data.name}-test", data.source, "evaluation", as_inputs)


def _deliver(model: keras.Model, data: Dataset, fresh_model: ModelFactory, checkpoint, settings: Config, ctx: RunContext):
    """The stages after training: save every format, evaluate, reload and verify each, register.
    (Evaluated first, its pictures are drawn in the tracking process while the files load.)"""
    progress, tracker = ctx.progress, ctx.tracker
    progress.stage = "save"
    saved = save(model, settings.save, ctx)
    archive = next((s.path for s in saved if s.format.name == "keras" and s.path.is_file()), None)  # zipped, and written
    tracker.log_keras_model(model, keras_signature(model, data.x_test[:8]), archive)
    progress.stage = "evaluate"
    evaluate(model, data, ctx)
    progress.stage = "verify"
    report = reload_verify(model, data, saved, checkpoint, fresh_model, settings.verify, ctx, declared=(*settings.imports, *fresh_model.declared))
    progress.stage = "register"
    register(settings.registry, data, ctx)
    return report


def run(cfg: DictConfig) -> dict[str, float]:
    start = time.perf_counter()
    settings = validate(cfg)
    resolved_cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    digest = config_digest(resolved_cfg)
    client, experiment_id = connect(settings.tracking, settings.paths.root)
    parent = settings.tracking.parent_run_id
    trial = OptunaTrial.from_environment()  # an Optuna sweep's trial: epochs are reported to its pruner
    number = trial.number if trial else None
    done = finished_in_sweep(client, experiment_id, parent, digest, number) if parent and experiment_id else None
    if done:  # a sweep run again after it was stopped: this job finished the first time
        continue_in(Path(done.data.tags["output_dir"]), f"sweep   | this job finished in run {done.info.run_id}; not trained again")
        if trial and done.data.tags.get("status") == PRUNED:
            raise trial.pruned_error(int(done.data.tags["optuna.pruned_after"]))
        return done.data.metrics
    resumed = find_run_to_resume(client, experiment_id, settings.resume, digest, settings.training.epochs, parent, number)
    paths = RunPaths(resumed[1] if resumed else Path(settings.paths.output_dir).resolve())
    problem = unwritable(paths.root)
    if problem:
        raise PipelineError(f"cannot write the output folder {paths.root}: {problem}")
    paths.root.mkdir(parents=True, exist_ok=True)

    if resumed:
        continue_in(paths.root, f"resume  | resuming in {paths.root}" if resumed[2] else f"resume  | starting over in {paths.root}: the sweep's run of this job stopped before its first training state")
    tags = {**run_tags(settings, digest, paths.root), **(trial.tags() if trial else {})}
    tracking = dataclasses.replace(settings.tracking, run_name=settings.tracking.run_name or default_run_name(settings))
    with tracked_run(client, experiment_id, tracking, paths.root, tags, resume_run_id=resumed[0] if resumed else None) as tracker, without("tensorflow", RETRACING):
        ctx = RunContext(paths, tracker)
        progress = ctx.progress
        system = SystemMetrics(tracker, settings.tracking.system_metrics_interval) if settings.tracking.system_metrics else nullcontext()
        with progress.noted(tracker.run_id), system:
            if trial:
                trial.link(tracker.run_id)
            if not resumed:
                _log_inputs(resolved_cfg, paths, tracker)
            seed_everything(settings.seed, settings.deterministic)

            progress.stage = "data"
            data = load_data(settings.data)
            _log_datasets(data, tracker, as_inputs=not resumed)
            training = settings.training
            fresh_model = ModelFactory(settings.model, training, data.input_shape, data.num_classes, distribute.strategy(settings.distribute))
            progress.stage = "build"
            model = build(fresh_model, settings.model, ctx)
            check_model(model, settings)  # validation did so already, unless the data came from a user's function

            progress.stage = "fit"
            with fresh_model.scope():  # a restored training state, like training itself, writes the distributed variables
                checkpoint = fit(
                    model, data, training, settings.checkpoint, settings.callbacks, settings.seed, ctx,
                    resuming=bool(resumed and resumed[2]), state_every_seconds=settings.resume_every_seconds, trial=trial,
                )  # fmt: skip
            progress.epoch = progress.step = None
            tracker.set_tags({"weights_sha256": weights_digest(model)})
            history = tracker.metric_histories(["loss", "accuracy", "val_loss", "val_accuracy"])
            title = f"{model.name} on {data.name}"
            tracker.background(lambda: tracker.log_files([tracker.aside(plot_training_curves, history, paths.plots / "training_curves.png", title)]))

            if trial and trial.pruned:  # the study has better trials: nothing of this one is worth saving
                tracker.set_tags({"status": PRUNED, "optuna.pruned_after": trial.pruned_after})
            else:
                report = _deliver(model, data, fresh_model, checkpoint, settings, ctx)
            tracker.log_metrics({"run_seconds": time.perf_counter() - start})  # the job's work, after imports
            metrics = tracker.latest_metrics()
            progress.stage = "tracking"  # what is left: waiting for the last uploads
    if trial and trial.pruned:
        raise trial.pruned_error(trial.pruned_after)
    log.info("done    | run %s: trained accuracy %.2f%%, outputs in %s", tracker.run_id, 100 * report.trained_accuracy, paths.root)
    return metrics
