"""Stage 1: load the dataset `data._target_` names, check it, and hold it as arrays.

A built-in `DataSource` or a user's own function may give the data as arrays,
`((x_train, y_train), (x_test, y_test))`, or as a `(train, test)` pair of
tf.data.Datasets of `(x, y)` examples (batched or not), which is read into arrays
once. An image folder too large to hold decoded keeps its training set as files.
Either way each epoch's order is drawn from the seed and the epoch alone
(`pipeline.determinism`), so it is exact and resumable.
"""

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from pipeline.config import DataConfig
from pipeline.datasets import DataSource, ImageFiles, Splits, as_arrays, example_shape
from pipeline.errors import DataError
from pipeline.targets import check_arguments, resolve

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    name: str
    source: str
    x_train: Union[np.ndarray, ImageFiles]  # ImageFiles: too large to hold decoded, read from disk each epoch
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: Optional[tuple] = None  # (height, width[, channels]) for image data: how to draw an example

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def streamed(self) -> bool:
        return isinstance(self.x_train, ImageFiles)

    @property
    def train_record(self) -> np.ndarray:
        """What MLflow records as the training set: the examples, or, streamed, the files' paths."""
        return self.x_train.paths if self.streamed else self.x_train


def data_loader(cfg: DataConfig) -> Callable:
    """The callable `data._target_` names, checked against the keys the config passes it."""
    load = resolve(cfg.target, "data._target_")
    check_arguments(load, cfg.arguments, (), "data", cfg.target)
    return load


def data_source(cfg: DataConfig, load: Optional[Callable] = None):
    """What `data._target_` gives when called with its arguments: a DataSource (not yet read),
    or, from a user's function, the data itself."""
    try:
        return (load or data_loader(cfg))(**cfg.arguments)
    except (DataError, OSError) as error:
        raise DataError(str(error).splitlines()[0]) from None


def _splits(result, target: str) -> Splits:
    if isinstance(result, DataSource):
        return result.load()
    wrong = f"data._target_={target} returned a {type(result).__name__}; return ((x_train, y_train), (x_test, y_test)) arrays or a (train, test) pair of tf.data.Datasets of (x, y)"
    try:
        train, test = result
        if hasattr(train, "element_spec"):  # tf.data.Datasets, read once (not unpacked, which would iterate them)
            (x_train, y_train), (x_test, y_test) = as_arrays(train), as_arrays(test)
        else:
            (x_train, y_train), (x_test, y_test) = train, test
    except (TypeError, ValueError):
        raise DataError(wrong) from None
    return Splits(*(np.asarray(a) for a in (x_train, y_train, x_test, y_test)), source=target)


def _labels(y: np.ndarray, split: str, n: int) -> np.ndarray:
    if y.shape != (n,) or not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))) or (n and y.min() < 0):
        raise DataError(f"y_{split} must be {n} integer class labels from 0 (got shape {y.shape}, dtype {y.dtype}); one-hot labels: take argmax")
    return y.astype("int64")


def load_data(cfg: DataConfig, source=None) -> Dataset:
    """Read the data, cast inputs to float32, give (height, width) images a channels axis, and check the labels."""
    source = data_source(cfg) if source is None else source
    splits = _splits(source, cfg.target)
    xs = {}
    for split, x in (("train", splits.x_train), ("test", splits.x_test)):
        if isinstance(x, ImageFiles):  # decoded batch by batch as training goes
            xs[split] = x
            continue
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
            raise DataError(f"x_{split} must be a numeric array of examples (got shape {x.shape}, dtype {x.dtype})")
        xs[split] = x.astype("float32", copy=False).reshape(len(x), *example_shape(x.shape[1:]))
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DataError(f"train examples are {xs['train'].shape[1:]} but test examples are {xs['test'].shape[1:]}")
    y_train, y_test = _labels(splits.y_train, "train", len(xs["train"])), _labels(splits.y_test, "test", len(xs["test"]))
    shape = xs["train"].shape[1:]
    data = Dataset(
        name=cfg.name,
        source=splits.source,
        x_train=xs["train"],
        y_train=y_train,
        x_test=xs["test"],
        y_test=y_test,
        num_classes=int(max(y_train.max(), y_test.max())) + 1,
        image_shape=shape if len(shape) == 3 and shape[-1] in (1, 3) else None,
    )
    streamed = ", the training set streamed from disk" if data.streamed else ""
    log.info("data    | %s: %d train, %d test, input %s, %d classes, from %s%s", data.name, len(data.x_train), len(data.x_test), data.input_shape, data.num_classes, data.source, streamed)
    return data
