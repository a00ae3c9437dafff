"""Every checkpoint the policy writes, as a LoggedModel of the run: MLflow 3's unit of a model.

Each is named by epoch (`checkpoint-epoch-0003`) or step (`checkpoint-step-000100`), tagged
with its format, policy, epoch, step and file, and has the metrics measured when it was
written linked by `model_id`. The best so far by the policy's `monitor` carries the tag
`best=true`, so one query finds it (`best_checkpoint`). Keras checkpoints are MLflow models
with the Keras flavor; TF checkpoints carry their files alone.

Every MLflow call runs on the tracker's thread. The files are hard-linked the moment they
are written, so a checkpoint that the keep policies delete before its upload still arrives;
its LoggedModel is then tagged `local_file=deleted by checkpoint.keep (latest=2)`, not silently missing.
"""

import shutil
from pathlib import Path
from typing import Optional

from mlflow.entities import LoggedModel
from mlflow.tracking import MlflowClient

from pipeline.checkpoints import CheckpointRecord
from pipeline.config import CheckpointConfig, CheckpointPolicy, Mode
from pipeline.files import files_under
from pipeline.keep import describe
from pipeline.page_cache import Recycled
from pipeline.tracking.logged_model import checkpoint_model_folder, checkpoint_template, local_folder, log_model_folder
from pipeline.tracking.tracker import Tracker

BEST = "best"
KIND = "checkpoint"
KERAS_FLAVORED = ("keras", "weights")  # checkpoint formats MLflow's Keras flavor can load


def run_models(client: MlflowClient, experiment_id: str, run_id: str, condition: str = "") -> list[LoggedModel]:
    """A run's LoggedModels (every page), optionally narrowed by a search condition."""
    query = f"source_run_id = '{run_id}'" + (f" AND {condition}" if condition else "")
    models, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], filter_string=query, page_token=token)
        models += page
        token = page.token
        if not token:
            return models


def best_checkpoint(client: MlflowClient, experiment_id: str, run_id: str) -> Optional[LoggedModel]:
    """The run's best checkpoint so far by the policy's monitor, or None if no checkpoint was ranked."""
    found = run_models(client, experiment_id, run_id, f"tags.{BEST} = 'true'")
    return found[0] if found else None


