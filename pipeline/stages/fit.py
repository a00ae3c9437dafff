"""Stage 3: train with the checkpoint policy and the optional callbacks, streaming to MLflow."""

import logging
import math
from dataclasses import dataclass
from typing import Optional

import keras

from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CallbacksConfig, CheckpointPolicy, Config
from pipeline.errors import ArtifactError
from pipeline.paths import RunPaths
from pipeline.resume import EpochSeeds, TrainingBackup, restore, training_dataset
from pipeline.stages.data import Dataset
from pipeline.tracking import Tracker

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


@dataclass
class FitResult:
    checkpoint: Optional[PolicyCheckpoint]
    first_epoch: int  # 0, or the epoch a resumed run continued from


def fit(model: keras.Model, data: Dataset, settings: Config, paths: RunPaths, tracker: Tracker, resuming: bool) -> FitResult:
    first_epoch = 0
    if resuming:
        point = restore(paths.resume, model)
        if point is None:
            raise ArtifactError(f"cannot resume: no readable training state in {paths.resume}")
        first_epoch = point.epoch

    checkpoint = None
    callbacks = optional_callbacks(settings.callbacks, paths)
    if settings.checkpoint.policy is not CheckpointPolicy.none:
        checkpoint = PolicyCheckpoint(settings.checkpoint, paths.checkpoints, on_write=tracker.log_files, first_epoch=first_epoch)
        if resuming:
            checkpoint.load_state(point.state)
        callbacks.append(checkpoint)
    callbacks.append(EpochSeeds(settings.seed))
    # Metrics after the callbacks that add to the logs (learning_rate); the backup last, so a
    # kill between the two repeats an epoch's metrics (with the same values) rather than losing them.
    callbacks.append(MlflowMetrics(tracker))
    callbacks.append(
        TrainingBackup(
            paths.resume,
            tracker.run_id,
            extra_state=checkpoint.state if checkpoint else dict,
            written_at=checkpoint.weights_file_at if checkpoint else lambda step: None,
        )
    )

    epochs, batch_size = settings.training.epochs, settings.training.batch_size
    if first_epoch < epochs:
        model.fit(
            training_dataset(data.x_train, data.y_train, batch_size, settings.seed, first_epoch, epochs),
            steps_per_epoch=math.ceil(len(data.x_train) / batch_size),
            initial_epoch=first_epoch,
            shuffle=False,  # training_dataset shuffles, per epoch
            epochs=epochs,
            validation_data=(data.x_test, data.y_test),
            callbacks=callbacks,
            verbose=settings.training.verbose,
        )
    if settings.callbacks.tensorboard:
        tracker.log_folder(paths.tensorboard)
    log.info(
        "fit     | epochs %d-%d of %d done; latest checkpoint: %s",
        first_epoch + 1,
        epochs,
        epochs,
        checkpoint.latest.path.name if checkpoint and checkpoint.latest else "none",
    )
    return FitResult(checkpoint=checkpoint, first_epoch=first_epoch)
