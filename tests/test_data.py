"""The data stage: built-in sources, any npz, image folders and a user's function, their
subsets, scaling and layout, and a clear error for each bad dataset."""

import json

import numpy as np
import pytest
from my_models.make_data import write_image_folder

from conftest import EXPERIMENT
from pipeline.config import DataConfig
from pipeline.datasets import Digits, ImageFolder, Mnist, Npz
from pipeline.errors import ConfigError, DataError
from pipeline.stages.data import load_data
from pipeline.task import run


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


def data_cfg(target: str, name: str = "", **arguments) -> DataConfig:
    return DataConfig.parse({"_target_": target, "name": name, **arguments})


def test_mnist_npz_subset_scaled_and_shaped(tmp_path):
    arrays = write_mnist_like(tmp_path / "mnist.npz")

    data = load_data(data_cfg("pipeline.datasets.Mnist", path=str(tmp_path / "mnist.npz"), train_size=30, test_size=10))

    assert data.name == "mnist" and data.x_train.shape == (30, 28, 28, 1) and data.x_test.shape == (10, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    np.testing.assert_allclose(data.x_train[..., 0], arrays["x_train"][:30] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, arrays["y_test"][:10])
    assert data.source == str(tmp_path / "mnist.npz") and data.image_shape == (28, 28, 1)


def test_digits_needs_no_download():
    data = load_data(data_cfg("pipeline.datasets.Digits", train_size=100, test_size=50))
    assert data.x_train.shape == (100, 8, 8, 1) and data.num_classes == 10 and data.x_train.max() <= 1.0


def test_any_npz_with_its_own_keys_flat_or_image(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 6)).astype("float64")
    np.savez(tmp_path / "table.npz", a=features[:30], b=np.arange(30) % 4, c=features[30:], d=np.arange(10) % 4)

    source = Npz(str(tmp_path / "table.npz"), x_train="a", y_train="b", x_test="c", y_test="d")
    data = load_data(data_cfg("pipeline.datasets.Npz", "table", path=str(tmp_path / "table.npz"), x_train="a", y_train="b", x_test="c", y_test="d"))

    assert source.peek().input_shape == (6,) and source.peek().num_classes == 4  # read without loading the arrays
    assert data.name == "table" and data.input_shape == (6,) and data.num_classes == 4 and data.image_shape is None
    np.testing.assert_array_equal(data.x_test, features[30:].astype("float32"))


def test_image_folder_reads_class_subfolders_with_a_seeded_split(tmp_path):
    import keras

    rng = np.random.default_rng(2)
    for label in ("cats", "dogs", "owls"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            keras.utils.save_img(tmp_path / "images" / label / f"{i}.png", rng.integers(0, 256, (12, 16, 3)).astype("uint8"), scale=False)
    cfg = data_cfg("pipeline.datasets.ImageFolder", "pets", path=str(tmp_path / "images"), image_size=[6, 8], validation_split=0.3, seed=5)

    first, again = load_data(cfg), load_data(cfg)

    assert ImageFolder(str(tmp_path / "images"), image_size=(6, 8)).peek().num_classes == 3
    assert first.x_train.shape == (21, 6, 8, 3) and first.x_test.shape == (9, 6, 8, 3) and first.num_classes == 3
    assert 0 <= first.x_train.min() and first.x_train.max() > 1  # pixels stay 0-255
    np.testing.assert_array_equal(first.x_test, again.x_test)  # the same seed, the same split
    assert set(first.y_train) == {0, 1, 2}


def test_images_are_decoded_as_keras_decodes_them(tmp_path):
    import keras

    from pipeline.datasets import ImageFiles

    folder = write_image_folder(tmp_path / "images", per_class=5)
    keras_images = keras.utils.image_dataset_from_directory(folder, image_size=(7, 9), batch_size=None, shuffle=False, verbose=False)

    ours = ImageFiles(np.array(keras_images.file_paths), (7, 9), 3, 1.0).read()

    np.testing.assert_array_equal(ours, np.stack([x for x, _ in keras_images.as_numpy_iterator()]))


def test_a_large_image_folder_streams_its_training_set_to_the_same_weights(make_cfg, client, tmp_path):
    """Over `in_memory_mb`, the training images stay files, decoded batch by batch in each epoch's
    seeded order: the run trains to exactly the weights it reaches with them in memory."""
    folder = write_image_folder(tmp_path / "images", per_class=20)
    common = ["data=image_folder", f"data.path={folder}", "data.image_size=[12,12]", "data.divide_by=255", "training.epochs=2", "checkpoint=none", "save=[keras]"]
    streamed = load_data(DataConfig.parse({"_target_": "pipeline.datasets.ImageFolder", "path": str(folder), "image_size": [12, 12], "in_memory_mb": 0}))
    assert streamed.streamed and streamed.input_shape == (12, 12, 3) and len(streamed.x_train) == 48

    run(make_cfg(*common))
    run(make_cfg(*common, "data.in_memory_mb=0", "resume=null"))

    in_memory, from_disk = sorted(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]), key=lambda r: r.info.start_time)
    assert in_memory.data.metrics["keras/verified"] == from_disk.data.metrics["keras/verified"] == 1.0
    assert from_disk.data.tags["weights_sha256"] == in_memory.data.tags["weights_sha256"]
    (train,) = [d for d in from_disk.inputs.dataset_inputs if d.dataset.name == "image_folder-train"]
    assert json.loads(train.dataset.profile)["features_shape"] == [48]  # recorded as the files' paths


