"""A config-driven pipeline that trains, checkpoints, saves and reload-verifies Keras models, tracked in MLflow."""
