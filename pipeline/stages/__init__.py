"""The pipeline's stages, in the order the task runs them: data, build, fit, save, reload_verify."""
