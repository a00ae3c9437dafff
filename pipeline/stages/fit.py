"""Stage 3: train with the checkpoint policy and the optional callbacks, streaming to MLflow."""

import logging
import math
from typing import Optional

import keras

from pipeline.checkpoints import CheckpointRecord, PolicyCheckpoint
from pipeline.config import CallbacksConfig, CheckpointConfig, CheckpointPolicy, TrainingConfig
from pipeline.context import RunContext
from pipeline.determinism import EpochSeeds, training_dataset
from pipeline.errors import ArtifactError
from pipeline.paths import RunPaths
from pipeline.resume import TrainingBackup, restore
from pipeline.stages.data import Dataset
from pipeline.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class MlflowMetrics(keras.callbacks.Callback):
    """Log each epoch's metrics with the epoch index as the step.

    mlflow.keras.MlflowCallback does this too, but also logs the optimizer's
    config as a second, differently named copy of params we already log.
    """

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_metrics(logs or {}, step=epoch)


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
) -> Optional[CheckpointRecord]:
    """Train for the remaining epochs; returns the last checkpoint the policy wrote, if any."""
    paths, tracker = ctx.paths, ctx.tracker
    first_epoch = 0
    if resuming:
        point = restore(paths.resume, model)
        if point is None:
            raise ArtifactError(f"cannot resume: no readable training state in {paths.resume}")
        first_epoch = point.epoch

    writer = None
    keras_callbacks = optional_callbacks(callbacks, paths)
    if checkpoint.policy is not CheckpointPolicy.none:
        writer = PolicyCheckpoint(checkpoint, paths.checkpoints, on_write=tracker.log_files, first_epoch=first_epoch)
        if resuming:
            writer.load_state(point.state)
        keras_callbacks.append(writer)
    keras_callbacks.append(EpochSeeds(seed))
    # Metrics after the callbacks that add to the logs (learning_rate); the backup last, so a
    # kill between the two repeats an epoch's metrics (with the same values) rather than losing them.
    keras_callbacks.append(MlflowMetrics(tracker))
    keras_callbacks.append(
        TrainingBackup(
            paths.resume,
            tracker.run_id,
            extra_state=writer.state if writer else dict,
            written_at=writer.weights_file_at if writer else lambda step: None,
        )
    )

    epochs, batch_size = training.epochs, training.batch_size
    if first_epoch < epochs:
        model.fit(
            training_dataset(data.x_train, data.y_train, batch_size, seed, first_epoch, epochs),
            steps_per_epoch=math.ceil(len(data.x_train) / batch_size),
            initial_epoch=first_epoch,
            shuffle=False,  # training_dataset shuffles, per epoch
            epochs=epochs,
            validation_data=(data.x_test, data.y_test),
            callbacks=keras_callbacks,
            verbose=training.verbose,
        )
    if callbacks.tensorboard:
        tracker.log_folder(paths.tensorboard)
    latest = writer.latest if writer else None
    log.info("fit     | epochs %d-%d of %d done; latest checkpoint: %s", first_epoch + 1, epochs, epochs, latest.path.name if latest else "none")
    return latest
