"""`python -m pipeline [overrides]`: the Hydra command line over `pipeline.task.run`."""

import atexit
import logging
import os
import shlex
import sys
from typing import NoReturn

from pipeline.console import import_tensorflow, quiet_libraries, set_job_prefix

quiet_libraries(sys.argv[1:])  # before anything imports TensorFlow

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.core.override_parser.types import ValueType  # noqa: E402
from hydra.errors import OverrideParseException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
import yaml  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipeline.config import check_override  # noqa: E402  (importing it registers the schema Hydra validates against)
from pipeline.errors import ConfigError, PipelineError, report  # noqa: E402
from pipeline.interrupts import Interrupted, interruptible  # noqa: E402
from pipeline.paths import CONF_DIR  # noqa: E402

OPEN_GROUPS = ("data", "model")  # their keys are the arguments of whatever `_target_` names


def check_overrides(args: list[str]) -> None:
    """Refuse a bad override in one line that names what is valid, before Hydra starts anything.

    Hydra does name the options for `model=nope`, but not for an option inside a
    list (`save=[keras,zip]`), and it reports unknown keys and wrong types in several
    lines of OmegaConf detail. Every value of a sweep (`model=mlp,nope`) is checked.
    """
    if {"--shell-completion", "-sc"} & set(args):  # its install=/query= words are Hydra's, not overrides
        return
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the overrides: {str(error).splitlines()[0]}") from None
    for override in overrides:
        if override.is_hydra_override() or override.is_delete() or override.value_type is ValueType.INTERVAL_SWEEP:
            continue
        key = override.key_or_group
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        if not override.is_add():
            _check_target_argument(key, overrides)
        group = CONF_DIR / key
        if group.is_dir():
            options = sorted(p.stem for p in group.glob("*.yaml"))
            for choice in (c for value in values for c in (value if isinstance(value, list) else [value])):
                if choice is not None and choice not in options:
                    raise ConfigError(f"{key}={choice!r} is not an option; choose from: {', '.join(options)}")
            continue
        for value in values:
            check_override(key, value)


def _check_target_argument(key: str, overrides: list) -> None:
    """`model.width=64` sets a key the chosen model file has; a new argument for its `_target_`
    takes `+model.width=64`. Said in one line, naming the keys the file has."""
    group, _, name = key.partition(".")
    if group not in OPEN_GROUPS or not name or "." in name:
        return
    chosen = [o for o in overrides if o.key_or_group == group]
    if chosen and chosen[-1].is_sweep_override():
        return  # several files: each job's composition says
    choice = chosen[-1].value() if chosen else default_choice(group)
    keys = list(yaml.safe_load((CONF_DIR / group / f"{choice}.yaml").read_text()) or {})
    if name not in keys:
        raise ConfigError(f"{key}: {group}={choice} has no key {name!r} (its keys: {', '.join(keys)}); to pass a new argument to its _target_, write +{key}=...")


def default_choice(group: str) -> str:
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    return next(entry[group] for entry in defaults if isinstance(entry, dict) and group in entry)


def the_command() -> str:
    """This command as the user could type it again: what resumes an interrupted run."""
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else "python"
    return " ".join([python, "-m", "pipeline", *map(shlex.quote, sys.argv[1:])])


def exit_interrupted(error: Interrupted) -> NoReturn:
    """One line, on the console and in pipeline.log: what stopped the job, where, and how to carry on."""
    if error.run_id is None:
        message = f"interrupted by {error} before the run started"
    elif error.requeue:
        message = f"interrupted by {error}: run {error.run_id} is marked KILLED; submitit requeues the job, which resumes it"
    else:
        message = f"interrupted by {error}: run {error.run_id} is marked KILLED; run the same command to resume it: {the_command()}"
    logging.getLogger("pipeline").warning(message)
    if error.requeue:  # submitit checkpoints the job, requeues it and exits
        error.requeue(error.signum, None)
    leave(error.exit_code)


def leave(code: int) -> NoReturn:
    """Exit once the job's own work is done, without the interpreter's teardown.

    By now every run is ended and every file written: the tracker and the checkpoint
    writer wait for their work before the run ends. The exit handlers still run (a
    sweep's report and parent run), but not the second or two of freeing TensorFlow's
    objects one by one, which a user waits for and a job given a few seconds' notice
    by its scheduler may not have.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# Whether this process ran one job and no sweep: only then may it leave without the teardown,
# since a sweep's launcher shuts its worker processes down in that teardown.
single_run = False


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    global single_run
    multirun = HydraConfig.get().mode is RunMode.MULTIRUN
    single_run = not multirun
    if multirun:
        set_job_prefix(f"[{HydraConfig.get().job.num}] ")
    try:
        with interruptible():
            import_tensorflow()  # (the preflight check, or a sweep job's own, has validated the config; run does again)
            from pipeline.task import run  # here, not at the top: --help and bad input stay fast

            return run(cfg)["trained_accuracy"]  # the objective an Optuna sweep maximizes
    except Interrupted as error:
        exit_interrupted(error)
    except PipelineError as error:
        if multirun:
            raise  # Hydra records the job as failed and the sweep goes on with the others
        sys.exit(report(error))


if __name__ == "__main__":
    with interruptible():  # start-up too: Hydra, and the preflight check that imports TensorFlow
        try:
            check_overrides(sys.argv[1:])
            main()
        except ConfigError as error:
            sys.exit(report(error))
        except Interrupted as error:
            exit_interrupted(error)
        if single_run:
            leave(0)
