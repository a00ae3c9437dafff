"""`training.cpu_allocator`: by default TensorFlow's BFC allocator, and glibc told to keep freed
memory, so that a large buffer is kept for the next step where the defaults map it afresh, page by
page, each time."""

import subprocess
import sys

import pytest

from conftest import PROJECT, tmp_overrides
from pipeline import allocator
from pipeline.config import CpuAllocator
from pipeline.errors import ConfigError

# A job's validation, then what a large model's steps do, a first time and then five times more:
# a 200 MB result made and freed (TensorFlow's allocator), and a matrix multiply whose 78 MB
# operand is packed into scratch memory from malloc (glibc's).
STEPS = """
import resource, sys
from hydra import compose, initialize_config_dir
from pipeline.paths import CONF_DIR
from pipeline.validation import validate

with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    validate(compose("config", overrides=sys.argv[1:]))
import tensorflow as tf

def faults(step):
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = sum(step() for _ in range(5))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, total

x, a, b = tf.ones((2000, 25000)), tf.ones((256, 784)), tf.ones((784, 25000))
print(*faults(lambda: float(tf.reduce_sum(x * 2.0))), *faults(lambda: float(tf.reduce_sum(tf.matmul(a, b)))))
"""


def page_faults(tmp_path, choice: str) -> list[float]:
    """Page faults and the values computed: of five elementwise steps, then of five matrix multiplies."""
    overrides = ["data=digits", f"training.cpu_allocator={choice}", *tmp_overrides(tmp_path / choice)]
    done = subprocess.run([sys.executable, "-c", STEPS, *overrides], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [float(value) for value in done.stdout.split()]


def test_bfc_reuses_a_large_buffer_where_malloc_faults_it_in_each_step(tmp_path):
    bfc, malloc = page_faults(tmp_path, "bfc"), page_faults(tmp_path, "malloc")

    assert bfc[1] == malloc[1] == 5 * 2.0 * 2000 * 25000  # the same values computed
    assert bfc[3] == malloc[3] == 5 * 784 * 256 * 25000
    assert malloc[0] > 5 * 200e6 / 4096 / 2  # each step's 200 MB result mapped afresh: about 49,000 pages each
    assert bfc[0] < malloc[0] / 10  # the first step's buffer kept and reused
    assert malloc[2] > 5 * 78e6 / 4096 / 4  # the packed operand mapped afresh each multiply (about 19,000 pages)
    assert bfc[2] < malloc[2] / 10  # glibc's heap kept it


def test_a_process_keeps_its_allocator():
    allocator.configure(CpuAllocator.bfc)  # the default, which this process's jobs were given

    with pytest.raises(ConfigError, match=r"training.cpu_allocator=malloc: TensorFlow in this process already allocates with bfc.*hydra/launcher=joblib"):
        allocator.configure(CpuAllocator.malloc)