def test_a_users_function_may_return_arrays_or_tf_data():
    import tensorflow as tf

    arrays = load_data(data_cfg("my_models.data.stripes", train_size=40, test_size=10))
    pair = tf.data.Dataset.from_tensor_slices((arrays.x_train, arrays.y_train)), tf.data.Dataset.from_tensor_slices((arrays.x_test, arrays.y_test)).batch(3)

    from_tf = load_data(data_cfg("my_models.data.stripes"), source=pair)

    assert arrays.input_shape == (12, 12, 1) and arrays.num_classes == 3 and arrays.source == "my_models.data.stripes"
    np.testing.assert_array_equal(from_tf.x_train, arrays.x_train)  # unbatched examples
    np.testing.assert_array_equal(from_tf.x_test, arrays.x_test)  # and batches, joined


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no file at"),
        (lambda p: p.write_bytes(b"not a zip at all"), "is not a readable npz file"),
        (lambda p: write_mnist_like(p, y_test=None), "lacks y_test=y_test: it holds x_train, y_train, x_test"),
        (lambda p: write_mnist_like(p, x_train=np.zeros((50, 32, 32), np.uint8)), "is not MNIST: its images are (32, 32), expected (28, 28)"),
    ],
)
def test_bad_mnist_file_is_a_clear_error(setup, message, tmp_path):
    path = tmp_path / "mnist.npz"
    setup(path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Mnist(str(path), train_size=10, test_size=10).peek()


@pytest.mark.parametrize(
    "source, message",
    [
        (lambda p: Digits(train_size=1500, test_size=400), "digits has 1797 examples"),
        (lambda p: ImageFolder(str(p / "nowhere")), "no folder at"),
        (lambda p: ImageFolder(str(p), color_mode="cmyk"), "data.color_mode='cmyk' is not one of: grayscale, rgb, rgba"),
    ],
)
def test_bad_sources_are_refused_before_loading(source, message, tmp_path):
    with pytest.raises(DataError, match=message):
        source(tmp_path).peek()


def test_subset_larger_than_the_dataset_is_refused(tmp_path):
    write_mnist_like(tmp_path / "mnist.npz")
    with pytest.raises(DataError, match="data.train_size=100 but mnist has 50 train examples"):
        load_data(data_cfg("pipeline.datasets.Mnist", path=str(tmp_path / "mnist.npz"), train_size=100, test_size=10))


@pytest.mark.parametrize(
    "target, arguments, message",
    [
        ("my_models.data.stripes", {"colour": 1}, "data.colour: my_models.data.stripes takes no argument 'colour'; it takes: train_size, test_size, size, seed"),
        ("my_models.data.nothing", {}, "data._target_=my_models.data.nothing: module my_models.data has no 'nothing'; it defines: stripes"),
        ("pipeline.datasets.Npz", {}, "data: pipeline.datasets.Npz needs path; set +data.path=..."),
    ],
)
def test_bad_targets_name_what_is_valid(target, arguments, message):
    with pytest.raises(ConfigError) as error:
        load_data(data_cfg(target, **arguments))
    assert str(error.value) == message


def test_labels_must_be_integer_classes():
    bad = ((np.zeros((4, 3)), np.array([0.5, 1, 2, 0])), (np.zeros((2, 3)), np.array([0, 1])))
    with pytest.raises(DataError, match=r"y_train must be 4 integer class labels from 0 \(got shape \(4,\), dtype float64\)"):
        load_data(data_cfg("my_models.data.stripes"), source=bad)


def test_a_users_function_returning_something_else_is_named():
    with pytest.raises(DataError, match=r"data._target_=my_models.data.stripes returned a int; return \(\(x_train, y_train\), \(x_test, y_test\)\) arrays or a \(train, test\) pair"):
        load_data(data_cfg("my_models.data.stripes"), source=42)
