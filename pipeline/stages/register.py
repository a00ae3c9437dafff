"""Stage 7: register the run's model, and decide on this run's test set whether it becomes the champion.

Every new version gets the `registry.alias` alias (`candidate`). It takes `champion` only
if it beats the current champion by more than `registry.min_improvement` in accuracy on
the same test set: both are downloaded from the registry and reloaded as a user would,
and scored on their own predictions, not on numbers either run logged. The first version
of a name becomes champion. The decision and both scores are tags on the new version.
"""

import logging
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import RegistryConfig, RegistrySource
from pipeline.context import RunContext
from pipeline.errors import PipelineError, describe
from pipeline.stages.data import Dataset
from pipeline.stages.reload_verify import accuracy
from pipeline.tracking.checkpoint_models import best_checkpoint
from pipeline.tracking.logged_model import register as register_version

log = logging.getLogger(__name__)


@dataclass
class Promotion:
    version: str
    champion: bool  # whether this version now holds the champion alias
    accuracy: float
    reason: str
    champion_version: Optional[str] = None  # the champion it was compared with
    champion_accuracy: Optional[float] = None

    def tags(self, min_improvement: float, test_set: str) -> dict:
        tags = {"promotion.decision": "champion" if self.champion else "candidate", "promotion.reason": self.reason}
        tags |= {"promotion.accuracy": f"{self.accuracy:.6f}", "promotion.min_improvement": str(min_improvement), "promotion.test_set": test_set}
        if self.champion_version is not None:
            tags["promotion.champion_version"] = self.champion_version
        if self.champion_accuracy is not None:
            tags["promotion.champion_accuracy"] = f"{self.champion_accuracy:.6f}"
        return tags


def registry_accuracy(client: MlflowClient, source: str, data: Dataset) -> float:
    """Accuracy on `data`'s test set of the MLflow model at `source`, downloaded and loaded with pyfunc."""
    import keras
    import mlflow.artifacts
    import mlflow.pyfunc

    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # the Keras flavor's predict draws a progress bar
    try:
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder, tracking_uri=client.tracking_uri)
            predictions = np.asarray(mlflow.pyfunc.load_model(local).predict(data.x_test))
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
    return accuracy(predictions, data.y_test)


def _champion(client: MlflowClient, cfg: RegistryConfig):
    try:
        return client.get_model_version_by_alias(cfg.name, cfg.champion_alias)
    except MlflowException:  # no version holds the alias yet
        return None


def promote(client: MlflowClient, cfg: RegistryConfig, model_id: str, location: str, run_id: str, data: Dataset) -> Promotion:
    """Register the model, give it the candidate alias, and the champion alias if it earns it."""
    champion = _champion(client, cfg)
    version = str(register_version(client, cfg.name, model_id, location, run_id))
    client.set_registered_model_alias(cfg.name, cfg.alias, version)
    result = Promotion(version, True, registry_accuracy(client, client.get_model_version(cfg.name, version).source, data), f"the first version of {cfg.name}")
    if champion is not None:
        result.champion_version = str(champion.version)
        try:
            result.champion_accuracy = registry_accuracy(client, champion.source, data)
        except Exception as error:  # e.g. a champion trained on other inputs: it cannot be compared, so it stays
            result.champion, result.reason = False, f"version {champion.version} cannot be scored on this test set ({describe(error)})"
        else:
            gain = result.accuracy - result.champion_accuracy
            result.champion = gain > cfg.min_improvement
            result.reason = f"accuracy {gain:+.4f} against version {champion.version}, {'more' if result.champion else 'not more'} than the {cfg.min_improvement:+.4f} required"
    if result.champion:
        client.set_registered_model_alias(cfg.name, cfg.champion_alias, version)
    return result


def register(cfg: RegistryConfig, data: Dataset, ctx: RunContext) -> Optional[Promotion]:
    """Register the final model or the best checkpoint under `cfg.name`, if one is set."""
    if not cfg.name:
        return None
    tracker = ctx.tracker
    tracker.flush()  # the LoggedModels are uploaded on the tracking thread
    if cfg.model is RegistrySource.best:
        chosen = tracker.now("finding the best checkpoint", lambda: best_checkpoint(tracker.client, tracker.experiment_id, tracker.run_id))
        if chosen is None and tracker.lost is None:
            raise PipelineError("registry.model=best: no checkpoint of this run was ranked (none was written after an epoch with the monitored metric)")
    else:
        chosen = tracker.model
    if chosen is None:  # the tracking store was lost: there is nothing to register
        return None
    result = tracker.now("registering the model", lambda: promote(tracker.client, cfg, chosen.model_id, chosen.artifact_location, tracker.run_id, data))
    if result is None:
        return None
    name, digest = tracker.datasets.get("evaluation", (data.name, "?"))
    # A sqlite registry keeps a version's model_id only for a models:/ source, which it resolves through
    # MLflow's process-global store; the version's source is the model's files, and this tag names it.
    tags = {"logged_model_id": chosen.model_id, **result.tags(cfg.min_improvement, f"{name} ({digest})")}
    tracker.now("tagging the version", lambda: [tracker.client.set_model_version_tag(cfg.name, result.version, k, v) for k, v in tags.items()])
    tracker.set_tags({"registered_model": f"{cfg.name}/{result.version}", "promotion.decision": tags["promotion.decision"]})
    aliases = f"{cfg.alias!r} and {cfg.champion_alias!r}" if result.champion else repr(cfg.alias)
    log.info("registry| %s version %s (%s, accuracy %.2f%%) holds %s: %s", cfg.name, result.version, chosen.model_id, 100 * result.accuracy, aliases, result.reason)
    return result
