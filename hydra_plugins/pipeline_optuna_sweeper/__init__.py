"""The Optuna sweeper: a Hydra plugin, found where Hydra looks for plugins."""
