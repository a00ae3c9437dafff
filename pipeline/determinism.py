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


class TrainingEpochs:
    """The training set, one tf.data stream an epoch, each shuffled by (seed, epoch) alone.

    Keras's own shuffling draws from one generator for the whole fit, so a resumed run would
    see different batches; here epoch e's order depends only on (seed, e). Each batch is one
    gather of its rows, in that order, from tensors made once for every epoch: no copy of the
    whole set an epoch, and one op a batch rather than one an example. Batches are prepared
    ahead. `x` is an array, or files with a `decode` (pipeline.datasets.ImageFiles): then the
    paths are shuffled, and each is decoded as its batch is made, in order.
    """

    def __init__(self, x, y: np.ndarray, batch_size: int, seed: int):
        import tensorflow as tf

        self.decode = getattr(x, "decode", None)
        self.features, self.labels = tf.constant(x.paths if self.decode else x), tf.constant(y)
        self.size, self.batch_size, self.seed = len(x), batch_size, seed

    def epoch(self, epoch: int, first_batch: int = 0):
        """Epoch `epoch`'s batches; `first_batch` of them left out (they were trained before a resume)."""
        import tensorflow as tf

        order = tf.random.experimental.stateless_shuffle(tf.range(self.size, dtype=tf.int64), seed=tf.constant([self.seed, epoch], tf.int64))
        if self.decode:
            examples = tf.data.Dataset.from_tensor_slices((tf.gather(self.features, order), tf.gather(self.labels, order)))
            examples = examples.map(lambda path, label: (self.decode(path), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return without_autotuning(examples.batch(self.batch_size).skip(first_batch))

        def batch(start):
            rows = order[start : start + self.batch_size]
            return tf.gather(self.features, rows), tf.gather(self.labels, rows)

        starts = tf.data.Dataset.range(first_batch * self.batch_size, self.size, self.batch_size)
        return without_autotuning(starts.map(batch))


def without_autotuning(batches):
    """Batches made ahead (two, while a step runs), with tf.data's autotuning off.

    Each epoch is a fit() of its own, so each epoch's iterator is destroyed as the next begins,
    and with autotuning on, that waits for the tuning thread's current sleep, which grows to tens
    of seconds: a ~100M-parameter MLP's epochs of 40 s each stalled for up to 30 s with every
    core idle. A gather a batch has nothing to tune; a decoding map runs on every core."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(2).with_options(options)


def validation_dataset(x, y: np.ndarray, batch_size: int):
    """The test set in batches of the training's size, as plain `fit(x, y, batch_size=...)` validates,
    but never below Keras's default of 32 (given a dataset to train on, Keras would validate an
    array in batches of 32 whatever the training's). Made once, for every epoch."""
    import tensorflow as tf

    return without_autotuning(tf.data.Dataset.from_tensor_slices((x, y)).batch(max(batch_size, 32)))


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
