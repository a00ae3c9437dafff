"""Stage 3: train with the checkpoint policy and the optional callbacks, streaming to MLflow."""

import logging
import math
import sys
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from pipeline.background import Writes
from pipeline.checkpoints import CheckpointRecord, PolicyCheckpoint
from pipeline.config import CallbacksConfig, CheckpointConfig, CheckpointPolicy, TrainingConfig
from pipeline.context import RunContext
from pipeline.determinism import EpochSeeds, TrainingEpochs, validation_dataset
from pipeline.errors import ArtifactError
from pipeline.interrupts import Progress, deferred
from pipeline.optuna_trial import OptunaTrial
from pipeline.paths import RunPaths
from pipeline.resume import TrainingState, build_metrics, restore
from pipeline.stages.data import Dataset
from pipeline.tracking.checkpoint_models import CheckpointModels
from pipeline.tracking.logged_model import keras_signature
from pipeline.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class MlflowMetrics(keras.callbacks.Callback):
    """Log each epoch's metrics with the epoch index as the step, linked to the checkpoint
    written at that epoch's end, if any (`linked` gives its LoggedModel by epochs completed).

    mlflow.keras.MlflowCallback logs metrics too, but also the optimizer's config as a
    second, differently named copy of params we already log.
    """

    def __init__(self, tracker: Tracker, linked: Optional[Callable[[int], Optional[str]]]):
        super().__init__()
        self.tracker, self.linked = tracker, linked

    def on_epoch_end(self, epoch, logs=None):
        model = (lambda: self.linked(epoch + 1)) if self.linked else None
        self.tracker.log_metrics(logs or {}, step=epoch, model=model)


