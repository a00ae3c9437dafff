"""Shared set-up: compose the real config from conf/, point every output at tmp_path.

Training tests use scikit-learn's bundled digits so they run anywhere without a
download; the tutorial test uses MNIST from MNIST_NPZ (or Keras's own cache).
"""

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

import pipeline.config  # noqa: F401  (registers the schema)
from pipeline.paths import CONF_DIR as CONF
from pipeline.paths import PROJECT_DIR as PROJECT

sys.path.insert(0, str(PROJECT))
from benchmarks.servers import PostgreSQL, Unavailable, free_port, start_mlflow_server, stop, wait_for  # noqa: E402,F401  (the tests' servers too)

EXPERIMENT = "save-and-load"


def tmp_overrides(tmp_path: Path) -> list[str]:
    return [
        f"paths.root={tmp_path}",
        f"paths.output_dir={tmp_path / 'job'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.run_name=null",  # the CLI names runs from Hydra's overrides; compose has no Hydra job
    ]


@pytest.fixture(scope="session", autouse=True)
def no_stray_mlruns():
    """No test, and no run, may write MLflow's default ./mlruns: every call goes through a run's own store."""
    places = {PROJECT / "mlruns", Path.cwd() / "mlruns"}
    before = {place for place in places if place.exists()}
    yield
    assert not {place for place in places if place.exists()} - before, "an MLflow call escaped its store and wrote ./mlruns"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made, once: MLflow's migrations take ~2 s per new store."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def ready_stores(empty_store, tmp_path):
    """A copy of the empty store where each test's runs go: tmp_path/mlflow.db for the compose
    API, tmp_path/outputs/mlflow.db for the CLI started in tmp_path (its default store)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    (tmp_path / "outputs").mkdir()
    shutil.copy(empty_store, tmp_path / "outputs" / "mlflow.db")


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


def checkpoint_models(client: MlflowClient, run) -> list:
    """The run's checkpoint LoggedModels, oldest first, found the way the README says."""
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}' AND tags.kind = 'checkpoint'", max_results=1000
    )
    return sorted(found, key=lambda m: int(m.tags["step"]))


STAGE_LINE = re.compile(r"^(mlflow|resume|data|build|fit|save|verify|eval|registry|done) *\| ")


def assert_only_pipeline_lines(output: str) -> None:
    """Every line a run printed is one of the pipeline's stage lines: no TensorFlow, absl, CUDA, oneDNN
    or MLflow set-up line, no warning about what the pipeline does on purpose, no terminal escape codes."""
    assert "\x1b" not in output
    others = [line for line in output.splitlines() if line.strip() and not STAGE_LINE.match(line)]
    assert others == []


def run_cli(*args: str, cwd: Path, timeout: int = 600, module: str = "pipeline", pythonpath: tuple = ()) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` (or another of its commands) in a subprocess, with the default
    store under cwd/outputs; `pythonpath` adds folders, as a user's own package is found."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), *map(str, pythonpath)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only): a real full disk or read-only file system under the pipeline."""
    mounted = []

    def mount(path: Path, size: str, read_only: bool = False) -> None:
        """Mount at `path`; mounting again at the same path only resizes (free space on a full disk)."""
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        if path in mounted:
            subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)
            return
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def cached_fraction(path: Path) -> float:
    """The share of a file's pages in the kernel's page cache (Linux's `mincore` on a mapping of it,
    which faults nothing in)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes, libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_size_t]
    size, page = path.stat().st_size, mmap.PAGESIZE
    pages = (size + page - 1) // page
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        resident = (ctypes.c_ubyte * pages)()
        assert libc.mincore(address, size, resident) == 0, os.strerror(ctypes.get_errno())
    finally:
        libc.munmap(address, size)
    return sum(byte & 1 for byte in resident) / pages


# --- servers on 127.0.0.1 -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgresql():
    try:
        server = PostgreSQL()
    except Unavailable as missing:
        pytest.skip(str(missing))
    yield server
    server.stop()


def mlp_factory(input_shape: tuple, num_classes: int, hidden_units: int = 32):
    """The run's model factory for the built-in MLP, as a test builds it without a config."""
    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.models import ModelFactory

    return ModelFactory(ModelConfig("pipeline.architectures.mlp", {"hidden_units": hidden_units}), TrainingConfig(epochs=1, batch_size=32), input_shape, num_classes)


def sweep_report(client: MlflowClient, parent, tmp_path: Path) -> list[dict]:
    """The rows of a sweep's report.csv, from its parent run, beside the Markdown table and the figure."""
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/report.csv", "sweep/report.md", "sweep/comparison.png"}
    text = Path(client.download_artifacts(parent.info.run_id, "sweep/report.csv", str(tmp_path))).read_text()
    return list(csv.DictReader(io.StringIO(text)))
