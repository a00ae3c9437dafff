"""Where TensorFlow takes CPU memory from (`training.cpu_allocator`): memory kept for the next step by default.

TensorFlow's default CPU allocator takes each buffer from the system and hands it back when freed.
A buffer above glibc's mmap threshold (32 MB at most) is then mapped afresh every step, and each of
its pages faulted in and zeroed by the kernel: a 100-million-parameter MLP spent 71 s of 125 in the
kernel on a 2-core machine, with epochs of 26 to 40 s. The BFC allocator keeps freed buffers for
the next step: 12 s in the kernel, epochs of 20 s, the same values computed.

Some buffers bypass it: a matrix multiply packs its operand into scratch memory from `malloc`
(400 MB a step for that MLP's first layer). With `bfc`, glibc's heap keeps those too
(`pipeline.heap`): a freed buffer stays the process's, so the next step does not wait for the
kernel to find and zero fresh pages, which on a virtual machine that hands freed memory back to
its host costs the most while other work (a checkpoint being written) also wants new memory.
The price: the process keeps its peak memory until it exits.

TensorFlow reads its choice (TF_CPU_ALLOCATOR_USE_BFC) once, when it first allocates, so a
process keeps the allocator it started with.
"""

import os
from typing import Optional

from pipeline import heap
from pipeline.config import CpuAllocator
from pipeline.errors import ConfigError

VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
_chosen: Optional[CpuAllocator] = None  # the allocator this process was given


def configure(choice: CpuAllocator) -> None:
    """Tell TensorFlow and glibc which allocator to use, before anything has allocated; once a process."""
    global _chosen
    if _chosen is not None and choice is not _chosen:
        raise ConfigError(
            f"training.cpu_allocator={choice.value}: TensorFlow in this process already allocates with {_chosen.value}, and chooses once; "
            "give each allocator a process of its own (a sweep: hydra/launcher=joblib)"
        )
    os.environ[VARIABLE] = "true" if choice is CpuAllocator.bfc else "false"
    if choice is CpuAllocator.bfc:
        heap.keep_freed()
    _chosen = choice
