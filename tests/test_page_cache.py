"""Large writes beside the training: each checkpoint takes the page-cache memory of the one before
(`pipeline.page_cache`), and the threads that write them run at the lowest CPU priority
(`pipeline.priority`). Real files, the real kernel: what is cached is read with `mincore`."""

import os
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import cached_fraction
from pipeline.background import Writes
from pipeline.formats import FORMATS
from pipeline.page_cache import Recycled
from pipeline.priority import LOWEST
from pipeline.tracking.tracker import Tracker

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page cache and per-thread priorities as Linux has them")


def written(path: Path, size: int = 4 << 20) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(size))
    return path


@pytest.fixture
def drops(tmp_path):
    """Skip where the file system keeps a file's pages whatever it is told (tmpfs: they are the file)."""
    with written(tmp_path / "probe").open("rb") as probe:
        os.fdatasync(probe.fileno())
        os.posix_fadvise(probe.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if cached_fraction(tmp_path / "probe") > 0.5:
        pytest.skip(f"the file system at {tmp_path} keeps written files in memory")


def model_with_state() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2048, activation="relu"), keras.layers.Dense(10)])  # 2 MB of weights, 6 MB with Adam
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.ones((4, 64), "float32"), np.arange(4), epochs=1, verbose=0)
    return model


@linux
def test_a_released_file_leaves_the_cache_and_keeps_its_bytes(tmp_path, drops):
    cache, path = Recycled(), written(tmp_path / "checkpoint")
    before = path.read_bytes()
    assert cached_fraction(path) == 1.0
    cache.hold([path, tmp_path / "deleted by a keep policy"])  # a file gone by the next write is skipped
    assert cached_fraction(path) == 1.0  # held, not dropped: the next write has not come
    cache.release()
    assert cached_fraction(path) < 0.05
    assert path.read_bytes() == before
    cache.release()  # nothing held: nothing to do


@linux
@pytest.mark.parametrize("name", ["weights", "keras", "tf_checkpoint"])
def test_each_checkpoint_leaves_the_cache_as_the_next_is_written(tmp_path, drops, name):
    """The newest checkpoint stays cached (its LoggedModel's archive is made from it); the one before
    is on disk only, and reads back whole."""
    model, fmt = model_with_state(), FORMATS[name]
    writer = fmt.checkpoints(model, tmp_path, "cp", 4, with_optimizer=True)
    first = writer.write(1)
    first_bytes = {f: f.read_bytes() for f in fmt.files(first) if f.name != "checkpoint"}
    assert all(cached_fraction(f) == 1.0 for f in first_bytes)
    second = writer.write(2)
    assert max(cached_fraction(f) for f in first_bytes) < 0.05
    assert min(cached_fraction(f) for f in fmt.files(second) if f.name != "checkpoint") == 1.0
    assert {f: f.read_bytes() for f in first_bytes} == first_bytes


@linux
def test_background_writes_and_uploads_run_at_the_lowest_priority_and_training_at_its_own(tmp_path):
    """The training thread keeps its priority; the checkpoint writer and the tracking thread run at nice 19."""
    priority = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # noqa: E731
    own = priority()
    writes = Writes(model_with_state(), background=True)
    try:
        assert writes.submit(priority).result() == LOWEST
    finally:
        writes.close()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("priorities"))
    tracker, seen = Tracker(client, run.info.experiment_id, run.info.run_id, tmp_path / "job"), []
    tracker.background(lambda: seen.append(priority()))
    tracker.close()
    assert seen == [LOWEST] and priority() == own != LOWEST