class ProgressLog(keras.callbacks.Callback):
    """Keep `progress` at the current epoch and step and, unless Keras draws its progress bar, log one line per epoch."""

    def __init__(self, progress: Progress, epochs: int, log_epochs: bool):
        super().__init__()
        self.progress, self.epochs, self.log_epochs = progress, epochs, log_epochs
        self._started, self._first_step = 0.0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.epoch, self._started = epoch + 1, time.perf_counter()
        self._first_step = int(self.model.optimizer.iterations.numpy())  # read once an epoch, not every step

    def on_train_batch_end(self, batch, logs=None):
        self.progress.step = self._first_step + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        if self.log_epochs:
            values = ", ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items())
            log.info("fit     | epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, values, time.perf_counter() - self._started)


class Pruning(keras.callbacks.Callback):
    """Stop the training after an epoch at which an Optuna trial's pruner stops the trial."""

    def __init__(self, trial: OptunaTrial):
        super().__init__()
        self.trial = trial

    def on_epoch_end(self, epoch, logs=None):
        if self.trial.epoch_end(epoch, logs or {}):
            self.model.stop_training = True


class OneTraining(keras.callbacks.Callback):
    """Callbacks that see a training fit() runs in parts as one: each epoch (or the rest of an
    epoch stopped midway) is its own fit() call. Only the first part's beginning and the last
    part's end are passed on, so EarlyStopping neither resets its patience nor puts back its best
    weights halfway; the rest of the hooks pass through."""

    def __init__(self, callbacks: list, parts: int):
        super().__init__()
        self.callbacks, self.parts, self.ended = callbacks, parts, 0

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def on_train_begin(self, logs=None):
        if self.ended == 0:
            self._each("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self.ended += 1
        if self.ended == self.parts or self.model.stop_training:  # the training's real end
            self._each("on_train_end", logs=logs)

    def _each(self, hook: str, *args, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args, **kwargs)


for _hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end"):
    setattr(OneTraining, _hook, lambda self, *args, _hook=_hook, **kwargs: self._each(_hook, *args, **kwargs))


class WholeTrainingProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting the epochs of the whole training (`Epoch 3/10`), not of the one-epoch fit() it is in."""

    def __init__(self, epochs: int):
        super().__init__()
        self.total = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total})


def keras_verbosity(verbose: int) -> int:
    """Keras's progress bar (1) only on a terminal: in a file or a pipe its redraws are escape codes.
    Elsewhere, and for 2, the epoch lines come from `ProgressLog`, through logging like every other line."""
    return 1 if verbose == 1 and sys.stdout.isatty() else 0


def optional_callbacks(cfg: CallbacksConfig, paths: RunPaths) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.early_stopping:
        stop = cfg.early_stopping
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=stop.monitor, patience=stop.patience, min_delta=stop.min_delta, restore_best_weights=stop.restore_best_weights
            )
        )
    if cfg.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(paths.tensorboard), histogram_freq=cfg.tensorboard.histogram_freq, update_freq=cfg.tensorboard.update_freq
            )
        )
    if cfg.reduce_lr:
        plateau = cfg.reduce_lr
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=plateau.monitor, factor=plateau.factor, patience=plateau.patience, min_delta=plateau.min_delta, cooldown=plateau.cooldown, min_lr=plateau.min_lr
            )
        )
    if cfg.lr_schedule:
        factor, every = cfg.lr_schedule.factor, cfg.lr_schedule.every
        callbacks.append(keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * factor if epoch > 0 and epoch % every == 0 else lr))
    return callbacks


def fit(
    model: keras.Model,
    data: Dataset,
    training: TrainingConfig,
    checkpoint: CheckpointConfig,
    callbacks: CallbacksConfig,
    seed: int,
    ctx: RunContext,
    resuming: bool,
    state_every_seconds: Optional[float] = None,
    trial: Optional[OptunaTrial] = None,
) -> Optional[CheckpointRecord]:
    """Train for the remaining epochs (and, resumed mid-epoch, the rest of the epoch it stopped in);
    returns the last checkpoint the policy wrote, if any. A signal stops it at a step's end, with the
    training state written at that step. An Optuna `trial`'s pruner may stop it after an epoch."""
    paths, tracker = ctx.paths, ctx.tracker
    verbosity = keras_verbosity(training.verbose)
    point = None
    if resuming:
        point = restore(paths.resume, model)
        if point is None:
            raise ArtifactError(f"cannot resume: no readable training state in {paths.resume}")
    first_epoch, first_batch = (point.epoch, point.batch) if point else (0, 0)
    if first_batch:
        build_metrics(model, data.x_test, data.y_test)

    writer, linked = None, None
    writes = Writes(model, checkpoint.background)
    keras_callbacks = optional_callbacks(callbacks, paths)
    stateful = list(keras_callbacks)
    if checkpoint.policy is not CheckpointPolicy.none:
        models = CheckpointModels(tracker, checkpoint, resuming)
        writer = PolicyCheckpoint(checkpoint, paths.checkpoints, on_write=models, resumed=resuming, writes=writes, on_file=models.file_written)
        models.prepare(model, keras_signature(model, data.x_test[:8]), writer.format.name)
        if point:
            writer.load_state(point.state)
        keras_callbacks.append(writer)
        linked = None if models.by_batch else models.at
    keras_callbacks.append(EpochSeeds(seed))
    keras_callbacks.append(ProgressLog(ctx.progress, training.epochs, log_epochs=training.verbose > 0 and verbosity == 0))
    # Metrics after the callbacks that add to the logs (learning_rate); the state last, so a
    # kill between the two repeats an epoch's metrics (with the same values) rather than losing them.
    keras_callbacks.append(MlflowMetrics(tracker, linked))
    if trial:  # after the metrics are logged, before the state: a pruned epoch is the run's last
        keras_callbacks.append(Pruning(trial))
    keras_callbacks.append(
        TrainingState(
            paths.resume,
            tracker.run_id,
            stateful,
            extra_state=writer.state if writer else dict,
            written_at=writer.weights_file_at if writer else lambda step: None,
            resumed=point,
            every_seconds=state_every_seconds,
            writes=writes,
        )
    )

    epochs, batch_size = training.epochs, training.batch_size
    steps = math.ceil(len(data.x_train) / batch_size)
    distributed = isinstance(model.distribute_strategy, tf.distribute.MirroredStrategy)
    model.steps_per_execution = training.steps_per_call(checkpoint.policy, distributed)  # compile's, for user models that compile themselves too
    # One fit() an epoch (the rest of it, for one stopped midway), seen by the callbacks as one
    # training: Keras's calls of several steps then end where the epoch does, never taking the
    # next epoch's first batches, so the weights are those of one step a call.
    stopped = bool(point and point.state.get("stopped"))
    parts = [] if stopped else [(epoch, first_batch if epoch == first_epoch else 0) for epoch in range(first_epoch, epochs)]
    together = OneTraining(keras_callbacks, max(len(parts), 1))
    if point and not parts:  # trained to the end (or stopped early) before the interruption: only the training's end is left
        together.set_model(model)
        together.on_train_begin()  # the callbacks' state put back,
        together.on_train_end()  # and acted on: EarlyStopping's best weights
    training_set, validation = TrainingEpochs(data.x_train, data.y_train, batch_size, seed), validation_dataset(data.x_test, data.y_test, batch_size)
    with deferred():
        try:
            for epoch, skip in parts:
                model.fit(
                    training_set.epoch(epoch, first_batch=skip),
                    steps_per_epoch=steps - skip,
                    initial_epoch=epoch,
                    shuffle=False,  # TrainingEpochs shuffles, per epoch
                    epochs=epoch + 1,
                    validation_data=validation,
                    callbacks=[together, *([WholeTrainingProgbar(epochs)] if verbosity else [])],
                    verbose=verbosity,
                )
                if model.stop_training:  # early stopping, or pruned
                    break
        finally:
            writes.close()  # every checkpoint and state asked for is on disk, whatever stopped the training
    if callbacks.tensorboard:
        tracker.log_folder(paths.tensorboard)
    latest = writer.latest if writer else None
    if parts:
        last, stopped = ctx.progress.epoch, " (stopped early)" if model.stop_training else ""
        log.info("fit     | epochs %d-%d of %d done%s; latest checkpoint: %s", first_epoch + 1, last, epochs, stopped, latest.path.name if latest else "none")
    else:
        log.info("fit     | the training had ended before the interruption, after epoch %d of %d", first_epoch, epochs)
    return latest
