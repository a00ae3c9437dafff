"""The data stage: subsets, scaling and layout, and clear errors for a bad dataset file."""

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.stages.data import load_data


def write_mnist_like(path, n_train=50, n_test=20, **replace):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
        **replace,
    }
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("layout, shape", [("flat", (784,)), ("image", (28, 28, 1))])
def test_mnist_npz_subset_scaled_and_shaped(layout, shape, tmp_path):
    arrays = write_mnist_like(tmp_path / "mnist.npz")

    data = load_data(DataConfig(name="mnist", path=str(tmp_path / "mnist.npz"), train_size=30, test_size=10), layout)

    assert data.x_train.shape == (30, *shape) and data.x_test.shape == (10, *shape)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    np.testing.assert_allclose(data.x_train.reshape(30, 28, 28), arrays["x_train"][:30] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, arrays["y_test"][:10])
    assert data.source == str(tmp_path / "mnist.npz")


def test_digits_needs_no_download():
    data = load_data(DataConfig(name="digits", train_size=100, test_size=50), "image")
    assert data.x_train.shape == (100, 8, 8, 1) and data.num_classes == 10 and data.x_train.max() <= 1.0


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no file at"),
        (lambda p: p.write_bytes(b"not a zip at all"), "is not a readable npz file"),
        (lambda p: write_mnist_like(p, y_test=None), "it lacks y_test"),
        (lambda p: write_mnist_like(p, x_train=np.zeros((50, 32, 32), np.uint8)), "is not MNIST: x_train (50, 32, 32)"),
    ],
)
def test_bad_mnist_file_is_a_clear_error(setup, message, tmp_path):
    path = tmp_path / "mnist.npz"
    setup(path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(DataConfig(name="mnist", path=str(path), train_size=10, test_size=10), "flat")


def test_subset_larger_than_the_dataset_is_refused(tmp_path):
    write_mnist_like(tmp_path / "mnist.npz")
    with pytest.raises(DataError, match="data.train_size=100 but mnist has 50 train examples"):
        load_data(DataConfig(name="mnist", path=str(tmp_path / "mnist.npz"), train_size=100, test_size=10), "flat")
