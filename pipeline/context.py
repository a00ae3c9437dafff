"""What every stage is handed besides its own config section."""

from dataclasses import dataclass, field

from pipeline.interrupts import Progress
from pipeline.paths import RunPaths
from pipeline.tracking.tracker import Tracker


@dataclass(frozen=True)
class RunContext:
    """Where the job's files go, the run they are tracked in, and how far the job has got."""

    paths: RunPaths
    tracker: Tracker
    progress: Progress = field(default_factory=Progress)
