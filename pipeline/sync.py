"""`python -m pipeline.sync OUTPUT_DIR`: upload a job's output folder to a tracking store later.

For runs whose tracking server went away, or that ran where no server was reachable:
the folder's journal holds every param, metric (with its steps) and tag the run logged,
and the folder holds its artifacts. They become one new run, tagged `synced_from`; or, if
the store still holds the job's own run as it was left when the server went away (RUNNING),
that run gets what it is missing and is ended as the job ended.
"""

import argparse
import sys
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from omegaconf import OmegaConf

from pipeline.config import TrackingConfig
from pipeline.console import plain_console, quiet_libraries
from pipeline.errors import PipelineError, report
from pipeline.owner import process_alive
from pipeline.paths import RunPaths
from pipeline.tracking.journal import JOURNAL, journaled, not_yet_sent, upload_journaled
from pipeline.tracking.store import command_line_tracking_uri, connect


def sync(output_dir: Path, tracking_uri: str) -> str:
    """Upload the folder as a new run; returns its id."""
    paths = RunPaths(output_dir.resolve())
    if not (paths.root / JOURNAL).exists() or not paths.resolved_config.exists():
        raise PipelineError(f"{output_dir} is not a pipeline output folder: it has no {JOURNAL} or config.yaml")
    config = OmegaConf.load(paths.resolved_config)
    client, experiment_id = connect(TrackingConfig(uri=tracking_uri, experiment=config.tracking.experiment), config.paths.root)
    already = client.search_runs([experiment_id], f"tags.output_dir = '{paths.root}'", max_results=1)
    if already and already[0].info.status != "RUNNING":
        raise PipelineError(f"{output_dir} is already in {tracking_uri} as run {already[0].info.run_id}; nothing was uploaded")
    if already and process_alive(already[0].data.tags):  # its job is still writing the folder
        tags = already[0].data.tags
        raise PipelineError(f"run {already[0].info.run_id} of {output_dir} is still running (process {tags['pid']} on {tags['host']}); sync it once that process has ended")

    logged = journaled(paths.root / JOURNAL)
    if already:  # the job's own run, left RUNNING when its server went away mid-run and since came back: completed
        run_id = already[0].info.run_id
        logged.metrics = not_yet_sent(client, run_id, logged.metrics)
    else:
        logged.tags = {k: v for k, v in logged.tags.items() if k != "mlflow_model_uri"}  # that model lives in the original store
        run_id = client.create_run(experiment_id, run_name=logged.tags.get(MLFLOW_RUN_NAME), tags={**logged.tags, "synced_from": str(paths.root)}).info.run_id
    upload_journaled(client, run_id, paths.root, logged, with_checkpoints=True)  # their LoggedModels live in the original store, if anywhere
    client.set_terminated(run_id, logged.status)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sync", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="a job's output folder, e.g. outputs/runs/2026-11-24_07-03-04")
    parser.add_argument("--tracking-uri", default=command_line_tracking_uri(), help="default: MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    args = parser.parse_args(argv)
    quiet_libraries()
    plain_console()
    try:
        run_id = sync(args.output_dir, args.tracking_uri)
    except PipelineError as error:
        return report(error)
    print(f"uploaded {args.output_dir} as run {run_id} at {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
