"""Stage 1: load a dataset, take the configured subsets and shape them for the model."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from zipfile import BadZipFile

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError

log = logging.getLogger(__name__)

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Dataset:
    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: Optional[tuple] = None  # (height, width[, channels]) for image data: how to draw an example

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


@dataclass
class RawImages:
    """Images (N, height, width) as the source gives them, before scaling."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    max_value: float
    source: str


def check_source(cfg: DataConfig) -> None:
    """A missing file is found before anything starts; what is inside is read by the data stage."""
    path = Path(cfg.path).expanduser().resolve() if cfg.path else None
    if path is not None and not path.is_file():
        raise DataError(f"data.path: no file at {path}; give an npz in Keras's MNIST layout, or no path to download MNIST")


def _read_mnist_npz(path: Path) -> tuple:
    try:
        with np.load(path) as npz:
            missing = [k for k in MNIST_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} is not an MNIST npz: it lacks {', '.join(missing)} (expected keys {', '.join(MNIST_KEYS)})")
            return tuple(npz[k] for k in MNIST_KEYS)
    except (BadZipFile, OSError, ValueError, EOFError) as error:
        raise DataError(f"{path} is not a readable npz file: {error}") from None


def _mnist(cfg: DataConfig) -> RawImages:
    if cfg.path:
        check_source(cfg)
        path = Path(cfg.path).expanduser().resolve()
        x_train, y_train, x_test, y_test = _read_mnist_npz(path)
        source = str(path)
    else:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as error:  # no network, a proxy, a damaged cache: all end the same way for the user
            raise DataError(
                f"could not download MNIST ({str(error).splitlines()[0]}); set MNIST_NPZ or data.path to a local mnist.npz, or use data=digits"
            ) from None
        source = "keras.datasets.mnist"
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"{source} is not MNIST: x_{name} {x.shape} / y_{name} {y.shape}, expected (N, 28, 28) / (N,)")
    return RawImages(x_train, y_train, x_test, y_test, 255.0, source)


def _digits(cfg: DataConfig) -> RawImages:
    """scikit-learn's bundled 8x8 digits: no network needed; a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    if cfg.train_size + cfg.test_size > len(digits.images):
        raise DataError(f"digits has {len(digits.images)} examples; data.train_size + data.test_size = {cfg.train_size + cfg.test_size}")
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, train_size=cfg.train_size, test_size=cfg.test_size, stratify=digits.target, random_state=0
    )
    return RawImages(x_train, y_train, x_test, y_test, 16.0, "sklearn.datasets.load_digits")


DATASETS: dict[str, Callable[[DataConfig], RawImages]] = {"mnist": _mnist, "digits": _digits}


def load_data(cfg: DataConfig, layout: str) -> Dataset:
    """Take the first train/test examples, scale to [0, 1], flatten or add a channel axis."""
    raw = DATASETS[cfg.name](cfg)
    for split, size, available in (("train", cfg.train_size, len(raw.x_train)), ("test", cfg.test_size, len(raw.x_test))):
        if size > available:
            raise DataError(f"data.{split}_size={size} but {cfg.name} has {available} {split} examples")

    def shape(x: np.ndarray, n: int) -> np.ndarray:
        x = x[:n].astype("float32") / raw.max_value
        return x.reshape(n, -1) if layout == "flat" else x[..., np.newaxis]

    data = Dataset(
        name=cfg.name,
        source=raw.source,
        x_train=shape(raw.x_train, cfg.train_size),
        y_train=raw.y_train[: cfg.train_size].astype("int64"),
        x_test=shape(raw.x_test, cfg.test_size),
        y_test=raw.y_test[: cfg.test_size].astype("int64"),
        num_classes=int(max(raw.y_train.max(), raw.y_test.max())) + 1,
        image_shape=tuple(raw.x_train.shape[1:]),
    )
    log.info("data    | %s: %d train, %d test, input %s, from %s", data.name, len(data.x_train), len(data.x_test), data.input_shape, data.source)
    return data
