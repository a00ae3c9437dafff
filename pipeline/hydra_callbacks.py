"""The pipeline's Hydra callbacks (named in conf/config.yaml): refuse bad input (an unwritable
folder, a bad value, a missing dataset) before anything starts, and make each multirun one
MLflow picture.

The sweep callback is the only code that knows about sweeps: a parent run per sweep,
every job's run nested under it, and the sweep report. It passes the parent run's id
and each job's run name to the jobs through the environment (PIPELINE_PARENT_RUN_ID and
PIPELINE_RUN_NAME, which conf/config.yaml reads into tracking.*), so they reach jobs in
other processes too: joblib workers, submitit and SLURM jobs all inherit them. (Not
MLFLOW_RUN_ID: MLflow would take that as the run to log into, not as a parent.)
"""

import atexit
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from pipeline.config import TrackingConfig
from pipeline.errors import PipelineError, report
from pipeline.files import unwritable
from pipeline.owner import owner_tags, process_alive
from pipeline.tracking import service
from pipeline.validation import validate

log = logging.getLogger(__name__)

PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
RUN_NAME_ENV = "PIPELINE_RUN_NAME"


class PreflightCheck(Callback):
    """Refuse bad input in one line before Hydra creates the job's folder: an output folder that
    cannot be written, and (for a single run) any config value or path the checks can judge."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_folder(config.hydra.run.dir)
        HydraConfig.instance().set_config(config)  # as Hydra itself does next, so ${hydra:...} resolves
        job = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        job.paths.output_dir = config.hydra.run.dir  # what Hydra's runtime.output_dir will be
        service.prepare()  # MLflow's store code loads in its own process while TensorFlow loads in this one
        try:
            settings = validate(job)
        except PipelineError as error:
            sys.exit(report(error))
        from pipeline.tracking.store import default_tracking_uri  # (MLflow, imported once the input is good)

        service.open_ahead(settings.tracking.uri or default_tracking_uri(settings.paths.root))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Also the sweeper's own checks, if it has them (`preflight`, as the Optuna sweeper's)."""
        self._check_folder(config.hydra.sweep.dir)
        sweeper = get_class(config.hydra.sweeper._target_)
        if hasattr(sweeper, "preflight"):
            try:
                sweeper.preflight(config)
            except PipelineError as error:
                sys.exit(report(error))

    @staticmethod
    def _check_folder(folder: str) -> None:
        problem = unwritable(Path(folder))
        if problem:
            sys.exit(report(f"cannot write the output folder {folder}: {problem}; choose another with paths.root or hydra.run.dir"))


class SweepFailed(PipelineError):
    """Some jobs of a sweep did not finish."""


