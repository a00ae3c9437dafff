"""The built-in datasets, each an ordinary `data._target_` like a user's own.

A built-in is a `DataSource`: making one only stores its arguments, `peek` reads
what the model and the format checks need (input shape, class count) without
loading the examples, and `load` reads them. So a missing file, a wrong key or a
model that cannot be built for the data is found before any run starts. A user's
`_target_` may be a DataSource too, or any function that returns the data.
"""

import contextlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import DataError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class Spec:
    """What a model needs to know about the data before it is built."""

    input_shape: tuple  # one example, as the model receives it
    num_classes: int


@dataclass
class Splits:
    """The examples as a source gives them, before the data stage checks and converts them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # where they came from, for people and for MLflow's dataset records


def example_shape(shape: tuple) -> tuple:
    """(height, width) grayscale images get a channels axis, as Keras's image layers expect."""
    return (*shape, 1) if len(shape) == 2 else tuple(shape)


def take(splits: Splits, train_size: Optional[int], test_size: Optional[int], name: str) -> Splits:
    """The first `train_size` / `test_size` examples (all when None)."""
    for split, size, available in (("train", train_size, len(splits.x_train)), ("test", test_size, len(splits.x_test))):
        if size is not None and not 1 <= size <= available:
            raise DataError(f"data.{split}_size={size} but {name} has {available} {split} examples")
    return Splits(splits.x_train[:train_size], splits.y_train[:train_size], splits.x_test[:test_size], splits.y_test[:test_size], splits.source)


class DataSource:
    def peek(self) -> Spec:
        raise NotImplementedError

    def load(self) -> Splits:
        raise NotImplementedError


