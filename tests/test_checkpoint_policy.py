"""The checkpoint callback on a tiny model, without a run around it, as Keras tests ModelCheckpoint."""

import keras
import numpy as np
import pytest

from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CheckpointConfig, CheckpointFormat, CheckpointPolicy, Mode
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "checkpoints"


@pytest.fixture
def tiny():
    """A compiled two-layer model and 8 examples: 4 steps an epoch at batch 2."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    return model, rng.random((8, 3), dtype="float32"), rng.integers(0, 2, 8)


def train(tiny, folder, epochs: int, **cfg) -> tuple[PolicyCheckpoint, list[list[str]]]:
    """Train with the policy; each written checkpoint's files, and the names the writer removed with it."""
    model, x, y = tiny
    written: list[list[str]] = []

    def on_write(record, logs, removed):
        written.append([f.name for f in record.format.files(record.path)])
        callback.removed.append([p.name for p in removed])

    callback = PolicyCheckpoint(CheckpointConfig(**cfg), folder, on_write=on_write)
    callback.removed = []
    model.fit(x, y, batch_size=2, epochs=epochs, verbose=0, shuffle=False, callbacks=[callback])
    return callback, written


def test_every_n_epochs_with_the_initial_weights(tiny, folder):
    callback, written = train(tiny, folder, 5, policy=CheckpointPolicy.every_n_epochs, every=2, save_initial=True)

    assert written == [["cp-0000.weights.h5"], ["cp-0002.weights.h5"], ["cp-0004.weights.h5"]]
    assert sorted(p.name for p in folder.iterdir()) == ["cp-0000.weights.h5", "cp-0002.weights.h5", "cp-0004.weights.h5"]
    record = callback.latest
    assert (record.path.name, record.epoch, record.step, record.format, record.carries_optimizer) == ("cp-0004.weights.h5", 4, 16, FORMATS["weights"], True)
    assert FORMATS["weights"].latest_checkpoint(folder) == record.path


def test_every_n_batches_names_files_by_step(tiny, folder):
    callback, written = train(tiny, folder, 2, policy=CheckpointPolicy.every_n_batches, every=3, weights_only=False)

    assert written == [["cp-step-000003.keras"], ["cp-step-000006.keras"]]
    assert (callback.latest.epoch, callback.latest.step, callback.latest.format) == (1, 6, FORMATS["keras"])


def test_tf_checkpoints_keep_max_to_keep_and_carry_the_optimizer_only_when_whole(tiny, folder):
    callback, written = train(tiny, folder, 4, policy=CheckpointPolicy.every_epoch, format=CheckpointFormat.tf_checkpoint, max_to_keep=2)

    assert [files[0] for files in written] == ["cp-1.data-00000-of-00001", "cp-2.data-00000-of-00001", "cp-3.data-00000-of-00001", "cp-4.data-00000-of-00001"]
    assert all(files[-1] == "checkpoint" for files in written)
    assert sorted(p.name for p in folder.glob("*.index")) == ["cp-3.index", "cp-4.index"]
    assert FORMATS["tf_checkpoint"].latest_checkpoint(folder) == callback.latest.path == folder / "cp-4"
    assert not callback.latest.carries_optimizer  # weights_only: the model alone
    assert callback.removed == [[], [], ["cp-1"], ["cp-2"]]  # what max_to_keep deleted, told with each write


def test_best_only_writes_when_the_monitor_improves_in_its_direction(tiny, folder):
    model, _, _ = tiny
    written = []
    on_write = lambda record, logs, removed: written.append((record, logs))  # noqa: E731
    callback = PolicyCheckpoint(CheckpointConfig(policy=CheckpointPolicy.best_only, monitor="val_accuracy", mode=Mode.max), folder, on_write)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate([0.5, 0.4, 0.6, 0.6, 0.7]):
        callback.on_epoch_end(epoch, {"val_accuracy": value})

    assert [(record.path.name, logs["val_accuracy"]) for record, logs in written] == [("cp-0001.weights.h5", 0.5), ("cp-0003.weights.h5", 0.6), ("cp-0005.weights.h5", 0.7)]
    assert callback.state() == {"checkpoint_best": 0.7}  # what a resumed run carries on from
    with pytest.raises(ConfigError, match="checkpoint.monitor='val_accuracy' is not a logged metric: loss"):
        callback.on_epoch_end(5, {"loss": 1.0})
