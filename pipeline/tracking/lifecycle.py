"""The MLflow run around one job: opened (or reopened to resume), and always ended.

A run ends FINISHED on success, or FAILED (KILLED on Ctrl-C) with the error as a tag
and the traceback as an artifact, so no run is left RUNNING.
"""

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.config import TrackingConfig
from pipeline.errors import PipelineError
from pipeline.tracking.journal import JOURNAL, journaled, not_yet_sent, upload_journaled
from pipeline.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def reopen(client: MlflowClient, run_id: str) -> None:
    """Mark an interrupted run RUNNING again. If it had crashed, its error becomes history
    (`interrupted_by`), so a resumed run that then finishes does not read as failed."""
    tags = client.get_run(run_id).data.tags
    client.update_run(run_id, status="RUNNING")
    if "error" in tags:
        client.set_tag(run_id, "interrupted_by", tags["error"])
        client.delete_tag(run_id, "error")


def catch_up(client: MlflowClient, run_id: str, output_dir: Path) -> None:
    """Log what an interrupted session journaled or staged but had not yet sent when it was killed."""
    logged = journaled(output_dir / JOURNAL)
    logged.metrics = not_yet_sent(client, run_id, logged.metrics)
    logged.tags = {}  # the resumed session sets its own
    upload_journaled(client, run_id, output_dir, logged)


@contextmanager
def tracked_run(client: MlflowClient, experiment_id: str, tracking: TrackingConfig, output_dir: Path, tags: dict, resume_run_id: Optional[str] = None) -> Iterator[Tracker]:
    """Open a new run, or reopen `resume_run_id`, and always end it with a final status."""
    tags = {k: str(v) for k, v in tags.items()}
    if tracking.parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = tracking.parent_run_id
    if resume_run_id is None:
        run_id = client.create_run(experiment_id, run_name=tracking.run_name or None, tags=resolve_tags(tags)).info.run_id
    else:
        run_id = resume_run_id
    tracker = Tracker(client, experiment_id, run_id, output_dir)
    if resume_run_id is None:
        tracker.record("tags", tags)  # already on the new run
    else:
        tracker.record("reopened", {})
        tracker.now("reopening the run", lambda: reopen(client, run_id))
        tracker.now("catching up the interrupted session", lambda: catch_up(client, run_id, output_dir))
        tracker.set_tags(tags)  # this session's pid, overrides and versions
    log.info("mlflow  | %s run %s in experiment %r at %s", "resumed" if resume_run_id else "new", run_id, tracking.experiment, client.tracking_uri)
    try:
        yield tracker
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        tracker.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        trace = traceback.format_exc()
        tracker.remote("logging the traceback", lambda: client.log_text(run_id, trace, "error/traceback.txt"))
        _end(tracker, status)
        if status == "FAILED":  # an interrupted job says so itself, with where it stopped and how to resume
            log.error("mlflow  | run %s marked %s; outputs kept in %s", run_id, status, output_dir)
        raise
    _end(tracker, "FINISHED")
    if tracker.lost:
        raise PipelineError(
            f"the run finished but its tracking was lost ({tracker.lost}); every output is in {output_dir}: "
            f"upload it with `python -m pipeline.sync {output_dir}`"
        )


def _end(tracker: Tracker, status: str) -> None:
    """Wait for every queued upload, then end the run."""
    tracker.record("status", {"status": status})
    tracker.close()
    tracker.now("ending the run", lambda: tracker.client.set_terminated(tracker.run_id, status))
