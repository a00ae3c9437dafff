"""Per-epoch determinism: what makes a resumed run end with the same weights as one that
was never interrupted, and the same config give the same weights twice.

Randomness is re-derived from (seed, epoch) at the start of every epoch, so the epochs
after a resume see the same batches and dropout masks as they would have.
"""

import keras
import numpy as np


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic if asked."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**31


def training_dataset(x, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int, first_batch: int = 0):
    """All remaining epochs as one tf.data stream, each epoch shuffled by its own seed;
    `first_batch` batches of the first epoch are left out (they were trained before a resume).

    Keras's own shuffling draws from one generator for the whole fit, so a resumed
    run would see different batches; here epoch e's order depends only on (seed, e).
    Each epoch is one gather into a shuffled copy, then plain slices: cheaper per
    step than a shuffle buffer or a gather per batch. Batches are prepared ahead.
    `x` is an array, or files with a `decode` (pipeline.datasets.ImageFiles): then the
    paths are shuffled, and each is decoded as its batch is made, in order.
    """
    import tensorflow as tf

    decode = getattr(x, "decode", None)
    features, labels = tf.constant(x.paths if decode else x), tf.constant(y)

    def one_epoch(epoch):  # a stateless shuffle: the order is a function of (seed, epoch) alone, whatever the global seed
        order = tf.random.experimental.stateless_shuffle(tf.range(len(x), dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        examples = tf.data.Dataset.from_tensor_slices((tf.gather(features, order), tf.gather(labels, order)))
        if decode:
            examples = examples.map(lambda path, label: (decode(path), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return examples.batch(batch_size)

    remaining = one_epoch(tf.constant(first_epoch, tf.int64)).skip(first_batch)
    later = tf.data.Dataset.range(first_epoch + 1, epochs).flat_map(one_epoch)
    return remaining.concatenate(later).prefetch(tf.data.AUTOTUNE)


def validation_dataset(x, y: np.ndarray, batch_size: int):
    """The test set in batches of the training's size, as plain `fit(x, y, batch_size=...)` validates,
    but never below Keras's default of 32 (given a dataset to train on, Keras would validate an
    array in batches of 32 whatever the training's). Made once, for every epoch."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(max(batch_size, 32)).prefetch(tf.data.AUTOTUNE)


def seed_states(model: keras.Model) -> list:
    """The model's seed generators (dropout's): their state is not in Keras's weight files."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


class EpochSeeds(keras.callbacks.Callback):
    """Reset every dropout seed generator to (seed, epoch) as each epoch begins, so a run
    resumed at an epoch's start draws the masks it would have (mid-epoch, `pipeline.resume`
    sets the generators to where they were)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for variable in seed_states(self.model):
            variable.assign(np.array([epoch_seed(self.seed, epoch), 0], dtype=variable.dtype))
