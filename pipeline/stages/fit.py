"""Stage 3: train with the checkpoint policy and the optional callbacks, streaming to MLflow."""

import logging
from dataclasses import dataclass
from typing import Optional

import keras

from pipeline.checkpoints import PolicyCheckpoint
from pipeline.config import CallbacksConfig, CheckpointPolicy, Config
from pipeline.paths import RunPaths
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
    history: dict[str, list[float]]
    checkpoint: Optional[PolicyCheckpoint]


def fit(model: keras.Model, data: Dataset, settings: Config, paths: RunPaths, tracker: Tracker) -> FitResult:
    checkpoint = None
    callbacks = optional_callbacks(settings.callbacks, paths)
    if settings.checkpoint.policy is not CheckpointPolicy.none:
        checkpoint = PolicyCheckpoint(settings.checkpoint, paths.checkpoints, on_write=tracker.log_files)
        callbacks.append(checkpoint)
    callbacks.append(MlflowMetrics(tracker))  # last, so it sees what the others add to the logs (learning_rate)

    history = model.fit(
        data.x_train,
        data.y_train,
        epochs=settings.training.epochs,
        batch_size=settings.training.batch_size,
        validation_data=(data.x_test, data.y_test),
        callbacks=callbacks,
        verbose=settings.training.verbose,
    ).history
    if settings.callbacks.tensorboard:
        tracker.log_folder(paths.tensorboard)
    last = {k: v[-1] for k, v in history.items()}
    log.info(
        "fit     | %d epochs: %s; checkpoints: %s",
        len(history["loss"]),
        ", ".join(f"{k}={v:.4f}" for k, v in last.items()),
        checkpoint.latest.path.name if checkpoint and checkpoint.latest else "none",
    )
    return FitResult(history=history, checkpoint=checkpoint)
