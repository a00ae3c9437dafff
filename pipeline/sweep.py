"""Hydra multiruns as one MLflow picture: a parent run per sweep, every job's run nested
under it, and a sweep report built from what MLflow holds.

This callback is the only code that knows about sweeps. It passes the parent run's id
and each job's run name to the jobs through the environment (PIPELINE_PARENT_RUN_ID and
PIPELINE_RUN_NAME, which conf/config.yaml reads into tracking.*), so they reach jobs in
other processes too: joblib workers, submitit and SLURM jobs all inherit them. (Not MLFLOW_RUN_ID: MLflow would take that as the
run to log into, not as a parent.)
"""

import atexit
import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

from pipeline.config import TrackingConfig
from pipeline.errors import PipelineError
from pipeline.formats import FORMATS

log = logging.getLogger(__name__)

PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
RUN_NAME_ENV = "PIPELINE_RUN_NAME"
PER_FORMAT = ("verified", "file_bytes", "save_seconds", "load_seconds")


class SweepFailed(PipelineError):
    """Some jobs of a sweep did not finish."""


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.client: Optional[MlflowClient] = None
        self.parent_id: Optional[str] = None
        self.sweep_dir: Optional[Path] = None
        self.swept: Optional[set[str]] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.tracking import connect

        tracking = TrackingConfig(uri=config.tracking.uri, experiment=config.tracking.experiment)
        self.client, experiment_id = connect(tracking, config.paths.root)
        overrides = " ".join(config.hydra.overrides.task)
        parent = self.client.create_run(experiment_id, run_name=f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=resolve_tags({"sweep": "parent"}))
        self.parent_id = parent.info.run_id
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.client.log_param(self.parent_id, "sweep.overrides", overrides or "(none)")
        self.client.log_param(self.parent_id, "sweep.sweeper", config.hydra.sweeper._target_)
        self.client.log_param(self.parent_id, "sweep.launcher", config.hydra.launcher._target_)
        if "params" in config.hydra.sweeper and config.hydra.sweeper.params:
            self.client.log_param(self.parent_id, "sweep.search_space", OmegaConf.to_yaml(config.hydra.sweeper.params))
        self.swept = swept_keys(config)
        os.environ[PARENT_ENV] = self.parent_id
        atexit.register(self.finish)  # a failed job makes Hydra's sweeper raise before on_multirun_end
        log.info("sweep   | parent run %s; job runs are nested under it", self.parent_id)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Name the job's run from the overrides the sweep varies, e.g. `model=cnn,save=[h5]`.

        This runs in the job's own process, before the task resolves tracking.run_name.
        """
        if self.swept is not None:
            chosen = [o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") in self.swept]
            os.environ[RUN_NAME_ENV] = ",".join(chosen)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unfinished = self.finish()
        if unfinished:
            raise SweepFailed(f"{len(unfinished)} sweep jobs did not finish: {', '.join(unfinished)}")

    def finish(self) -> list[str]:
        """Write the report to the parent run and end it; returns the jobs that did not finish."""
        if self.parent_id is None:
            return []
        parent_id, self.parent_id = self.parent_id, None
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(RUN_NAME_ENV, None)
        atexit.unregister(self.finish)
        children = child_runs(self.client, parent_id)
        unfinished = [c.info.run_name for c in children if c.info.status != "FINISHED"]
        rows = report_rows(self.client, children)
        self.client.log_param(parent_id, "sweep.jobs", len(children))
        self.client.log_metric(parent_id, "sweep/jobs", len(children))
        self.client.log_metric(parent_id, "sweep/failed_jobs", len(unfinished))
        if rows:
            self.client.log_text(parent_id, to_csv(rows), "sweep/report.csv")
            self.client.log_text(parent_id, to_markdown(rows), "sweep/report.md")
            self.client.log_figure(parent_id, comparison_figure(rows), "sweep/comparison.png")
        if self.sweep_dir and (self.sweep_dir / "multirun.yaml").exists():
            self.client.log_artifact(parent_id, str(self.sweep_dir / "multirun.yaml"), "sweep")
        self.client.set_terminated(parent_id, "FAILED" if unfinished or not children else "FINISHED")
        log.info("sweep   | %d jobs, %d did not finish; report in parent run %s", len(children), len(unfinished), parent_id)
        return unfinished


def swept_keys(config: DictConfig) -> set[str]:
    """The config keys a sweep varies: comma lists and sweep functions, and an Optuna search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.key_or_group for o in overrides if o.is_sweep_override()}
    return keys | set(config.hydra.sweeper.get("params") or {})


def child_runs(client: MlflowClient, parent_id: str) -> list[Run]:
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'", max_results=50_000)
    return sorted(runs, key=lambda r: r.info.start_time)


def report_rows(client: MlflowClient, children: list[Run]) -> list[dict]:
    """One row per job: its choices, status, accuracy and, per saved format, the verify result and costs."""
    formats = [f for f in FORMATS if any(f"{f}/verified" in c.data.metrics for c in children)]
    rows = []
    for child in children:
        metrics, tags = child.data.metrics, child.data.tags
        row = {
            "job": child.info.run_name,
            "run_id": child.info.run_id,
            "status": child.info.status,
            "trained_accuracy": metrics.get("trained_accuracy"),
            "untrained_accuracy": metrics.get("untrained_accuracy"),
        }
        for fmt in formats:
            for key in PER_FORMAT:
                row[f"{fmt}/{key}"] = metrics.get(f"{fmt}/{key}")
        row["error"] = tags.get("error", "")
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: list[dict]) -> str:
    columns = [c for c in rows[0] if c != "run_id"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "# Sweep report\n\n" + "\n".join(lines) + "\n"


def comparison_figure(rows: list[dict]):
    """Accuracy per job, and file size and load time per job and format."""
    import numpy as np
    from matplotlib.figure import Figure

    jobs = [r["job"] or r["run_id"][:8] for r in rows]
    formats = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/verified")}, key=list(FORMATS).index)
    fig = Figure(figsize=(18, 5 + 0.15 * len(jobs)))
    axes = fig.subplots(1, 3)
    y = np.arange(len(jobs))
    accuracy = [r["trained_accuracy"] or 0.0 for r in rows]
    colours = ["tab:blue" if r["status"] == "FINISHED" else "tab:red" for r in rows]
    axes[0].barh(y, accuracy, color=colours)
    axes[0].set(yticks=y, yticklabels=jobs, xlabel="trained accuracy (red: job failed)", xlim=(0, 1), title="accuracy")
    height = 0.8 / max(len(formats), 1)
    for ax, key, label in ((axes[1], "file_bytes", "MB on disk"), (axes[2], "load_seconds", "seconds to load")):
        for i, fmt in enumerate(formats):
            values = [(r.get(f"{fmt}/{key}") or 0.0) / (1e6 if key == "file_bytes" else 1.0) for r in rows]
            ax.barh(y + i * height - 0.4 + height / 2, values, height=height, label=fmt)
        ax.set(yticks=y, yticklabels=[], xlabel=label, title=label)
        ax.legend()
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
