"""Stage 4: save the trained model in every configured format, each in its own folder,
with an inspection of what was written."""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline.config import SaveOptions
from pipeline.context import RunContext
from pipeline.errors import ExportError
from pipeline.files import atomic_path, disk_bytes
from pipeline.formats import FORMATS, SaveFormat, inspect_artifact, render_inspection
from pipeline.formats.base import raw_state_bytes
from pipeline.formats.hdf5 import rewrite_hdf5

log = logging.getLogger(__name__)


@dataclass
class SavedArtifact:
    format: SaveFormat
    path: Path
    bytes: int
    save_seconds: float
    raw_bytes: int  # the arrays the format stores, uncompressed: weights, plus optimizer state if carried
    error: str = ""  # why a deploy format's converter could not take the model; nothing was written


def save(model: keras.Model, formats: dict[str, SaveOptions], ctx: RunContext) -> list[SavedArtifact]:
    """Save in config order; each artifact appears under its final name only once complete.
    A model a deploy format cannot convert fails that format alone (in reload-verify); the rest are saved."""
    paths, tracker = ctx.paths, ctx.tracker
    saved = []
    for name, options in formats.items():
        fmt = FORMATS[name].with_options(options)
        target = paths.saved(name) / (options.filename + fmt.suffix)
        start = time.perf_counter()
        try:
            with atomic_path(target) as temporary:
                fmt.save(model, temporary)
                if options.rewrites_hdf5:
                    compression = options.compression.value if options.compression else None
                    rewrite_hdf5(temporary, compression, options.compression_level, options.shuffle, options.chunk_kib)
        except ExportError as error:
            log.info("save    | %-13s FAILED: %s", name, error)
            saved.append(SavedArtifact(fmt, target, 0, time.perf_counter() - start, raw_state_bytes(model, fmt.carries_optimizer), error=str(error)))
            continue
        artifact = SavedArtifact(fmt, target, disk_bytes(target), time.perf_counter() - start, raw_state_bytes(model, fmt.carries_optimizer))
        tracker.log_folder(paths.saved(name))
        tracker.log_files(write_inspection(target, paths.inspection(name)))
        tracker.log_metrics({f"{name}/file_bytes": artifact.bytes, f"{name}/save_seconds": artifact.save_seconds, f"{name}/bytes_vs_raw": artifact.bytes / artifact.raw_bytes})
        log.info("save    | %-13s %s (%s bytes, %.2fx the raw state, %.2f s)", name, target, f"{artifact.bytes:,}", artifact.bytes / artifact.raw_bytes, artifact.save_seconds)
        saved.append(artifact)
    return saved


def write_inspection(artifact: Path, report: Path) -> list[Path]:
    """What `python -m pipeline.inspect` shows for the artifact, as text and JSON."""
    info = inspect_artifact(artifact)
    report.parent.mkdir(parents=True, exist_ok=True)
    text, data = report.with_suffix(".txt"), report.with_suffix(".json")
    text.write_text(render_inspection(info, full=True) + "\n")
    data.write_text(json.dumps(info, indent=2, default=str))
    return [text, data]
