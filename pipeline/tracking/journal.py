"""The job's own record of what it logged, and the files it queued for upload.

Every param, metric and tag also goes to a journal in the output folder, and every
file is staged (hard-linked as it was) before it is uploaded. If the tracking store
goes away mid-run, or the process is killed, the journal and the staged files let a
resumed session or `python -m pipeline.sync` send the rest later.
"""

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.paths import RunPaths

JOURNAL = "tracking_journal.jsonl"
STAGING = ".uploading"  # files queued for upload, hard-linked as they were when queued
MODEL_STAGING = ".uploading-models"  # checkpoint files queued to become LoggedModels; run artifacts only through sync
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 500  # MLflow's log_batch limits


class Journal:
    """An append-only JSON-lines file of what the run logged; safe to write from several threads."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def record(self, kind: str, data: dict, step: Optional[int] = None) -> None:
        entry = {"kind": kind, "data": data, "step": step, "timestamp": int(time.time() * 1000)}
        with self._lock, self.path.open("a") as journal:
            journal.write(json.dumps(entry) + "\n")


def read_journal(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


@dataclass
class Journaled:
    """Everything a job's journal says it logged."""

    params: dict
    tags: dict
    metrics: list[Metric]
    status: str  # the last status recorded; FAILED if the job never ended


def journaled(journal: Path) -> Journaled:
    found = Journaled({}, {}, [], "FAILED")
    for entry in read_journal(journal):
        if entry["kind"] == "params":
            found.params.update(entry["data"])
        elif entry["kind"] == "tags":
            found.tags.update(entry["data"])
        elif entry["kind"] == "metrics":
            found.metrics += [Metric(k, v, entry["timestamp"], entry["step"] or 0) for k, v in entry["data"].items()]
        elif entry["kind"] == "status":
            found.status = entry["data"]["status"]
        elif entry["kind"] == "reopened" and "error" in found.tags:
            found.tags["interrupted_by"] = found.tags.pop("error")
    return found


def read_metrics(journal: Path) -> dict[str, dict[int, float]]:
    """Every metric in a journal as {name: {step: value}}; a repeated step keeps its last value."""
    metrics: dict[str, dict[int, float]] = {}
    for metric in journaled(journal).metrics:
        metrics.setdefault(metric.key, {})[metric.step] = metric.value
    return metrics


def not_yet_sent(client: MlflowClient, run_id: str, metrics: list[Metric]) -> list[Metric]:
    """The journaled metrics a run does not hold yet, by name and step."""
    sent = {(m.key, m.step) for key in {m.key for m in metrics} for m in client.get_metric_history(run_id, key)}
    return [m for m in metrics if (m.key, m.step) not in sent]


def log_batches(client: MlflowClient, run_id: str, params: Optional[dict] = None, metrics: Optional[list[Metric]] = None) -> None:
    """Params and metrics in as few calls as MLflow's batch limits allow."""
    params_list = [Param(k, str(v)) for k, v in (params or {}).items()]
    for i in range(0, len(params_list), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params_list[i : i + PARAMS_PER_BATCH])
    metrics = metrics or []
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])


def upload_journaled(client: MlflowClient, run_id: str, output_dir: Path, logged: Journaled, with_checkpoints: bool = False) -> None:
    """Log params, tags and metrics in batches, then upload the job's artifacts (overwriting any already there).

    Files still staged go first: a session that was killed, or lost its store, had
    queued them but not sent them, and a checkpoint rotated away since is only there.
    Then every file still in place is uploaded, so the newest version of each name wins;
    the checkpoints too, `with_checkpoints`, for a run whose checkpoints were never LoggedModels.
    """
    log_batches(client, run_id, params=logged.params)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in logged.tags.items()])
    log_batches(client, run_id, metrics=logged.metrics)
    for batch in sorted((output_dir / STAGING).glob("*")):
        send_staged(client, run_id, batch)
    if with_checkpoints:  # checkpoints that were to be LoggedModels, some since rotated away on disk
        for batch in sorted((output_dir / MODEL_STAGING).glob("*")):
            if (batch / "checkpoints").is_dir():
                send_staged(client, run_id, batch)
    for path, folder in RunPaths(output_dir).uploads(with_checkpoints):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder or None)


def send_staged(client: MlflowClient, run_id: str, batch: Path) -> None:
    """Upload a staged batch, each file under the artifact folder it sits in, then drop it.
    A failed upload raises before the drop, so the batch stays for a later session or sync."""
    for staged in sorted(f for f in batch.rglob("*") if f.is_file()):
        folder = staged.parent.relative_to(batch).as_posix()
        client.log_artifact(run_id, str(staged), None if folder == "." else folder)
    shutil.rmtree(batch)
