"""Which checkpoints stay on disk: Orbax's preservation policies, combined.

Each set policy names checkpoints to keep (the newest N, the N best by the monitored metric,
every K-th); a checkpoint stays if any of them keeps it, and the newest always stays (it is
what verification and a resume read). With no policy set, every checkpoint stays.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.config import KeepConfig, Mode


@dataclass(frozen=True)
class Written:
    """A checkpoint on disk, as the keep policies judge it."""

    key: int  # epochs completed, or optimizer steps for checkpoints by batch
    path: Path
    value: Optional[float]  # the monitored metric when it was written; None (say, the untrained weights) is never "best"


def to_delete(written: list[Written], keep: KeepConfig, mode: Mode) -> list[Written]:
    """The checkpoints no policy keeps, oldest first."""
    if keep.latest is None and keep.best is None and keep.every is None:
        return []
    ordered = sorted(written, key=lambda w: w.key)
    kept = {ordered[-1].key} if ordered else set()
    if keep.latest is not None:
        kept |= {w.key for w in ordered[-keep.latest :]}
    if keep.best is not None:
        ranked = sorted((w for w in ordered if w.value is not None), key=lambda w: w.value, reverse=mode is Mode.max)
        kept |= {w.key for w in ranked[: keep.best]}
    if keep.every is not None:
        kept |= {w.key for w in ordered if w.key % keep.every == 0}
    return [w for w in ordered if w.key not in kept]


def describe(keep: KeepConfig) -> str:
    """The policies as the config sets them, e.g. `latest=2, best=1`, for messages and tags."""
    return ", ".join(f"{name}={value}" for name, value in (("latest", keep.latest), ("best", keep.best), ("every", keep.every)) if value is not None)
