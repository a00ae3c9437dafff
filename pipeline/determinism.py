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


def training_dataset(x, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int):
    """All remaining epochs as one tf.data stream, each epoch shuffled by its own seed.

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

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


class EpochSeeds(keras.callbacks.Callback):
    """Reset every dropout seed generator to (seed, epoch) as each epoch begins.

    Their state is not in Keras's weight files, so without this a resumed run
    would draw different dropout masks.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for variable in self.model.non_trainable_variables:
            if variable.path.endswith("seed_generator_state"):
                variable.assign(np.array([epoch_seed(self.seed, epoch), 0], dtype=variable.dtype))
