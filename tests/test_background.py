"""Background checkpoints: written from a copy of the model taken at the step, on another thread,
in order, at most one pending, with the same files as written on the training thread; a failed
write is raised on the training thread, and a kill mid-write leaves the previous checkpoint whole."""

import io
import json
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.background import Writes
from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CheckpointConfig, CheckpointFormat, CheckpointPolicy, KeepConfig
from pipeline.resume import TrainingState


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dropout(0.1), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def tiny_data():
    rng = np.random.default_rng(0)
    return rng.random((8, 3), dtype="float32"), rng.integers(0, 2, 8)


def arrays_in(path: Path) -> dict:
    """Every array a checkpoint holds, by its name in the file: HDF5, a .keras archive's, or a TF checkpoint's."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return arrays_in_h5(io.BytesIO(archive.read("model.weights.h5")))
    if path.suffix == ".h5":
        return arrays_in_h5(path)
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def arrays_in_h5(file) -> dict:
    found = {}
    with h5py.File(file, "r") as h5:
        h5.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def train_with_checkpoints(folder: Path, background: bool, cfg: CheckpointConfig) -> tuple[keras.Model, list]:
    """Five epochs of the tiny model with the checkpoint policy and the training-state backups, writing as asked."""
    model, (x, y) = tiny_model(), tiny_data()
    writes = Writes(model, background)
    records = []
    checkpoints = PolicyCheckpoint(cfg, folder / "checkpoints", on_write=lambda record, logs, removed: records.append(record), writes=writes)
    state = TrainingState(folder / "resume", "run", [], checkpoints.state, checkpoints.weights_file_at, writes=writes)
    try:
        model.fit(x, y, batch_size=2, epochs=5, verbose=0, shuffle=False, validation_data=(x, y), callbacks=[checkpoints, state])
    finally:
        writes.close()
    return model, records


@pytest.mark.parametrize("checkpoint_format, weights_only", [(CheckpointFormat.keras, True), (CheckpointFormat.keras, False), (CheckpointFormat.tf_checkpoint, False)], ids=["weights", "keras", "tf_checkpoint"])
def test_background_writes_the_same_checkpoints_and_states_as_the_training_thread(tmp_path, checkpoint_format, weights_only):
    cfg = CheckpointConfig(policy=CheckpointPolicy.every_epoch, save_initial=True, format=checkpoint_format, weights_only=weights_only, keep=KeepConfig(latest=3))
    model, records = train_with_checkpoints(tmp_path / "now", background=False, cfg=cfg)
    copied, background_records = train_with_checkpoints(tmp_path / "background", background=True, cfg=cfg)

    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copied.get_weights(), strict=True))
    for subfolder in ("checkpoints", "resume"):
        now, later = sorted(p.name for p in (tmp_path / "now" / subfolder).iterdir()), sorted(p.name for p in (tmp_path / "background" / subfolder).iterdir())
        assert now == later and len(now) >= 3, subfolder
    for record, again in zip(records, background_records, strict=True):
        assert (record.path.name, record.epoch, record.step, record.carries_optimizer) == (again.path.name, again.epoch, again.step, again.carries_optimizer)
        assert all(np.array_equal(a, b) for a, b in zip(record.weights + record.optimizer_variables, again.weights + again.optimizer_variables, strict=True))
        assert again.written.result() is True
    assert len(records) == 6 and len(records[-1].optimizer_variables) > 0
    if checkpoint_format is CheckpointFormat.keras:  # cp-0000 as Keras writes it before the first step: no optimizer state yet
        assert records[0].optimizer_variables == []
    for record in records[-3:]:  # on disk: the same arrays under the same names
        now, later = arrays_in(record.path), arrays_in(tmp_path / "background" / "checkpoints" / record.path.name)
        assert sorted(now) == sorted(later) and all(np.array_equal(now[k], later[k]) for k in now), record.path.name
    for state in (tmp_path / "now" / "resume").glob("*.json"):
        assert json.loads(state.read_text()) == json.loads((tmp_path / "background" / "resume" / state.name).read_text())
        weights = state.with_name(state.stem + ".weights.h5")
        now, later = arrays_in(weights), arrays_in(tmp_path / "background" / "resume" / weights.name)
        assert sorted(now) == sorted(later) and all(np.array_equal(now[k], later[k]) for k in now)


@pytest.mark.parametrize("background", [False, True], ids=["training thread", "background"])
def test_each_checkpoint_record_keeps_the_values_its_file_was_written_with(tmp_path, background):
    """What reload-verify compares a checkpoint file against: the values at its step, kept as
    training goes on changing the variables (and, in the background, the copy) in place."""
    cfg = CheckpointConfig(policy=CheckpointPolicy.every_epoch, format=CheckpointFormat.keras, weights_only=True)
    model, records = train_with_checkpoints(tmp_path, background, cfg)
    saved = [i for i, v in enumerate(model.weights) if not v.path.endswith("seed_generator_state")]  # a weights file leaves these out
    for record in records:
        written = tiny_model()
        written.load_weights(record.path)
        assert all(np.array_equal(np.asarray(record.weights[i]), written.weights[i].numpy()) for i in saved), record.path.name
    assert not np.array_equal(np.asarray(records[0].weights[0]), np.asarray(records[-1].weights[0]))  # training moved between them
    assert [int(np.asarray(v)) for r in records for v in r.optimizer_variables[:1]] == [r.step for r in records]  # the iterations at each step


def test_the_copy_holds_the_step_it_was_taken_at_and_a_new_one_waits_for_the_write_reading_it(tmp_path):
    model, (x, y) = tiny_model(), tiny_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    writes = Writes(model, background=True)
    writes.at_step()
    taken = model.get_weights()
    seen, finished = {}, threading.Event()

    def slow_write():
        time.sleep(0.5)  # training goes on meanwhile
        seen["weights"], seen["thread"] = writes.model.get_weights(), threading.current_thread().name
        finished.set()
        return "written"

    written = writes.submit(slow_write)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the next step, while the write is pending
    assert not finished.is_set()
    writes.at_step()  # the next copy: it must wait for the write still reading the last one
    assert finished.is_set() and written.result() == "written"
    writes.close()

    assert seen["thread"].startswith("checkpoint-writer")
    assert all(np.array_equal(a, b) for a, b in zip(seen["weights"], taken, strict=True))  # the step it was taken at
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), taken, strict=True))  # while training moved on
    assert all(np.array_equal(a, b) for a, b in zip(writes.model.get_weights(), model.get_weights(), strict=True))


def test_a_failed_write_stops_the_writes_after_it_and_is_raised_on_the_training_thread():
    model = tiny_model()
    writes = Writes(model, background=True)
    ran = []

    def full_disk():
        raise OSError(28, "No space left on device")

    writes.submit(lambda: ran.append(1))
    failed = writes.submit(full_disk)
    after = writes.submit(lambda: ran.append(3))

    assert failed.result() is None and after.result() is None and ran == [1]  # in order; nothing after the failure
    with pytest.raises(OSError, match="No space left on device"):
        writes.at_step()  # the training thread's next checkpoint
    with pytest.raises(OSError, match="No space left on device"):
        writes.close()


def test_a_model_keras_cannot_copy_is_written_on_the_training_thread(caplog):
    class Unlisted(keras.Model):  # no get_config for its constructor's argument
        def __init__(self, width):
            super().__init__()
            self.dense = keras.layers.Dense(width)

        def call(self, x):
            return self.dense(x)

    model = Unlisted(3)
    model(np.zeros((1, 2), "float32"))
    model.compile(optimizer="adam", loss="mse")
    with caplog.at_level("INFO", logger="pipeline.background"):
        writes = Writes(model, background=True)

    assert writes.model is model
    assert "checkpoint | written on the training thread: Unlisted cannot be copied for background writes" in caplog.text


KILLED_MID_WRITE = """
import sys, time, keras
from pathlib import Path
from pipeline.background import Writes
from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CheckpointConfig, CheckpointPolicy
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(6000), keras.layers.Dense(10)])  # 6M parameters, ~72 MB with Adam
model.compile(optimizer="adam", loss="mse")
writes = Writes(model, background=True)
checkpoints = PolicyCheckpoint(CheckpointConfig(policy=CheckpointPolicy.every_epoch), Path(sys.argv[1]), on_write=lambda *a: None, writes=writes)
import numpy as np
x, y = np.ones((4, 1000), "float32"), np.ones((4, 10), "float32")
model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoints])
writes.wait()
print("first written", flush=True)
model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[checkpoints])
time.sleep(60)
"""


def test_a_process_killed_mid_write_leaves_the_previous_checkpoint_whole(tmp_path):
    folder = tmp_path / "checkpoints"
    process = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "first written"
    deadline = time.monotonic() + 60
    while not (folder / ".partial-cp-0002.weights.h5").exists():  # the second one is being written
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    process.kill()
    process.wait()

    assert sorted(p.name for p in folder.iterdir()) == [".partial-cp-0002.weights.h5", "cp-0001.weights.h5"]  # nothing under the new name
    model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(6000), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(folder / "cp-0001.weights.h5")  # whole, and readable
    assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("policy", ["every_epoch", "every_n_epochs", "every_n_batches", "best_only"])
def test_by_default_checkpoints_are_written_in_the_background(make_cfg, policy):
    """Each checkpoint config as the CLI composes it: the benchmark measured the background ahead on the CPU too."""
    assert make_cfg(f"checkpoint={policy}").checkpoint.background is True
