"""A Hydra sweeper over Optuna's ask-and-tell API, with a study that outlives the process.

Each batch of `n_jobs` trials is asked from the study, launched as Hydra jobs by whichever
launcher is configured (basic, joblib, submitit, SLURM), and told the value each job returned.
The study lives in `storage` (a journal file by default), so the same `-m` command run again
after a kill continues the same study until it holds `n_trials` trials: the trials that were
running when it died are put back in the queue and run again as the same trial numbers (their
jobs resume their MLflow runs from the training state they left). Jobs report each epoch's
`monitor` value to their trial and stop when the `pruner` says so (pipeline.optuna_trial).
"""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, report

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str, direction: str, n_trials: int, n_jobs: int, monitor: str, sampler: DictConfig, pruner: DictConfig, params: Optional[DictConfig] = None) -> None:
        self.study_name, self.storage, self.direction = study_name, storage_path(storage), direction
        self.n_trials, self.n_jobs, self.monitor = n_trials, n_jobs, monitor
        self.sampler, self.pruner, self.params = sampler, pruner, params or {}
        self.config: Optional[DictConfig] = None

    @staticmethod
    def preflight(config: DictConfig) -> None:
        """Refuse in one line, before the sweep starts anything: a bad setting, a search space that
        is not one, or a stored study this command cannot continue."""
        settings = config.hydra.sweeper
        if settings.direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={settings.direction!r} is not an option; choose from: {', '.join(DIRECTIONS)}")
        if settings.n_trials < 1 or settings.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1 (got {settings.n_trials} and {settings.n_jobs})")
        if settings.monitor not in MONITORS:
            raise ConfigError(f"hydra.sweeper.monitor={settings.monitor!r} is not a metric every epoch logs; choose from: {', '.join(MONITORS)}")
        fixed, space = search_space(list(config.hydra.overrides.task), settings.params or {})
        if not space:
            raise ConfigError("the Optuna sweeper has no search space: set hydra.sweeper.params, e.g. hparams_search=mlp_optuna")
        storage = storage_path(settings.storage)
        if "://" not in storage and not Path(storage).exists() or _rerun_all(config):
            return
        import optuna

        from pipeline.optuna_trial import open_storage
        from pipeline.owner import process_alive

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=settings.study_name, storage=open_storage(storage))
        except KeyError:  # not in this storage yet
            return
        stored = study.user_attrs.get("search")
        if stored != search_record(fixed, space):
            described = f"overrides {' '.join(stored['overrides']) or '(none)'}; space {', '.join(stored['space'])}" if stored else "no record of its search"
            raise ConfigError(
                f"study {settings.study_name!r} in {storage} is another search ({described}); "
                "name a new one with hydra.sweeper.study_name=..., or replace it with sweep.rerun=all"
            )
        owner = study.user_attrs.get("owner", {})
        if process_alive(owner):
            raise ConfigError(f"study {settings.study_name!r} in {storage} is being run by process {owner['pid']}; wait for it, or stop it first")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> dict:
        import optuna
        from hydra.errors import HydraException
        from hydra.utils import instantiate

        from pipeline.optuna_trial import STUDY_ENV, TRIAL_ENV

        fixed, space = search_space(arguments, self.params)
        try:  # every dimension at one of its values: a key no config has is refused before any trial
            self.validate_batch_is_legal([fixed + [f"{name}={_value(_some_value(d))}" for name, d in space.items()]])
        except HydraException as error:
            sys.exit(report(f"the search space does not compose: {str(error).splitlines()[0]}"))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self._open_study(optuna, instantiate(self.sampler), search_record(fixed, space))
        os.environ[STUDY_ENV] = json.dumps({"storage": self.storage, "name": self.study_name, "monitor": self.monitor, "pruner": OmegaConf.to_container(self.pruner, resolve=True)})
        job = 0
        while (remaining := self.n_trials - sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            batch = [fixed + [f"{name}={_value(value)}" for name, value in trial.params.items()] + [f"+hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}"] for trial in trials]
            for trial, overrides in zip(trials, batch):
                log.info("optuna  | trial %d: %s", trial.number, " ".join(overrides[len(fixed) : -1]))
            for trial, result in zip(trials, self.launcher.launch(batch, initial_job_idx=job)):
                self._tell(optuna, study, trial, result)
            job += len(trials)
        return self._write_results(study)

    def _open_study(self, optuna, sampler, search: dict):
        """Create the study, or continue it (preflight has checked that this command may); the
        trials it left running are put back in the queue, to run again as themselves."""
        from pipeline.optuna_trial import open_storage
        from pipeline.owner import owner_tags

        storage = open_storage(self.storage)
        if _rerun_all(self.config) and any(s.study_name == self.study_name for s in storage.get_all_studies()):
            log.info("optuna  | sweep.rerun=all: the study %r in %s is deleted and started afresh", self.study_name, self.storage)
            optuna.delete_study(study_name=self.study_name, storage=storage)
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler, direction=self.direction, load_if_exists=True)
        trials = study.get_trials(deepcopy=False)
        if trials:
            stale = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            for trial in stale:
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.WAITING)
            done = sum(t.state.is_finished() for t in trials)
            again = ", ".join(str(t.number) for t in stale) or "none"
            log.info("optuna  | continuing study %r: %d of %d trials done; interrupted trials run again: %s", self.study_name, done, self.n_trials, again)
        else:
            log.info("optuna  | study %r in %s", self.study_name, self.storage)
        study.set_user_attr("search", search)
        study.set_user_attr("owner", owner_tags())
        return study

    @staticmethod
    def _tell(optuna, study, trial, result) -> None:
        from hydra.core.utils import JobStatus

        outcome = result._return_value
        if result.status is JobStatus.COMPLETED:
            study.tell(trial, float(outcome))
        elif isinstance(outcome, optuna.TrialPruned):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("optuna  | trial %d failed: %s", trial.number, (str(outcome).splitlines() or [type(outcome).__name__])[0])

    def _write_results(self, study) -> dict:
        """The outcome in the sweep folder (optimization_results.yaml), as hydra-optuna-sweeper writes it."""
        states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
        counts = {state: states.count(state) for state in sorted(set(states))}
        results = {"name": "optuna", "study_name": self.study_name, "storage": self.storage, "trials": counts}
        best = study.best_trial if "complete" in counts else None
        if best is not None:
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        folder = Path(self.config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), folder / "optimization_results.yaml")
        log.info("optuna  | trials: %s; best: %s", ", ".join(f"{n} {s}" for s, n in counts.items()), f"trial {best.number}, {best.value:.4f}" if best else "none")
        return results


