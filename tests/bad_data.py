"""A user's data function with a mistake the data stage must catch: labels that are not classes."""

import numpy as np


def float_labels(train_size: int = 40, test_size: int = 10):
    rng = np.random.default_rng(0)
    return (rng.random((train_size, 6)), rng.random(train_size)), (rng.random((test_size, 6)), rng.integers(0, 2, test_size))
