"""The one registry of save formats.

Each format knows how to save a model, how a user loads it back, and whether
it carries the optimizer's state. The save stage, the checkpoint callback and
reload-verify all iterate this table, so a new format is one new entry.
"""

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from pipeline.errors import ArtifactError
from pipeline.trust import explain_load_failure

PREDICT_BATCH = 1024


@dataclass(frozen=True)
class LoadContext:
    """What a loader may need besides the path."""

    fresh_model: Callable[[], Any]  # a compiled, untrained model of the trained architecture
    safe_mode: bool = True  # Keras refuses to deserialize code (e.g. Lambda layers) when True


@dataclass
class Restored:
    """A model loaded back from disk, as far as verification needs it."""

    predict: Callable[[np.ndarray], np.ndarray]
    optimizer: Optional[Any]  # the restored optimizer, where the format carries one
    handle: Any  # the loaded object; kept so TensorFlow does not free what `predict` calls


@dataclass(frozen=True)
class SaveFormat:
    name: str
    suffix: str  # appended to the artifact's name; "" for folders
    carries_optimizer: bool
    save: Callable[[Any, Path], None]
    load: Callable[[Path, LoadContext], Restored]
    description: str
    hdf5: bool = False  # one HDF5 file, which can be rewritten compressed


def raw_state_bytes(model, with_optimizer: bool) -> int:
    """Bytes of the arrays a format has to store: the weights, and the optimizer's variables if it carries them."""
    variables = list(model.weights) + (list(model.optimizer.variables) if with_optimizer and model.optimizer is not None else [])
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize for v in variables))