def search_space(arguments: List[str], params) -> tuple[List[str], dict]:
    """The overrides every trial gets, and the search space: the sweeper's `params` and any
    command-line override written as a sweep (`choice(...)`, `interval(...)`, `range(...)`)."""
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()] + list(arguments))
    fixed, space = [], {}
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            space.pop(override.get_key_element(), None)
            fixed.append(override.input_line)
    return fixed, space


def distribution(override: Override):
    """Hydra's sweep syntax as an Optuna distribution, as hydra-optuna-sweeper reads it: choice(...)
    -> categorical; interval(a, b) -> float, tag(int, interval(a, b)) -> int, tag(log, ...) on a log
    scale; range(a, b, step) -> int, b excluded."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.value_type is ValueType.INTERVAL_SWEEP:
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    if override.value_type is ValueType.RANGE_SWEEP and all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
        return IntDistribution(value.start, value.stop - value.step, step=value.step)
    return CategoricalDistribution(list(override.sweep_iterator()))


def storage_path(storage: str) -> str:
    """A database URL as it is; a journal file's path made absolute, the same for every job."""
    return storage if "://" in storage else str(Path(storage).resolve())


def search_record(fixed: List[str], space: dict) -> dict:
    """What makes a study the same search: its fixed overrides and its space."""
    return {"overrides": sorted(fixed), "space": {name: repr(d) for name, d in sorted(space.items())}}


def _rerun_all(config: DictConfig) -> bool:
    rerun = OmegaConf.select(config, "sweep.rerun", default="unfinished")
    return getattr(rerun, "value", rerun) == "all"


def _some_value(distribution) -> Any:
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def _value(value: Any) -> str:
    """A value as a Hydra override writes it; strings other than plain words quoted."""
    return json.dumps(value) if isinstance(value, str) and not value.replace("_", "").replace("-", "").replace(".", "").isalnum() else str(value)
