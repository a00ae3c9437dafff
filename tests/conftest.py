"""Shared set-up: compose the real config from conf/, point every output at tmp_path.

Training tests use scikit-learn's bundled digits so they run anywhere without a
download; the tutorial test uses MNIST from MNIST_NPZ (or Keras's own cache).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

import pipeline.config  # noqa: F401  (registers the schema)

PROJECT = Path(__file__).resolve().parent.parent
CONF = PROJECT / "conf"
EXPERIMENT = "save-and-load"


def tmp_overrides(tmp_path: Path) -> list[str]:
    return [
        f"paths.root={tmp_path}",
        f"paths.output_dir={tmp_path / 'job'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.run_name=null",  # the CLI names runs from Hydra's overrides; compose has no Hydra job
    ]


@pytest.fixture
def make_cfg(tmp_path):
    """Compose conf/ with overrides, as the CLI would, with outputs under tmp_path."""

    def make(*overrides: str, root: Path = tmp_path):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=["training.verbose=0", *tmp_overrides(root), *overrides])

    return make


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def only_run(client: MlflowClient):
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a subprocess, with the default store under cwd/outputs."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
