"""Tracking a job in MLflow, always through the run's own `MlflowClient` (never MLflow's
process-global state): the store (`store`), the run's lifecycle (`lifecycle`), the
calls made during it (`tracker`), the logged model (`logged_model`), the local journal
that outlives a lost server (`journal`) and what a re-run must match (`provenance`)."""