class MlflowSweepCallback(Callback):
    """MLflow is imported only when a sweep starts: a single run, or refused input, does not wait for it here."""

    def __init__(self) -> None:
        self.client = None
        self.parent_id: Optional[str] = None
        self.sweep_dir: Optional[Path] = None
        self.swept: Optional[set[str]] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        from pipeline.sweep_report import swept_keys
        from pipeline.tracking.lifecycle import reopen
        from pipeline.tracking.store import connect

        tracking = TrackingConfig(uri=config.tracking.uri, experiment=config.tracking.experiment)
        self.client, experiment_id = connect(tracking, config.paths.root)
        overrides = " ".join(config.hydra.overrides.task)
        space = OmegaConf.to_yaml(config.hydra.sweeper.params) if "params" in config.hydra.sweeper and config.hydra.sweeper.params else None
        digest = hashlib.sha256(json.dumps([sorted(config.hydra.overrides.task), space]).encode()).hexdigest()
        rerun = OmegaConf.to_container(config.sweep, enum_to_str=True)["rerun"]
        stopped = None if rerun == "all" else self._stopped_sweep(experiment_id, digest)
        if stopped:
            self.parent_id = stopped.info.run_id
            reopen(self.client, self.parent_id)
            for key, value in owner_tags().items():  # this process owns it now
                self.client.set_tag(self.parent_id, key, value)
        else:
            tags = resolve_tags({"sweep": "parent", "sweep.digest": digest, **owner_tags()})
            self.parent_id = self.client.create_run(experiment_id, run_name=f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags).info.run_id
            self.client.log_param(self.parent_id, "sweep.overrides", overrides or "(none)")
            self.client.log_param(self.parent_id, "sweep.sweeper", config.hydra.sweeper._target_)
            self.client.log_param(self.parent_id, "sweep.launcher", config.hydra.launcher._target_)
            if space:
                self.client.log_param(self.parent_id, "sweep.search_space", space)
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.swept = swept_keys(config)
        os.environ[PARENT_ENV] = self.parent_id
        atexit.register(self.finish)  # a failed job makes Hydra's sweeper raise before on_multirun_end
        if stopped:
            log.info("sweep   | continuing the stopped sweep %s: finished jobs are not trained again, stopped ones resume (sweep.rerun=all starts afresh)", self.parent_id)
        else:
            log.info("sweep   | parent run %s; job runs are nested under it", self.parent_id)

    def _stopped_sweep(self, experiment_id: str, digest: str):
        """The newest unfinished parent run of the same sweep whose process is gone, if any."""
        runs = self.client.search_runs(
            [experiment_id], f"tags.sweep = 'parent' and tags.`sweep.digest` = '{digest}' and attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=10
        )
        return next((run for run in runs if not process_alive(run.data.tags)), None)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Name the job's run from the overrides the sweep varies, e.g. `model=cnn,save=[h5]`.

        This runs in the job's own process, before the task resolves tracking.run_name.
        """
        if self.swept is not None:
            chosen = [o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") in self.swept]
            os.environ[RUN_NAME_ENV] = ",".join(chosen)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A sweep job refused before its run started (say its combination of values is impossible)
        still gets a FAILED run under the parent, holding the error, so the report lists every job.
        This runs in the job's own process, like on_job_start."""
        parent_id, error = os.environ.get(PARENT_ENV), job_return._return_value
        if parent_id is None or job_return.status is not JobStatus.FAILED or not isinstance(error, PipelineError):
            return
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        from pipeline.tracking.store import connect

        client, experiment_id = connect(TrackingConfig(uri=config.tracking.uri, experiment=config.tracking.experiment), config.paths.root)
        folder, name = str(Path(config.hydra.runtime.output_dir).resolve()), os.environ.get(RUN_NAME_ENV) or None
        siblings = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
        if any(run.data.tags.get("output_dir") == folder for run in siblings):
            return  # the run started, and its own error handling marked it
        message = f"{type(error).__name__}: {error}"[:5000]
        earlier = next((run for run in siblings if name and run.info.run_name == name and run.info.status == "FAILED"), None)
        if earlier:  # a continued sweep refused it again: still one run for the job
            client.set_tag(earlier.info.run_id, "error", message)
            return
        run = client.create_run(experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent_id, "error": message, "output_dir": folder})
        client.set_terminated(run.info.run_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unfinished = self.finish()
        if unfinished:
            raise SweepFailed(f"{len(unfinished)} sweep jobs did not finish: {', '.join(unfinished)}")

    def finish(self) -> list[str]:
        """Write the report to the parent run and end it; returns the jobs that did not finish."""
        if self.parent_id is None:
            return []
        from pipeline.sweep_report import child_runs, comparison_figure, report_rows, to_csv, to_markdown

        parent_id, self.parent_id = self.parent_id, None
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(RUN_NAME_ENV, None)
        atexit.unregister(self.finish)
        children = child_runs(self.client, parent_id)
        unfinished = [c.info.run_name for c in children if c.info.status != "FINISHED"]
        rows = report_rows(children)
        self.client.set_tag(parent_id, "sweep.jobs", len(children))  # a tag: a continued sweep counts again
        self.client.log_metric(parent_id, "sweep/jobs", len(children))
        self.client.log_metric(parent_id, "sweep/failed_jobs", len(unfinished))
        if rows:
            self.client.log_text(parent_id, to_csv(rows), "sweep/report.csv")
            self.client.log_text(parent_id, to_markdown(rows), "sweep/report.md")
            with tempfile.TemporaryDirectory() as scratch:  # the store's process is given files, not figures
                figure = Path(scratch) / "comparison.png"
                comparison_figure(rows).savefig(figure)
                self.client.log_artifact(parent_id, str(figure), "sweep")
        if self.sweep_dir and (self.sweep_dir / "multirun.yaml").exists():
            self.client.log_artifact(parent_id, str(self.sweep_dir / "multirun.yaml"), "sweep")
        self.client.set_terminated(parent_id, "FAILED" if unfinished or not children else "FINISHED")
        log.info("sweep   | %d jobs, %d did not finish; report in parent run %s", len(children), len(unfinished), parent_id)
        return unfinished
