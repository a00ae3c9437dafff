"""Every `python -m pipeline` command in the README runs as written, on a little data, and
prints nothing but the pipeline's own lines.

Each command is taken from the README's shell blocks and run through the real CLI with a few
overrides appended that shrink the work (64 examples, one epoch, two trials of a search); the choices it makes (models,
formats, policies, callbacks) stay as written. Some are run, with the same choices, by the tests
about them, and are not run twice: the conv net in three formats (test_tutorial.py), the
joblib and submitit sweeps (test_sweeps.py), a sweep on the team server (test_tracking_server.py), the user-model commands (test_user_models.py). A SLURM launcher needs a cluster, so its
command is only composed (test_sweeps.py). The default command, inspect, reproduce, sync,
serving and the tracking server have tests of their own.
"""

import re
import shlex

import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, assert_only_pipeline_lines, run_cli

pytestmark = pytest.mark.slow

SHRINK = ["data.train_size=64", "data.test_size=64", "training.epochs=1"]


def readme_commands() -> list[list[str]]:
    """The arguments of each `.venv/bin/python -m pipeline ...` line in the README's bash blocks."""
    text = (PROJECT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    unique = dict.fromkeys(line for line in lines if line.startswith(".venv/bin/python -m pipeline "))  # in order, each once
    return [shlex.split(line)[3:] for line in unique]


RUN_ELSEWHERE = ("model=cnn", "hydra/launcher=", "model=custom", "model=mobilenet_v3_small")  # see above
COMMANDS = [c for c in readme_commands() if not any(a.startswith(RUN_ELSEWHERE) for a in c)]


def test_the_readme_has_the_commands_this_file_runs():
    assert len(COMMANDS) >= 6 and len(readme_commands()) == len(COMMANDS) + 9


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_runs(args, tmp_path):
    search = ["hydra.sweeper.n_trials=2"] if any(a.startswith("hparams_search=") for a in args) else []  # (the search itself: test_optuna.py)
    result = run_cli(*args, *SHRINK, *search, cwd=tmp_path, timeout=900)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    if "-m" not in args:  # (a sweep's lines start with the job's number, and Hydra has its own)
        assert_only_pipeline_lines(result.stdout + result.stderr)
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    if "-m" in args:
        assert sum(r.data.tags.get("sweep") == "parent" for r in runs) == 1
