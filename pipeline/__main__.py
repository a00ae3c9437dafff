"""`python -m pipeline [overrides]`: the Hydra command line over `pipeline.task.run`."""

import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console
# A tracking server that stops answering is given up on in seconds, not MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import pipeline.config  # noqa: E402,F401  (registers the schema Hydra validates against)
from pipeline.errors import PipelineError  # noqa: E402


CONF = Path(__file__).resolve().parent.parent / "conf"


def check_group_choices(args: list[str]) -> None:
    """Refuse an unknown config-group option, naming the valid ones.

    Hydra does name them for `model=nope`, but not for an option inside a list
    such as `save=[keras,zip]`; this check covers both, and sweeps (`save=keras,zip`).
    """
    for arg in args:
        key, has_value, value = arg.lstrip("+~").partition("=")
        group = CONF / key
        if not has_value or key.startswith("hydra") or "(" in value or not group.is_dir():
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in filter(None, re.split(r"[\[\],\s]+", value)):
            if choice not in options and choice != "null":
                raise SystemExit(f"error: {key}={choice!r} is not an option; choose from: {', '.join(options)}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from pipeline.task import run  # after Hydra has parsed the command line: --help stays fast

    try:
        return run(cfg)["trained_accuracy"]  # the objective an Optuna sweep maximizes
    except PipelineError as error:
        if HydraConfig.get().mode is RunMode.MULTIRUN:
            raise  # Hydra records the job as failed and the sweep goes on with the others
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])
    main()
