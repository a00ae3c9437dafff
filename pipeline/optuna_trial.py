"""An Optuna trial as its job sees it.

The Optuna sweeper (hydra_plugins/pipeline_optuna_sweeper) runs each trial as a Hydra job. It
tells every job which study it belongs to (`STUDY_ENV`, set once for the sweep) and each job
which trial it is (`TRIAL_ENV`, through `hydra.job.env_set`), so jobs in other processes or on
other machines find their trial as they find their parent run. The job reports each epoch's
validation metric to the trial (through stages.fit's `Pruning`) and stops when the study's
pruner says so.
"""

import json
import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

STUDY_ENV = "PIPELINE_OPTUNA_STUDY"  # JSON: storage, study name, monitored metric, the pruner's config
TRIAL_ENV = "PIPELINE_OPTUNA_TRIAL"  # the trial's id in that storage
PRUNED = "pruned"  # the `status` tag of a pruned trial's run, which ends FINISHED


def open_storage(storage: str):
    """A URL (sqlite:///..., postgresql://...) is Optuna's RDB storage; anything else a journal file."""
    import optuna

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


class OptunaTrial:
    """This job's trial, when an Optuna sweep started the job."""

    def __init__(self, study, trial_id: int, monitor: str):
        import optuna

        self.trial, self.monitor = optuna.Trial(study, trial_id), monitor
        self.number = self.trial.number
        self.pruned_after: Optional[int] = None  # epochs trained when the pruner stopped it

    @classmethod
    def from_environment(cls) -> Optional["OptunaTrial"]:
        if TRIAL_ENV not in os.environ:
            return None
        import optuna
        from hydra.utils import instantiate

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = json.loads(os.environ[STUDY_ENV])
        loaded = optuna.load_study(study_name=study["name"], storage=open_storage(study["storage"]), pruner=instantiate(study["pruner"]))
        return cls(loaded, int(os.environ[TRIAL_ENV]), study["monitor"])

    def tags(self) -> dict:
        return {"optuna.study": self.trial.study.study_name, "optuna.trial": self.number}

    def link(self, run_id: str) -> None:
        """The trial names its MLflow run, as the run names its trial (`tags`)."""
        self.trial.set_user_attr("mlflow_run_id", run_id)

    def epoch_end(self, epoch: int, logs: dict) -> bool:
        """Report the epoch's `monitor` value; whether the pruner stops the trial here."""
        value = float(logs[self.monitor])
        self.trial.report(value, epoch)
        if not self.trial.should_prune():
            return False
        self.pruned_after = epoch + 1
        log.info("optuna  | trial %d pruned after epoch %d: %s %.4f", self.number, epoch + 1, self.monitor, value)
        return True

    @property
    def pruned(self) -> bool:
        return self.pruned_after is not None

    def pruned_error(self, epochs: int):
        """What the job raises, after its run has ended, for the sweeper to tell the study."""
        import optuna

        return optuna.TrialPruned(f"trial {self.number} pruned after epoch {epochs}")
