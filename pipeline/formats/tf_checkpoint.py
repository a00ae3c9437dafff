"""TF checkpoints: `tf.train.Checkpoint` index and data shards, and the folder's `checkpoint` state file."""

from pathlib import Path
from typing import Optional

from pipeline.errors import ArtifactError
from pipeline.files import atomic_path, files_under
from pipeline.formats.base import LoadContext, Restored, SaveFormat, build_optimizer, keras_restored
from pipeline.page_cache import Recycled


def object_graph(model, with_optimizer: bool):
    """The object graph a TF checkpoint holds: the model, and its optimizer if asked."""
    import tensorflow as tf

    if with_optimizer:
        build_optimizer(model)
        return tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.Checkpoint(model=model)


def checkpoint_prefix(path: Path) -> str:
    """The TF checkpoint a path names: a folder's newest, found as a user would, or a prefix given directly."""
    import tensorflow as tf

    if path.is_dir():
        prefix = tf.train.latest_checkpoint(str(path))
        if prefix is None:
            raise ArtifactError(f"no TF checkpoint in {path} (tf.train.latest_checkpoint found none)")
        return prefix
    return str(path.with_suffix("")) if path.suffix == ".index" else str(path)


def checkpoint_variables(prefix: str) -> list[dict]:
    """Every variable a checkpoint (or a SavedModel's variables/) stores, with shape and dtype."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return [{"name": name, "shape": list(shapes[name]), "dtype": dtypes[name].name} for name in sorted(shapes) if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def render_variables(variables: list[dict]) -> list[str]:
    return [f"variables ({len(variables)}):"] + [f"  {v['name']}  {tuple(v['shape'])} {v['dtype']}" for v in variables]


def prefix_files(prefix: Path) -> list[Path]:
    """A checkpoint's own files: its index and data shards."""
    return sorted(prefix.parent.glob(prefix.name + ".*"))


class ManagedCheckpoints:
    """Training checkpoints as `tf.train.Checkpoint` prefixes (`cp-5.index`, `cp-5.data-*`), listed
    in the folder's `checkpoint` state file as `tf.train.CheckpointManager` lists them, so
    `tf.train.latest_checkpoint` finds the newest; the keep policies decide which stay."""

    def __init__(self, model, directory: Path, prefix: str, with_optimizer: bool):
        import tensorflow as tf

        self.carries_optimizer = with_optimizer
        self.directory, self.prefix = directory, prefix
        self._checkpoint = object_graph(model, with_optimizer)
        state = tf.train.get_checkpoint_state(str(directory))  # a resumed run's earlier checkpoints stay listed
        self._listed = [Path(p).name for p in (state.all_model_checkpoint_paths if state else []) if Path(p + ".index").exists()]
        self._cache = Recycled()  # each checkpoint written into the page-cache memory of the one before

    def path(self, number: int) -> Path:
        return self.directory / f"{self.prefix}-{number}"

    def write(self, number: int) -> Path:
        path = self.path(number)
        self._cache.release()
        self._checkpoint.write(str(path))
        self._cache.hold(prefix_files(path))
        self._listed = [n for n in self._listed if n != path.name] + [path.name]
        self._record()
        return path

    def remove(self, path: Path) -> None:
        for file in prefix_files(path):
            file.unlink(missing_ok=True)
        self._listed = [n for n in self._listed if n != path.name]
        self._record()

    def _record(self) -> None:
        """The folder's `checkpoint` file: TensorFlow's CheckpointState text proto, as the manager
        writes it, with names relative to the folder so that it can move."""
        lines = [f'model_checkpoint_path: "{self._listed[-1]}"', *(f'all_model_checkpoint_paths: "{name}"' for name in self._listed)]
        with atomic_path(self.directory / "checkpoint") as temporary:
            temporary.write_text("\n".join(lines) + "\n")


class TFCheckpointFormat(SaveFormat):
    name = "tf_checkpoint"
    suffix = ""
    description = "tf.train.Checkpoint of model and optimizer"
    carries_optimizer = True
    carries_architecture = False
    looks_like = "a TF checkpoint (folder or prefix)"

    def save(self, model, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        ManagedCheckpoints(model, path, "ckpt", with_optimizer=True).write(1)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        """Restore the newest checkpoint in a folder, or the one a prefix names, into a fresh model."""
        prefix = checkpoint_prefix(path)
        model = ctx.fresh_model()
        object_graph(model, with_optimizer=True).restore(prefix).expect_partial()  # a model-only checkpoint has no optimizer
        return keras_restored(model)

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return (path / "checkpoint").exists() or any(path.glob("*.index"))
        return path.suffix == ".index" or path.with_name(path.name + ".index").exists()

    def files(self, path: Path) -> list[Path]:
        """A folder's files; for a prefix, its index and data shards and the folder's `checkpoint` state."""
        if path.is_dir():
            return files_under(path)
        state = path.parent / "checkpoint"
        return prefix_files(path) + ([state] if state.exists() else [])

    def describe(self, path: Path) -> dict:
        prefix = checkpoint_prefix(path)
        return {"checkpoint": prefix, "variables": checkpoint_variables(prefix)}

    def render(self, info: dict, full: bool = False) -> list[str]:
        return [f"checkpoint: {info['checkpoint']}", *render_variables(info["variables"])]

    def init_weights(self, model, path: Path) -> None:
        object_graph(model, with_optimizer=False).restore(checkpoint_prefix(path)).assert_existing_objects_matched()

    def latest_checkpoint(self, directory: Path) -> Optional[Path]:
        import tensorflow as tf

        prefix = tf.train.latest_checkpoint(str(directory))
        return Path(prefix) if prefix else None

    def checkpoints(self, model, directory: Path, prefix: str, width: int, with_optimizer: bool) -> ManagedCheckpoints:
        return ManagedCheckpoints(model, directory, prefix, with_optimizer)
