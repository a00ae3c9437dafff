"""A config-driven pipeline that trains, checkpoints, saves and reload-verifies Keras models, tracked in MLflow.

Defaults for every entry point (`python -m pipeline`, `.reproduce`, `.sync`, `.inspect`), before
MLflow is imported; the environment still overrides them. (The console's quiet settings are
in `pipeline.console`, which each command line applies first.)
"""

import os

from pipeline import heap

heap.one_heap()  # before any other thread allocates: the heaps are counted as threads start (pipeline.heap)

# A tracking server that stops answering is given up on in seconds, not MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow's own INFO lines ("Creating initial MLflow database tables...") are its business; hydra.verbose shows them.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
