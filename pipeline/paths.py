"""Every file location the pipeline uses, derived from the job's output folder.

The same relative layout is used for the MLflow artifacts, so a run's artifact
tree in the UI mirrors its folder on disk.
"""

from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_DIR / "conf"


@dataclass(frozen=True)
class RunPaths:
    """The output folder of one job."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def resume(self) -> Path:
        """The last two full training states, for continuing an interrupted run."""
        return self.root / "resume"

    def saved(self, format_name: str) -> Path:
        return self.root / "saved" / format_name

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def inspection(self, format_name: str) -> Path:
        """`pipeline.inspect`'s report on a saved artifact, without its .txt/.json suffix."""
        return self.reports / "inspect" / format_name

    @property
    def evaluation(self) -> Path:
        """The trained model judged on the test set: confusion matrix, per-class scores, misclassified examples."""
        return self.root / "evaluation"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def hydra(self) -> Path:
        """Hydra's record of the job: config.yaml, overrides.yaml, hydra.yaml."""
        return self.root / ".hydra"

    @property
    def resolved_config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model_summary(self) -> Path:
        return self.root / "model_summary.txt"

    @property
    def compile_config(self) -> Path:
        """The optimizer, loss and metrics the model was compiled with, as Keras serializes them."""
        return self.root / "compile_config.json"

    @property
    def requirements(self) -> Path:
        """The installed packages, as `pip freeze` would list them."""
        return self.root / "environment" / "requirements.txt"

    def uploads(self, with_checkpoints: bool = False) -> list[tuple[Path, str]]:
        """What a run uploads as artifacts, as (local path, artifact folder) pairs, for those that exist.
        Checkpoints are LoggedModels of the run, so they are run artifacts only when asked for."""
        files = [(self.resolved_config, ""), (self.model_summary, ""), (self.compile_config, "")]
        folders = [(self.hydra, "hydra"), (self.requirements.parent, "environment")]
        names = ("checkpoints",) * with_checkpoints + ("saved", "reports", "evaluation", "plots", "tensorboard")
        folders += [(self.root / name, name) for name in names]
        return [(path, folder) for path, folder in files + folders if path.exists()]