def rewrite_hdf5(path: Path, compression: Optional[str], level: int, shuffle: bool, chunk_kib: Optional[int]) -> None:
    """Rewrite an HDF5 file with its arrays chunked and compressed, and nothing else changed.

    Keras's HDF5 writers take no such options. The groups, dataset names and
    attributes stay as Keras wrote them and h5py decompresses on read, so Keras's
    `load_weights` and `load_model` read the rewritten file as before.
    """
    import h5py

    def filters(dataset) -> dict:
        if dataset.ndim == 0 or dataset.size < 2:  # scalars cannot be chunked
            return {}
        options: dict[str, Any] = {"compression": compression, "shuffle": shuffle and compression is not None}
        if compression == "gzip":
            options["compression_opts"] = level
        if chunk_kib is not None:
            row_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
            options["chunks"] = (max(1, min(dataset.shape[0], chunk_kib * 1024 // row_bytes)), *dataset.shape[1:])
        else:
            options["chunks"] = True
        return options

    rewritten = path.with_name(f"{path.name}.rewrite")
    with h5py.File(path, "r") as source, h5py.File(rewritten, "w") as target:
        target.attrs.update(source.attrs)

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                copied = target.require_group(name)
            else:
                copied = target.create_dataset(name, data=obj[()], dtype=obj.dtype, **filters(obj))
            copied.attrs.update(obj.attrs)

        source.visititems(copy)
    os.replace(rewritten, path)


def predict_logits(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x, batch_size=PREDICT_BATCH, verbose=0)


def _keras_restored(model) -> Restored:
    return Restored(predict=lambda x: predict_logits(model, x), optimizer=model.optimizer, handle=model)


def _save_keras(model, path: Path) -> None:
    model.save(path)


def _load_keras(path: Path, ctx: LoadContext) -> Restored:
    import keras

    return _keras_restored(keras.models.load_model(path, safe_mode=ctx.safe_mode))


def _save_h5(model, path: Path) -> None:
    # Keras 3.15's HDF5 writer pops "optimizer" from the live model's compile
    # config, so a .keras saved afterwards would lose the optimizer. Put it back.
    compile_config = getattr(model, "_compile_config", None)
    kept = dict(compile_config.config) if compile_config is not None else None
    try:
        model.save(path)
    finally:
        if kept is not None:
            compile_config.config.update(kept)


def _load_h5(path: Path, ctx: LoadContext) -> Restored:
    """keras.models.load_model, plus the optimizer state it drops.

    Keras 3.15's HDF5 loader builds the optimizer from `model._trainable_variables`,
    which is empty for Sequential and functional models, so setting the saved slot
    variables fails and the model comes back with a fresh optimizer. The file does
    hold that state: read it with Keras's own HDF5 reader into a properly built one.
    """
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import load_optimizer_weights_from_hdf5_group

    model = keras.models.load_model(path, safe_mode=ctx.safe_mode)
    with h5py.File(path, "r") as f:
        saved = [np.asarray(v) for v in load_optimizer_weights_from_hdf5_group(f)] if "optimizer_weights" in f else []
    if saved and len(model.optimizer.variables) != len(saved):
        optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
        optimizer.build(model.trainable_variables)
        optimizer.set_weights(saved)
        model.optimizer = optimizer
    return _keras_restored(model)


def _save_weights(model, path: Path) -> None:
    model.save_weights(path)


def _load_weights(path: Path, ctx: LoadContext) -> Restored:
    """Keras 3 weight files hold the optimizer's variables too; they load only into a built optimizer."""
    model = ctx.fresh_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return _keras_restored(model)


def _save_savedmodel(model, path: Path) -> None:
    model.export(path, format="tf_saved_model", verbose=False)


def _load_savedmodel(path: Path, ctx: LoadContext) -> Restored:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        batches = [loaded.serve(tf.constant(x[i : i + PREDICT_BATCH])).numpy() for i in range(0, len(x), PREDICT_BATCH)]
        return np.concatenate(batches)

    return Restored(predict=predict, optimizer=None, handle=loaded)


def tf_checkpoint(model, with_optimizer: bool):
    """The object graph a TF checkpoint holds: the model, and its optimizer if asked."""
    import tensorflow as tf

    if with_optimizer:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        return tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.Checkpoint(model=model)


def _save_tf_checkpoint(model, path: Path) -> None:
    import tensorflow as tf

    tf.train.CheckpointManager(tf_checkpoint(model, with_optimizer=True), str(path), max_to_keep=1).save()


def checkpoint_prefix(path: Path) -> str:
    """The TF checkpoint a path names: a folder's newest, found as a user would, or a prefix given directly."""
    import tensorflow as tf

    if path.is_dir():
        prefix = tf.train.latest_checkpoint(str(path))
        if prefix is None:
            raise ArtifactError(f"no TF checkpoint in {path} (tf.train.latest_checkpoint found none)")
        return prefix
    return str(path.with_suffix("")) if path.suffix == ".index" else str(path)


def load_tf_checkpoint(path: Path, ctx: LoadContext) -> Restored:
    """Restore the newest checkpoint in a folder into a fresh model.

    The optimizer is built first: restoring into an unbuilt optimizer silently
    skips its slot variables.
    """
    prefix = checkpoint_prefix(path)
    model = ctx.fresh_model()
    tf_checkpoint(model, with_optimizer=True).restore(prefix).expect_partial()  # a model-only checkpoint has no optimizer
    return _keras_restored(model)


FORMATS: dict[str, SaveFormat] = {
    f.name: f
    for f in [
        SaveFormat("keras", ".keras", True, _save_keras, _load_keras, "Keras v3 zip: config, weights, optimizer"),
        SaveFormat("h5", ".h5", True, _save_h5, _load_h5, "legacy HDF5 whole model", hdf5=True),
        SaveFormat("savedmodel", "", False, _save_savedmodel, _load_savedmodel, "TF SavedModel via model.export, for serving"),
        SaveFormat("weights", ".weights.h5", True, _save_weights, _load_weights, "Keras weights file: layer and optimizer variables, no config", hdf5=True),
        SaveFormat("tf_checkpoint", "", True, _save_tf_checkpoint, load_tf_checkpoint, "tf.train.Checkpoint of model and optimizer"),
    ]
}


def load(fmt: SaveFormat, path: Path, ctx: LoadContext) -> Restored:
    """Load `path` as a user would; any failure becomes one ArtifactError that says what to do."""
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    try:
        return fmt.load(path, ctx)
    except ArtifactError:
        raise
    except Exception as error:  # Keras, h5py, zipfile and TensorFlow each fail in their own way
        raise ArtifactError(explain_load_failure(fmt.name, path, error)) from error


def _io_reason(error: BaseException) -> Optional[str]:
    """The operating system's reason for a failed write (disk full, read-only...), if that is what it was."""
    if isinstance(error, OSError):
        return os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    if any(cls.__name__ == "OpError" for cls in type(error).__mro__):  # TensorFlow's SaveV2 and friends
        return str(error).splitlines()[0].rsplit("; ", 1)[-1].split(" [Op:")[0]
    return None


def artifact_kind(path: Path) -> str:
    """Which of the registry's formats `path` is, from its name and, for folders, its files."""
    if not path.exists() and not path.with_name(path.name + ".index").exists():
        raise ArtifactError(f"{path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        if (path / "checkpoint").exists() or any(path.glob("*.index")):
            return "tf_checkpoint"
    elif path.name.endswith(".weights.h5"):
        return "weights"
    elif path.suffix in (".keras", ".h5"):
        return path.suffix[1:]
    elif path.suffix == ".index" or path.with_name(path.name + ".index").exists():
        return "tf_checkpoint"
    raise ArtifactError(f"cannot tell what {path} is: expected a .keras, .h5 or .weights.h5 file, a SavedModel folder or a TF checkpoint")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to write to; rename it into place only on success.

    A crash, kill or full disk mid-write leaves no file under the final name: the
    `.partial-` file is removed, or left for the next write to replace after a kill.
    The suffix is kept because Keras picks the format from it.
    """
    temporary = final.with_name(f".partial-{final.name}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove(temporary)
        yield temporary
        _remove(final)
        os.replace(temporary, final)
    except BaseException as error:
        _close_left_open(temporary)
        _remove(temporary)
        reason = _io_reason(error)
        if reason is None:
            raise
        raise ArtifactError(f"writing {final} failed: {reason}; nothing was written under that name") from error


def _close_left_open(temporary: Path) -> None:
    """Close an HDF5 file that a failed writer left open at `temporary`.

    Keras does not close its HDF5 store when a write fails (a full disk, say). h5py
    would retry the flush as the objects are collected, and at exit the interpreter
    crashes. Closing it here fails on the flush again, but releases the file.
    """
    import h5py

    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if os.path.abspath(os.fsdecode(file_id.name)) == os.path.abspath(temporary):
            try:
                h5py.File(file_id).close()
            except (OSError, RuntimeError):
                pass  # the flush failed again; the file is closed all the same


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink(missing_ok=True)
