"""`python -m pipeline.inspect PATH [--json] [--load [--trust] [--import MODULE]]`: what a saved artifact holds.

The tutorial's HDF5 appendix as a tool. It reads files without running anything
they contain; each format describes its own files (see `pipeline.formats`).
`--load` then loads the artifact the way reload-verify does, under Keras's
safe_mode unless `--trust` is given.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Optional

from pipeline.errors import ArtifactError, PipelineError, report, unreadable
from pipeline.files import disk_bytes
from pipeline.formats import FORMATS, LoadContext, detect, load


def inspect_artifact(path: Path) -> dict:
    """What `path` holds, as JSON-able data; any unreadable file becomes one ArtifactError."""
    fmt = detect(path)
    try:
        details = fmt.describe(path)
    except ArtifactError:
        raise
    except Exception as error:  # h5py, zipfile, protobuf and TensorFlow each fail in their own way
        raise ArtifactError(unreadable(path, f"{fmt.name} artifact", error)) from None
    return {"path": str(path), "format": fmt.name, "bytes": disk_bytes(path) if path.exists() else None, **details}


def load_summary(path: Path, format_name: str, trust: bool) -> dict:
    """Load the artifact as reload-verify does, and say what came back."""
    fmt = FORMATS[format_name]
    if not fmt.carries_architecture:
        raise ArtifactError(f"{path} holds weights but no architecture, so it loads only into a model built from the config (reload-verify does this)")
    return fmt.summarize(load(fmt, path, LoadContext(fresh_model=lambda: None, safe_mode=not trust)))


def render(info: dict) -> str:
    """The inspection as text for people; `--json` gives the same data for machines."""
    fmt = FORMATS[info["format"]]
    size = f", {info['bytes']:,} bytes" if info.get("bytes") is not None else ""
    lines = [f"{info['path']}: {fmt.name} ({fmt.description}{size})", *fmt.render(info)]
    if "code" in info:
        lines.append(f"code: {', '.join(info['code'])} (refused by safe_mode)" if info["code"] else "code: none (loads under safe_mode)")
        missing = set(info["unregistered_classes"])
        lines.append("custom classes: " + (", ".join(f"{c}{' (not registered here)' if c in missing else ''}" for c in info["custom_classes"]) or "none"))
    if "loaded" in info:
        lines.append("loaded: " + ", ".join(f"{k} {v}" for k, v in info["loaded"].items()))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description="Show what a saved model, weights file or checkpoint holds.")
    parser.add_argument("path", type=Path, help="a .keras, .h5 or .weights.h5 file, a SavedModel folder, or a TF checkpoint (folder or prefix)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--load", action="store_true", help="also load it as reload-verify does (Keras safe_mode on)")
    parser.add_argument("--trust", action="store_true", help="with --load: turn safe_mode off, allowing code stored in the file to run")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help="import MODULE first, to register its custom classes")
    args = parser.parse_args(argv)
    if args.trust and not args.load:
        parser.error("--trust only applies with --load")
    try:
        for module in args.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise PipelineError(f"--import {module}: {error}") from None
        info = inspect_artifact(args.path)
        if args.load:
            info["loaded"] = load_summary(args.path, info["format"], args.trust)
    except PipelineError as error:
        return report(error)
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
