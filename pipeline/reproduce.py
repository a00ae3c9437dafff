"""`python -m pipeline.reproduce RUN_ID`: run a tracked experiment again and compare.

The source run's resolved config is fetched from MLflow and run in a new run,
tagged `reproduced_from`. The two are then compared on the final weights'
digest and on every metric that does not measure time or file size. Exit code 0
means identical; 1 means they differ (the differences are listed); 2 means the
source run could not be used.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path


from mlflow import MlflowClient
from omegaconf import OmegaConf

from pipeline.console import import_tensorflow, plain_console, quiet_libraries
from pipeline.errors import PipelineError, report
from pipeline.tracking.store import command_line_tracking_uri

# Wall-clock, on-disk sizes and the machine's load vary between runs of the same computation.
NOT_COMPARED = ("_seconds", "/file_bytes", "/bytes_vs_raw")
MACHINE = "system/"


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(NOT_COMPARED) and not k.startswith(MACHINE)}


def differences(client: MlflowClient, source_id: str, new_id: str) -> list[str]:
    source, new = client.get_run(source_id), client.get_run(new_id)
    found = []
    old_digest, new_digest = source.data.tags.get("weights_sha256"), new.data.tags.get("weights_sha256")
    if old_digest != new_digest:
        found.append(f"weights_sha256: {old_digest} -> {new_digest}")
    old_metrics, new_metrics = comparable(source.data.metrics), comparable(new.data.metrics)
    for key in sorted(old_metrics.keys() | new_metrics.keys()):
        old_history = [(m.step, m.value) for m in sorted(client.get_metric_history(source_id, key), key=lambda m: (m.step, m.timestamp))]
        new_history = [(m.step, m.value) for m in sorted(client.get_metric_history(new_id, key), key=lambda m: (m.step, m.timestamp))]
        if old_history != new_history:
            found.append(f"{key}: {old_history[-3:]} -> {new_history[-3:]} (last steps)")
    return found


def reproduce(run_id: str, tracking_uri: str) -> tuple[str, list[str]]:
    """Re-run `run_id` from its logged config; return the new run's id and the differences."""
    client = MlflowClient(tracking_uri)
    try:
        source = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as folder:
            cfg = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", folder))
    except Exception as error:
        raise PipelineError(f"cannot read run {run_id} from {tracking_uri}: {str(error).splitlines()[0]}") from None

    cfg.paths.output_dir = str(Path(cfg.paths.root) / "reproduce" / f"{run_id}-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    cfg.tracking.uri = tracking_uri
    cfg.tracking.experiment = client.get_experiment(source.info.experiment_id).name
    cfg.tracking.tags = {**cfg.tracking.tags, "reproduced_from": run_id}
    cfg.tracking.run_name = f"reproduce-of-{source.info.run_name}"
    cfg.resume = None
    import_tensorflow()  # only once the source run is known to be usable
    from pipeline.task import run

    run(cfg)
    (new,) = client.search_runs([source.info.experiment_id], f"tags.reproduced_from = '{run_id}'", order_by=["attributes.start_time DESC"], max_results=1)
    return new.info.run_id, differences(client, run_id, new.info.run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", help="the MLflow run to reproduce")
    parser.add_argument("--tracking-uri", default=command_line_tracking_uri(), help="default: MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    args = parser.parse_args(argv)
    quiet_libraries()
    plain_console()
    try:
        new_id, found = reproduce(args.run_id, args.tracking_uri)
    except PipelineError as error:
        return report(error, 2)
    if found:
        print(f"run {new_id} differs from {args.run_id}:")
        print("\n".join(f"  {line}" for line in found))
        return 1
    print(f"identical: run {new_id} reproduces {args.run_id} (weights digest and every metric)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
