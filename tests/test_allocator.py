"""`training.cpu_allocator`: TensorFlow's BFC allocator by default, which keeps a large buffer for
the next step where TensorFlow's own default maps it afresh, page by page, each time."""

import subprocess
import sys

import pytest

from conftest import PROJECT, tmp_overrides
from pipeline import allocator
from pipeline.config import CpuAllocator
from pipeline.errors import ConfigError

# A job's validation, then what a large model's steps do: a 200 MB result made and freed, a first
# time, then five times more.
STEPS = """
import resource, sys
from hydra import compose, initialize_config_dir
from pipeline.paths import CONF_DIR
from pipeline.validation import validate

with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    validate(compose("config", overrides=sys.argv[1:]))
import tensorflow as tf

x = tf.ones((2000, 25000))
float(tf.reduce_sum(x * 2.0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = sum(float(tf.reduce_sum(x * 2.0)) for _ in range(5))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, total)
"""


def page_faults(tmp_path, choice: str) -> tuple[int, float]:
    overrides = ["data=digits", f"training.cpu_allocator={choice}", *tmp_overrides(tmp_path / choice)]
    done = subprocess.run([sys.executable, "-c", STEPS, *overrides], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    faults, total = done.stdout.split()
    return int(faults), float(total)


def test_bfc_reuses_a_large_buffer_where_malloc_faults_it_in_each_step(tmp_path):
    bfc, malloc = page_faults(tmp_path, "bfc"), page_faults(tmp_path, "malloc")

    assert bfc[1] == malloc[1] == 5 * 2.0 * 2000 * 25000  # the same values computed
    assert malloc[0] > 5 * 200e6 / 4096 / 2  # each step's 200 MB result mapped afresh: about 49,000 pages each
    assert bfc[0] < malloc[0] / 10  # the first step's buffer kept and reused


def test_a_process_keeps_its_allocator():
    allocator.configure(CpuAllocator.bfc)  # the default, which this process's jobs were given

    with pytest.raises(ConfigError, match=r"training.cpu_allocator=malloc: TensorFlow in this process already allocates with bfc.*hydra/launcher=joblib"):
        allocator.configure(CpuAllocator.malloc)
