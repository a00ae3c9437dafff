"""`python -m pipeline [overrides]`: the Hydra command line over `pipeline.task.run`."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline.config import check_override  # importing it registers the schema Hydra validates against
from pipeline.errors import ConfigError, PipelineError, report
from pipeline.paths import CONF_DIR
from pipeline.validation import validate


def check_overrides(args: list[str]) -> None:
    """Refuse a bad override in one line that names what is valid, before Hydra starts anything.

    Hydra does name the options for `model=nope`, but not for an option inside a
    list (`save=[keras,zip]`), and it reports unknown keys and wrong types in several
    lines of OmegaConf detail. Every value of a sweep (`model=mlp,nope`) is checked.
    """
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the overrides: {str(error).splitlines()[0]}") from None
    for override in overrides:
        if override.is_hydra_override() or override.is_delete() or override.value_type is ValueType.INTERVAL_SWEEP:
            continue
        key = override.key_or_group
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        group = CONF_DIR / key
        if group.is_dir():
            options = sorted(p.stem for p in group.glob("*.yaml"))
            for choice in (c for value in values for c in (value if isinstance(value, list) else [value])):
                if choice is not None and choice not in options:
                    raise ConfigError(f"{key}={choice!r} is not an option; choose from: {', '.join(options)}")
            continue
        for value in values:
            check_override(key, value)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        validate(cfg)  # before TensorFlow is imported, so bad values fail fast
        from pipeline.task import run  # here, not at the top: --help and bad input stay fast

        return run(cfg)["trained_accuracy"]  # the objective an Optuna sweep maximizes
    except PipelineError as error:
        if HydraConfig.get().mode is RunMode.MULTIRUN:
            raise  # Hydra records the job as failed and the sweep goes on with the others
        sys.exit(report(error))


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as error:
        sys.exit(report(error))
    main()
