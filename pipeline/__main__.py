"""`python -m pipeline [overrides]`: the Hydra command line over `pipeline.task.run`."""

import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  (registers the schema Hydra validates against)
from pipeline.errors import PipelineError

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