def _existing_file(path: str, hint: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DataError(f"data.path: no file at {resolved}; {hint}")
    return resolved


class Npz(DataSource):
    """Any .npz holding train and test arrays under the given keys; integer labels.

    `divide_by` scales the inputs (255 for 8-bit pixels); `train_size` / `test_size`
    take the first examples of each split.
    """

    def __init__(self, path: str, x_train: str = "x_train", y_train: str = "y_train", x_test: str = "x_test", y_test: str = "y_test",
                 train_size: Optional[int] = None, test_size: Optional[int] = None, divide_by: float = 1.0):
        self.path, self.keys = path, {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        self.train_size, self.test_size, self.divide_by = train_size, test_size, divide_by
        self.name = "npz"

    def _file(self) -> Path:
        return _existing_file(self.path, "give an .npz with train and test arrays")

    def _open(self, path: Path):
        try:
            npz = np.load(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
            raise DataError(f"{path} is not a readable npz file: {error}") from None
        missing = [f"{role}={key}" for role, key in self.keys.items() if key not in npz.files]
        if missing:
            npz.close()
            raise DataError(f"{path} lacks {', '.join(missing)}: it holds {', '.join(npz.files)} (set data.<role> to the key to use)")
        return npz

    def peek(self) -> Spec:
        path = self._file()
        with self._open(path) as npz, zipfile.ZipFile(path) as archive:
            with archive.open(f"{self.keys['x_train']}.npy") as header:  # the shape without reading the arrays
                version = np.lib.format.read_magic(header)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read(header)
            labels = [npz[self.keys["y_train"]], npz[self.keys["y_test"]]]
        return Spec(example_shape(shape[1:]), int(max(y.max() for y in labels)) + 1)

    def load(self) -> Splits:
        path = self._file()
        with self._open(path) as npz:
            arrays = {role: npz[key] for role, key in self.keys.items()}
        return self._scaled(take(Splits(**arrays, source=str(path)), self.train_size, self.test_size, self.name))

    def _scaled(self, splits: Splits) -> Splits:
        """Inputs divided by `divide_by`: of the examples taken, not of the whole file."""
        if self.divide_by != 1.0:
            splits.x_train, splits.x_test = (x.astype("float32") / np.float32(self.divide_by) for x in (splits.x_train, splits.x_test))
        return splits


class Mnist(Npz):
    """MNIST: Keras downloads and caches it, or `path` names a local mnist.npz in Keras's layout."""

    SHAPE = (28, 28)

    def __init__(self, path: Optional[str] = None, train_size: int = 1000, test_size: int = 1000):
        super().__init__(path or "", train_size=train_size, test_size=test_size, divide_by=255.0)
        self.name = "mnist"

    def _file(self) -> Path:
        return _existing_file(self.path, "give an npz in Keras's MNIST layout, or no path to download MNIST")

    def peek(self) -> Spec:
        spec = super().peek() if self.path else Spec(example_shape(self.SHAPE), 10)
        if spec.input_shape != example_shape(self.SHAPE):
            raise DataError(f"{self.path} is not MNIST: its images are {spec.input_shape[:-1]}, expected {self.SHAPE}")
        return spec

    def load(self) -> Splits:
        if self.path:
            return super().load()
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as error:  # no network, a proxy, a damaged cache: all end the same way for the user
            raise DataError(f"could not download MNIST ({str(error).splitlines()[0]}); set MNIST_NPZ or data.path to a local mnist.npz, or use data=digits") from None
        return self._scaled(take(Splits(x_train, y_train, x_test, y_test, "keras.datasets.mnist"), self.train_size, self.test_size, self.name))


class Digits(DataSource):
    """scikit-learn's bundled 8x8 digits: no network needed; a fixed stratified split."""

    def __init__(self, train_size: int = 1200, test_size: int = 597):
        self.train_size, self.test_size = train_size, test_size

    def peek(self) -> Spec:
        if not (1 <= self.train_size and 1 <= self.test_size and self.train_size + self.test_size <= 1797):
            raise DataError(f"digits has 1797 examples; data.train_size ({self.train_size}) and data.test_size ({self.test_size}) must be at least 1 and add up to at most that")
        return Spec(example_shape((8, 8)), 10)

    def load(self) -> Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        self.peek()
        digits = load_digits()
        x_train, x_test, y_train, y_test = train_test_split(
            digits.images / np.float32(16), digits.target, train_size=self.train_size, test_size=self.test_size, stratify=digits.target, random_state=0
        )
        return Splits(x_train, y_train, x_test, y_test, "sklearn.datasets.load_digits")


@dataclass
class ImageFiles:
    """Images as files on disk, decoded as Keras's image_dataset_from_directory decodes them
    (read, decode, bilinear resize, float32), then divided by `divide_by`.

    A training set too large to hold decoded stays like this: each epoch's batches are
    decoded from disk in that epoch's seeded order (`pipeline.determinism`)."""

    paths: np.ndarray  # str
    image_size: tuple
    channels: int
    divide_by: float

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), *self.image_size, self.channels)

    def decode(self, path):
        import tensorflow as tf

        image = tf.io.decode_image(tf.io.read_file(path), channels=self.channels, expand_animations=False)
        image = tf.image.resize(image, self.image_size, method="bilinear")
        image.set_shape((*self.image_size, self.channels))
        return image / self.divide_by

    def read(self) -> np.ndarray:
        """Every image, decoded, in order."""
        import tensorflow as tf

        images = tf.data.Dataset.from_tensor_slices(self.paths).map(self.decode, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
        return np.concatenate(list(images.as_numpy_iterator()))


class ImageFolder(DataSource):
    """Images in one subfolder per class, listed and split with keras.utils.image_dataset_from_directory.

    `path/train` and `path/test` are used when both exist; otherwise `validation_split`
    of the images, chosen with `seed`, is the test set. Pixels stay 0-255, as Keras
    Applications models expect; `divide_by=255` scales them to [0, 1]. A training set
    whose decoded images would take more than `in_memory_mb` is streamed from disk.
    """

    CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}

    def __init__(self, path: str, image_size: tuple = (64, 64), color_mode: str = "rgb", validation_split: float = 0.2, seed: int = 0,
                 divide_by: float = 1.0, in_memory_mb: float = 2048):
        self.path, self.image_size, self.color_mode = Path(path).expanduser().resolve(), tuple(image_size), color_mode
        self.validation_split, self.seed, self.divide_by, self.in_memory_mb = validation_split, seed, divide_by, in_memory_mb

    def _classes(self, folder: Path) -> list[str]:
        if not folder.is_dir():
            raise DataError(f"data.path: no folder at {folder}; give a folder with one subfolder of images per class")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(classes) < 2:
            raise DataError(f"data.path: {folder} has {len(classes)} class subfolders; a classifier needs at least 2, each holding images ({', '.join(IMAGE_SUFFIXES)})")
        return classes

    @property
    def _split_folders(self) -> bool:
        return (self.path / "train").is_dir() and (self.path / "test").is_dir()

    def peek(self) -> Spec:
        if self.color_mode not in self.CHANNELS:
            raise DataError(f"data.color_mode={self.color_mode!r} is not one of: {', '.join(self.CHANNELS)}")
        if not self._split_folders and not 0.0 < self.validation_split < 1.0:
            raise DataError(f"data.validation_split must be in (0, 1) when {self.path} has no train/ and test/ folders (got {self.validation_split})")
        classes = self._classes(self.path / "train" if self._split_folders else self.path)
        return Spec((*self.image_size, self.CHANNELS[self.color_mode]), len(classes))

    def _list(self, folder: Path, **split) -> list:
        """(files, labels) per split, as image_dataset_from_directory lists, labels and splits them."""
        import keras

        options = dict(labels="inferred", label_mode="int", color_mode=self.color_mode, image_size=self.image_size, batch_size=None, seed=self.seed, verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):  # "Using N files for training": the data stage's own line says so
            datasets = keras.utils.image_dataset_from_directory(folder, **options, **split)
        found = []
        for dataset in datasets if isinstance(datasets, (list, tuple)) else [datasets]:
            paths = np.array(dataset.file_paths)
            labels = np.array([dataset.class_names.index(Path(p).parent.name) for p in paths], dtype="int64")
            found.append((ImageFiles(paths, self.image_size, self.CHANNELS[self.color_mode], self.divide_by), labels))
        return found

    def load(self) -> Splits:
        self.peek()
        if self._split_folders:
            ((train, y_train),), ((test, y_test),) = self._list(self.path / "train"), self._list(self.path / "test")
        else:
            (train, y_train), (test, y_test) = self._list(self.path, validation_split=self.validation_split, subset="both")
        decoded_mb = np.prod(train.shape, dtype=np.int64) * 4 / 2**20
        x_train = train if decoded_mb > self.in_memory_mb else train.read()
        return Splits(x_train, y_train, test.read(), y_test, str(self.path))


def as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """A tf.data.Dataset of (x, y) examples, or of batches of them, as two arrays."""
    xs, ys = [], []
    batched = dataset.element_spec[0].shape.rank is not None and len(dataset.element_spec[0].shape) > 0 and dataset.element_spec[0].shape[0] is None
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("a data split is empty")
    join = np.concatenate if batched else np.stack
    return join(xs), join(ys)
