"""What every save format provides, with the defaults most Keras formats share.

A format owns everything about its files: how a model is written and read back,
how a path is recognized, what `inspect` shows of it, which files it writes, how
its weights go into a model that is already built, and how training checkpoints
are written in it. Callers hold a `SaveFormat` and never branch on its name.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipeline.files import atomic_path, files_under
from pipeline.page_cache import Recycled

PREDICT_BATCH = 1024


@dataclass(frozen=True)
class LoadContext:
    """What a loader may need besides the path."""

    fresh_model: Callable[[], Any]  # a compiled, untrained model of the trained architecture
    safe_mode: bool = True  # refuse code (Lambda layers) and configs naming anything outside the allow-list
    declared: tuple = ()  # modules the user imported on purpose: their classes and functions are allowed


@dataclass
class Restored:
    """A model loaded back from disk, as far as verification needs it."""

    predict: Callable[[np.ndarray], np.ndarray]
    optimizer: Optional[Any]  # the restored optimizer, where the format carries one
    handle: Any  # the loaded object; kept so TensorFlow does not free what `predict` calls
    # (batch, calls) -> seconds a call, timed inside the runtime: for one that `predict` reaches
    # across a process boundary (the browser), whose crossing is not the runtime's cost
    seconds_per_call: Optional[Callable[[np.ndarray, int], float]] = None


def predict_logits(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x, batch_size=PREDICT_BATCH, verbose=0)


def keras_restored(model) -> Restored:
    """A loaded Keras model; one saved before `compile()` has no optimizer."""
    return Restored(predict=lambda x: predict_logits(model, x), optimizer=getattr(model, "optimizer", None), handle=model)


def build_optimizer(model) -> None:
    """Create the optimizer's variables. Keras and TensorFlow restore optimizer state
    only into a built optimizer; into an unbuilt one they skip it, silently or not."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def raw_state_bytes(model, with_optimizer: bool) -> int:
    """Bytes of the arrays a format has to store: the weights, and the optimizer's variables if it carries them."""
    variables = list(model.weights) + (list(model.optimizer.variables) if with_optimizer and model.optimizer is not None else [])
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize for v in variables))


class Checkpoints:
    """Training checkpoints in one folder, one file each, named `{prefix}-{number}` (zero-padded
    to `width`) and written atomically. The checkpoint policy decides when to write, the keep
    policies which to remove."""

    def __init__(self, fmt: "SaveFormat", model, directory: Path, prefix: str, width: int):
        self.format, self.model, self.directory, self.prefix, self.width = fmt, model, directory, prefix, width
        self.carries_optimizer = fmt.carries_optimizer
        self._cache = Recycled()  # each checkpoint written into the page-cache memory of the one before

    def path(self, number: int) -> Path:
        return self.directory / f"{self.prefix}-{number:0{self.width}d}{self.format.suffix}"

    def write(self, number: int) -> Path:
        """Write the model's current state; returns the checkpoint's path."""
        path = self.path(number)
        self._cache.release()
        with atomic_path(path) as temporary:
            self.format.save(self.model, temporary)
        self._cache.hold(self.format.files(path))
        return path

    def remove(self, path: Path) -> None:
        for file in self.format.files(path):
            file.unlink(missing_ok=True)


class SaveFormat:
    """One way of writing a model to disk. Subclasses set the attributes and implement
    `save`, `load` and `describe`; the other methods suit single-file Keras formats."""

    name: str
    suffix: str  # appended to the artifact's name; "" for folders
    description: str
    carries_optimizer: bool
    carries_architecture: bool  # loads without a model built from the config
    hdf5: bool = False  # one HDF5 file, which can be rewritten compressed
    holds: tuple = ("sequential", "functional", "subclassed")  # the model kinds (pipeline.models.model_kind) it can save
    deployed: bool = False  # exported for inference, run in a runtime of its own (pipeline.formats.exported)
    described_without_tensorflow: bool = False  # `describe` reads the files with zipfile, json and h5py alone
    tolerance_floor: float = 0.0  # reload-verify holds its logits to max(verify.atol, this), unless verify.tolerance.<name> is set

    @property
    def looks_like(self) -> str:
        """How a user recognizes a path in this format, for error messages."""
        return f"a {self.suffix} file"

    def save(self, model, path: Path) -> None:
        raise NotImplementedError

    quantized: str = ""  # how a quantized export was quantized; its logits may differ, its accuracy is checked instead

    def with_options(self, options) -> "SaveFormat":
        """This format as the run's `save.<name>` options configure it; most take none of theirs."""
        return self

    def missing_packages(self) -> list[str]:
        """The pip packages this format needs that are not installed."""
        return []

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        """Load `path` the way a user would."""
        raise NotImplementedError

    def detect(self, path: Path) -> bool:
        """Whether `path` (which exists) is in this format, from its name and, for folders, its files."""
        return not path.is_dir() and path.name.endswith(self.suffix)

    def files(self, path: Path) -> list[Path]:
        """The files that saving to `path` wrote."""
        return files_under(path)

    def describe(self, path: Path) -> dict:
        """What `inspect` reports, as JSON-able data, read without running anything the file holds."""
        raise NotImplementedError

    def render(self, info: dict, full: bool = False) -> list[str]:
        """`describe`'s data as text for people: at a glance, or everything."""
        return []

    def summarize(self, restored: Restored) -> dict:
        """What came back from `load`, in a line's worth of facts."""
        model, optimizer = restored.handle, restored.optimizer
        return {
            "class": type(model).__name__,
            "layers": len(model.layers),
            "parameters": int(model.count_params()),
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "optimizer_iterations": int(optimizer.iterations.numpy()) if optimizer is not None else None,
        }

    def init_weights(self, model, path: Path) -> None:
        """Fill a built model with the layer weights at `path`; the optimizer's state is not wanted."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(path)

    def latest_checkpoint(self, directory: Path) -> Optional[Path]:
        """The newest training checkpoint in a folder, found the way a user would look for it."""
        found = sorted(directory.glob(f"cp-*{self.suffix}"))
        return found[-1] if found else None

    def checkpoints(self, model, directory: Path, prefix: str, width: int, with_optimizer: bool) -> Checkpoints:
        """Where training checkpoints of `model` in this format are written. Keras files always hold
        the optimizer; formats that can do otherwise override this."""
        return Checkpoints(self, model, directory, prefix, width)
