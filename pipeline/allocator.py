"""Where TensorFlow takes CPU memory from (`training.cpu_allocator`): its BFC allocator by default.

TensorFlow's default CPU allocator takes each buffer from the system and hands it back when freed.
A buffer above glibc's mmap threshold (32 MB at most) is then mapped afresh every step, and each of
its pages faulted in and zeroed by the kernel: a 100-million-parameter MLP spent 71 s of 125 in the
kernel on a 2-core machine, with epochs of 26 to 40 s. The BFC allocator keeps freed buffers for
the next step: 12 s in the kernel, epochs of 20 s, the same values computed.

TensorFlow reads the choice (TF_CPU_ALLOCATOR_USE_BFC) once, when it first allocates, so a
process keeps the allocator it started with.
"""

import os
from typing import Optional

from pipeline.config import CpuAllocator
from pipeline.errors import ConfigError

VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
_chosen: Optional[CpuAllocator] = None  # the allocator this process was given


def configure(choice: CpuAllocator) -> None:
    """Tell TensorFlow which allocator to use, before anything has allocated; once a process."""
    global _chosen
    if _chosen is not None and choice is not _chosen:
        raise ConfigError(
            f"training.cpu_allocator={choice.value}: TensorFlow in this process already allocates with {_chosen.value}, and chooses once; "
            "give each allocator a process of its own (a sweep: hydra/launcher=joblib)"
        )
    os.environ[VARIABLE] = "true" if choice is CpuAllocator.bfc else "false"
    _chosen = choice
