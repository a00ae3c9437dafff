"""The checkpoint callback on a tiny model, without a run around it, as Keras tests ModelCheckpoint."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CheckpointConfig, CheckpointFormat, CheckpointPolicy, KeepConfig, Mode
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS
from pipeline.keep import Written, to_delete


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


def test_tf_checkpoints_keep_the_latest_and_carry_the_optimizer_only_when_whole(tiny, folder):
    callback, written = train(tiny, folder, 4, policy=CheckpointPolicy.every_epoch, format=CheckpointFormat.tf_checkpoint, keep=KeepConfig(latest=2))

    assert [files[0] for files in written] == ["cp-1.data-00000-of-00001", "cp-2.data-00000-of-00001", "cp-3.data-00000-of-00001", "cp-4.data-00000-of-00001"]
    assert all(files[-1] == "checkpoint" for files in written)
    assert sorted(p.name for p in folder.glob("*.index")) == ["cp-3.index", "cp-4.index"]
    assert FORMATS["tf_checkpoint"].latest_checkpoint(folder) == callback.latest.path == folder / "cp-4"
    assert not callback.latest.carries_optimizer  # weights_only: the model alone
    assert callback.removed == [[], [], ["cp-1"], ["cp-2"]]  # what the keep policy deleted, told with each write


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
    assert callback.state() == {  # what a resumed run carries on from: the best value, and what is on disk for the keep policies
        "checkpoint_best": 0.7,
        "checkpoints": [[1, "cp-0001.weights.h5", 0.5], [3, "cp-0003.weights.h5", 0.6], [5, "cp-0005.weights.h5", 0.7]],
    }
    with pytest.raises(ConfigError, match="checkpoint.monitor='val_accuracy' is not a logged metric: loss"):
        callback.on_epoch_end(5, {"loss": 1.0})


def test_keep_policies_combine_and_always_keep_the_newest():
    written = [Written(key, Path(f"cp-{key}"), value) for key, value in [(0, None), (1, 0.9), (2, 0.5), (3, 0.7), (4, 0.6), (5, 0.8), (6, 0.95)]]

    def deleted(mode=Mode.min, **keep):
        return [w.key for w in to_delete(written, KeepConfig(**keep), mode)]

    assert deleted() == []  # no policy: everything stays
    assert deleted(latest=2) == [0, 1, 2, 3, 4]
    assert deleted(best=2) == [0, 1, 3, 5]  # 0.5 and 0.6; the newest stays too; the untrained weights are never "best"
    assert deleted(Mode.max, best=1) == [0, 1, 2, 3, 4, 5]  # the best is the newest
    assert deleted(every=3) == [1, 2, 4, 5]
    assert deleted(latest=1, best=1, every=4) == [1, 3, 5]


def test_a_resumed_callback_goes_on_judging_the_checkpoints_of_the_earlier_session(tiny, folder):
    model, x, y = tiny
    cfg = CheckpointConfig(policy=CheckpointPolicy.every_epoch, keep=KeepConfig(latest=2))
    first = PolicyCheckpoint(cfg, folder, on_write=lambda *args: None)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, shuffle=False, callbacks=[first])
    assert sorted(p.name for p in folder.iterdir()) == ["cp-0002.weights.h5", "cp-0003.weights.h5"]

    removed = []
    second = PolicyCheckpoint(cfg, folder, on_write=lambda record, logs, gone: removed.append([p.name for p in gone]), resumed=True)
    second.load_state(json.loads(json.dumps(first.state())))  # through the training state's JSON
    model.fit(x, y, batch_size=2, initial_epoch=3, epochs=5, verbose=0, shuffle=False, callbacks=[second])

    assert removed == [["cp-0002.weights.h5"], ["cp-0003.weights.h5"]]
    assert sorted(p.name for p in folder.iterdir()) == ["cp-0004.weights.h5", "cp-0005.weights.h5"]
