"""Training on several devices of one machine with tf.distribute (`distribute=mirrored`).

MirroredStrategy keeps a replica of the model on each device; every batch is split among
them and their gradients are summed before each update. The model and its optimizer are
made in the strategy's scope (`ModelFactory`), so their variables are mirrored; what is
saved from them is an ordinary model, which loads anywhere.

On a machine without GPUs, `distribute.devices=N` splits the CPU into N logical devices,
as TensorFlow's own multi-device tests do. That must happen before TensorFlow sets up its
devices, which it does once per process, at the first model built.
"""

import functools
from typing import Optional

import tensorflow as tf

from pipeline.config import DistributeConfig, Strategy
from pipeline.errors import ConfigError


def configure(cfg: DistributeConfig) -> None:
    """Split the CPU into `cfg.devices` logical devices, before TensorFlow has set up any."""
    if cfg.devices is None:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cfg.devices)])
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have != cfg.devices:  # (the same count: set up by this job's own validation before)
            raise ConfigError(
                f"distribute.devices={cfg.devices}: TensorFlow already runs on {have} CPU device(s) in this process, and sets them once; "
                "give each device count a process of its own (a sweep: hydra/launcher=joblib)"
            ) from None


@functools.cache
def _mirrored(devices: Optional[int]) -> tf.distribute.Strategy:
    names = [device.name for device in tf.config.list_logical_devices("CPU")][:devices] if devices else None
    return tf.distribute.MirroredStrategy(names)


def strategy(cfg: DistributeConfig) -> Optional[tf.distribute.Strategy]:
    """The strategy the run's models are made in; None for TensorFlow's default device."""
    if cfg.strategy is Strategy.none:
        return None
    return _mirrored(cfg.devices)


def describe(chosen: tf.distribute.Strategy, batch_size: int) -> str:
    """How the work is spread, for the log: the devices, and each replica's share of a batch."""
    devices = chosen.extended.worker_devices
    return f"mirrored over {len(devices)} devices ({', '.join(d.rsplit('/', 1)[-1] for d in devices)}), each taking {batch_size / len(devices):g} of a batch of {batch_size}"