class CheckpointModels:
    """The PolicyCheckpoint's `on_write` hook: each checkpoint becomes a LoggedModel.

    Args:
        tracker: the run's tracker.
        cfg: the checkpoint config: policy, format, monitor and mode.
        resuming: recall the checkpoints an earlier session of the run logged, and its best.
    """

    def __init__(self, tracker: Tracker, cfg: CheckpointConfig, resuming: bool):
        self.tracker, self.cfg = tracker, cfg
        self.by_batch = cfg.policy is CheckpointPolicy.every_n_batches
        self.monitor = ("batch_" if self.by_batch else "") + cfg.ranked_by  # as its LoggedModels' metrics are named
        self.ids: dict[int, str] = {}  # epoch (step, by batch) -> model id; written on the tracking thread
        self._names: dict[str, str] = {}  # checkpoint file or prefix name -> model id
        self._staged: dict[str, tuple[Path, list[Path]]] = {}  # checkpoint file or prefix name -> its staged folder and files
        self._best: Optional[tuple[float, str]] = None
        self._template: Optional[Path] = None
        self._cache = Recycled()  # each checkpoint's stored files written into the page-cache memory of the one before, and its file read
        if resuming:
            tracker.remote("finding the run's checkpoints", self._recall)

    def prepare(self, model, signature, format_name: str) -> None:
        """Write the run's MLflow model folder once: each Keras checkpoint's LoggedModel is that
        folder with the checkpoint's file in place of its config-only archive. It is written on the
        tracking thread, before any checkpoint is logged there, while training starts."""
        if format_name in KERAS_FLAVORED:
            folder = self.tracker.stage_for_model([]) / "template"
            self.tracker.remote("writing the run's MLflow model folder", lambda: setattr(self, "_template", checkpoint_template(model, signature, folder)))

    def at(self, key: int) -> Optional[str]:
        """The LoggedModel written at this epoch (step, by batch), once logged; asked on the tracking thread."""
        return self.ids.get(key)

    def file_written(self, record: CheckpointRecord) -> None:
        """On the writing thread, the moment the checkpoint is complete: its files are staged (hard
        links), so the keep policies may delete it before its upload."""
        files = record.format.files(record.path)
        batch = self.tracker.stage_for_model(files)
        self._staged[record.path.name] = batch, [batch / f.relative_to(self.tracker.output_dir) for f in files]

    def __call__(self, record: CheckpointRecord, logs: dict, removed: list[Path]) -> None:
        """On the training thread, in order: log the checkpoint (on the tracking thread, once it is
        written), its metrics by batch linked to it, and the deletions."""
        key = record.step if self.by_batch else record.epoch
        metrics = {f"batch_{k}": v for k, v in logs.items()} if self.by_batch else dict(logs)
        name = f"checkpoint-step-{record.step:06d}" if self.by_batch else f"checkpoint-epoch-{record.epoch:04d}"
        self.tracker.remote(f"logging {name}", lambda: self._log(record, name, key))
        if self.by_batch and metrics:  # epoch metrics are logged, and linked to it, by the metrics callback
            self.tracker.log_metrics(metrics, step=record.step, model=lambda: self.at(key))
        for path in removed:
            self.tracker.remote(f"marking {path.name} deleted", lambda path=path: self._mark_deleted(path.name))

    def _log(self, record: CheckpointRecord, name: str, key: int) -> None:
        if not record.written.result():  # its write failed: the training stops with that error
            return
        batch, staged = self._staged.pop(record.path.name)
        value = record.value
        tags = {"kind": KIND, "format": record.format.name, "policy": self.cfg.policy.value, "epoch": record.epoch, "step": record.step, "file": record.path.name}
        folder, files = None, staged
        self._cache.release()
        if self._template is not None:
            folder, files = batch / "model", []
            tags["file_sha256"] = checkpoint_model_folder(self._template, staged[0], record.format.name == "weights", folder)
        else:
            tags["load_with"] = "tf.train.Checkpoint(model=..., optimizer=...) on the run's architecture, e.g. python -m pipeline.inspect --load --config"
        client = self.tracker.client
        logged = log_model_folder(client, self.tracker.experiment_id, self.tracker.run_id, name, folder, files, tags, step=record.step)
        stored = local_folder(logged.artifact_location)
        self._cache.hold([*(files_under(stored) if stored is not None else []), *record.format.files(record.path)])  # the checkpoint too: read again here
        self.ids[key], self._names[record.path.name] = logged.model_id, logged.model_id
        if value is not None and (self._best is None or self._better(value, self._best[0])):
            client.set_logged_model_tags(logged.model_id, {BEST: "true"})
            if self._best is not None:
                client.delete_logged_model_tag(self._best[1], BEST)
            self._best = (value, logged.model_id)
        shutil.rmtree(batch)

    def _better(self, value: float, best: float) -> bool:
        return value < best if self.cfg.mode is Mode.min else value > best

    def _mark_deleted(self, name: str) -> None:
        if name in self._names:
            self.tracker.client.set_logged_model_tags(self._names[name], {"local_file": f"deleted by checkpoint.keep ({describe(self.cfg.keep)})"})

    def _recall(self) -> None:
        client = self.tracker.client
        for model in run_models(client, self.tracker.experiment_id, self.tracker.run_id, f"tags.kind = '{KIND}'"):
            self.ids[int(model.tags["step" if self.by_batch else "epoch"])] = model.model_id
            self._names[model.tags["file"]] = model.model_id
            values = [m.value for m in model.metrics or [] if m.key == self.monitor]
            if model.tags.get(BEST) == "true" and values:
                self._best = (values[-1], model.model_id)
