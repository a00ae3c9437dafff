"""`python -m pipeline.inspect PATH [--full] [--json] [--load [--trust] [--import MODULE] [--config CONFIG]]`:
what a saved artifact holds.

The tutorial's HDF5 appendix as a tool. It reads files without running anything
they contain, and without TensorFlow for `.keras`, `.h5` and `.weights.h5` files;
each format describes its own files (see `pipeline.formats`). `--load` then loads
the artifact the way reload-verify does, under Keras's safe_mode unless `--trust`
is given; weights without an architecture load into the model a run's config builds.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from pipeline.console import import_tensorflow, plain_console, quiet_libraries
from pipeline.errors import ArtifactError, PipelineError, report, unreadable
from pipeline.formats import FORMATS, LoadContext, inspect_artifact, load, render_inspection


def model_from_run_config(config: Path) -> Callable:
    """A fresh model built as the run whose resolved `config.yaml` this is built it (its data gives the shapes)."""
    from omegaconf import OmegaConf

    from pipeline.datasets import DataSource
    from pipeline.models import ModelFactory
    from pipeline.stages.data import data_source, load_data
    from pipeline.validation import validate

    try:
        settings = validate(OmegaConf.load(config))
    except (OSError, ValueError) as error:  # a missing file, or YAML that is not a config
        raise PipelineError(f"--config {config}: {unreadable(config, 'run config', error)}") from None
    source = data_source(settings.data)
    spec = source.peek() if isinstance(source, DataSource) else load_data(settings.data, source)
    return ModelFactory(settings.model, settings.training, spec.input_shape, spec.num_classes)


def config_imports(config: Optional[Path]) -> list[str]:
    """The `imports` a run's config declares: inspecting its files needs them as the run did."""
    from omegaconf import OmegaConf

    try:
        return list(OmegaConf.load(config).get("imports") or []) if config is not None else []
    except (OSError, ValueError) as error:
        raise PipelineError(f"--config {config}: {unreadable(config, 'run config', error)}") from None


def load_summary(path: Path, format_name: str, trust: bool, config: Optional[Path] = None, declared: tuple = ()) -> dict:
    """Load the artifact as reload-verify does, and say what came back."""
    fmt = FORMATS[format_name]
    if not fmt.carries_architecture and config is None:
        raise ArtifactError(
            f"{path} holds weights but no architecture: pass --config outputs/runs/<date_time>/config.yaml of the run that wrote it, "
            "and it loads into the model that config builds"
        )
    import_tensorflow()
    fresh_model = model_from_run_config(config) if config is not None else lambda: None
    declared = (*declared, *getattr(fresh_model, "declared", ()))
    return fmt.summarize(load(fmt, path, LoadContext(fresh_model=fresh_model, safe_mode=not trust, declared=declared)))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description="Show what a saved model, weights file or checkpoint holds.")
    parser.add_argument("path", type=Path, help="a .keras, .h5 or .weights.h5 file, a SavedModel folder, or a TF checkpoint (folder or prefix)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text (everything there is)")
    parser.add_argument("--full", action="store_true", help="show everything: the whole config and every array, not the summary")
    parser.add_argument("--load", action="store_true", help="also load it as reload-verify does (Keras safe_mode on)")
    parser.add_argument("--trust", action="store_true", help="with --load: turn safe_mode off, allowing code stored in the file to run")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help="import MODULE first, to register its custom classes")
    parser.add_argument("--config", type=Path, help="with --load, for weights-only files and TF checkpoints: the config.yaml of the run that wrote them")
    args = parser.parse_args(argv)
    if (args.trust or args.config) and not args.load:
        parser.error("--trust and --config only apply with --load")
    quiet_libraries()
    plain_console()
    try:
        args.imports += config_imports(args.config)
        for module in args.imports:
            import_tensorflow()  # a module that registers Keras classes imports Keras
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise PipelineError(f"--import {module}: {error}") from None
        info = inspect_artifact(args.path)
    except PipelineError as error:
        return report(error)
    problem = None
    if args.load:
        try:
            info["loaded"] = load_summary(args.path, info["format"], args.trust, args.config, tuple(args.imports))
        except PipelineError as error:  # the inspection is still worth printing
            problem = error
    print(json.dumps(info, indent=2, default=str) if args.json else render_inspection(info, args.full))
    return report(problem) if problem else 0


if __name__ == "__main__":
    sys.exit(main())
