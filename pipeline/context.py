"""What every stage is handed besides its own config section."""

from dataclasses import dataclass

from pipeline.paths import RunPaths
from pipeline.tracking.tracker import Tracker


@dataclass(frozen=True)
class RunContext:
    """Where the job's files go, and the run they are tracked in."""

    paths: RunPaths
    tracker: Tracker
