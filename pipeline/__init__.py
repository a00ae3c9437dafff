"""A config-driven pipeline that trains, checkpoints, saves and reload-verifies Keras models, tracked in MLflow.

Defaults for every entry point (`python -m pipeline`, `.reproduce`, `.sync`, `.inspect`), before
TensorFlow or MLflow is imported; the environment still overrides them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console
# A tracking server that stops answering is given up on in seconds, not MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
