"""A user's own package: models, a custom layer and a data loader, kept outside the pipeline."""
