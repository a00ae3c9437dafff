"""Stage 4: save the trained model in every configured format, each in its own folder."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline.config import SaveOptions
from pipeline.errors import ArtifactError
from pipeline.formats import FORMATS, SaveFormat, atomic_path
from pipeline.paths import RunPaths, disk_bytes
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class SavedArtifact:
    format: SaveFormat
    path: Path
    bytes: int
    save_seconds: float


def save(model: keras.Model, formats: dict[str, SaveOptions], paths: RunPaths, tracker: Tracker) -> list[SavedArtifact]:
    """Save in config order; each artifact appears under its final name only once complete."""
    saved = []
    for name, options in formats.items():
        fmt = FORMATS[name]
        target = paths.saved(name) / (options.filename + fmt.suffix)
        start = time.perf_counter()
        try:
            with atomic_path(target) as temporary:
                fmt.save(model, temporary)
        except OSError as error:
            raise ArtifactError(f"saving {name} to {target} failed: {error}") from error
        artifact = SavedArtifact(fmt, target, disk_bytes(target), time.perf_counter() - start)
        tracker.log_folder(paths.saved(name))
        tracker.log_metrics({f"{name}/file_bytes": artifact.bytes, f"{name}/save_seconds": artifact.save_seconds})
        log.info("save    | %-13s %s (%s bytes, %.2f s)", name, target, f"{artifact.bytes:,}", artifact.save_seconds)
        saved.append(artifact)
    return saved
