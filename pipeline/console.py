"""A console a person reads: the pipeline's own lines, real warnings and errors, and nothing
from TensorFlow, absl, CUDA or MLflow's set-up that a user cannot act on.

Libraries are silenced at their source where they allow it (environment variables read
before TensorFlow starts, logger levels on the console handler), and the few lines
TensorFlow's C++ core prints while it is imported are filtered out of the process's
stderr; anything else it prints there still shows. `pipeline.log` in the job's folder
keeps the full record. `hydra.verbose=true` (or PIPELINE_VERBOSE=1) brings everything back.
"""

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from pipeline.errors import describe

VERBOSE_ENV = "PIPELINE_VERBOSE"

# What TensorFlow's C++ core prints on import on a machine without a GPU: nothing to act on.
IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "oneDNN custom operations are on",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "TF-TRT Warning",
)

# TensorFlow's warning when a Python function is traced again and again. A job makes new models on
# purpose (the trained one, one per artifact it loads back), each with its own tf.functions, and a
# sweep's jobs in one process make more: the warning is about that, and there is nothing to act on.
RETRACING = "triggered tf.function retracing"

# Loggers whose INFO lines are the libraries' own business; their warnings and errors still show.
CHATTY_LOGGERS = ("mlflow", "alembic", "tensorflow", "absl", "h5py", "urllib3", "matplotlib", "numexpr", "tf2onnx")


def verbose_requested(argv: Sequence[str] = ()) -> bool:
    """`hydra.verbose=...` on the command line, or PIPELINE_VERBOSE set: show everything."""
    flag = next((a.split("=", 1)[1] for a in argv if a.startswith(("hydra.verbose=", "+hydra.verbose="))), "false")
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") or flag.lower() not in ("false", "[]", "null", "")


def quiet_libraries(argv: Sequence[str] = ()) -> None:
    """Settings read once, before TensorFlow is imported: its C++ log level (or, verbose, everything)."""
    if verbose_requested(argv):
        os.environ[VERBOSE_ENV] = "1"  # for the job processes a sweep starts
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"  # pipeline/__init__.py lowers it before MLflow is imported
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO, WARNING and ERROR lines: cuInit, graph-optimizer notes
    if not sys.stderr.isatty():  # like Keras's, MLflow's progress bars are redrawn in place: escape codes in a file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextmanager
def filtered_stderr(noise: Sequence[str]) -> Iterator[None]:
    """Run a block with the process's stderr (file descriptor 2, where C++ code writes) captured,
    then write back every line that is not known noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True) if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow() -> None:
    """Import TensorFlow (and Keras) once, without the lines its C++ core prints on the way."""
    if "tensorflow" in sys.modules or verbose_requested():
        return
    with filtered_stderr(IMPORT_NOISE):
        import keras  # noqa: F401  (imports TensorFlow, its backend)
        import tensorflow  # noqa: F401


class LibraryNoise(logging.Filter):
    """On the console handler: drop libraries' INFO and DEBUG records, unless verbose is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or verbose_requested() or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        return not record.name.split(".")[0] in CHATTY_LOGGERS


class _Dropping(logging.Filter):
    def __init__(self, fragments: Sequence[str]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextmanager
def without(logger_name: str, *fragments: str) -> Iterator[None]:
    """For the block, drop the records of one logger that contain any of `fragments`: a library's
    warning about what the pipeline does on purpose, such as saving legacy HDF5 when asked to."""
    logger, dropping = logging.getLogger(logger_name), _Dropping(fragments)
    logger.addFilter(dropping)
    try:
        yield
    finally:
        logger.removeFilter(dropping)


class _Collecting(logging.Handler):
    """Takes a logger's records at its level and above; passes the rest on to the root's handlers."""

    def __init__(self, level: int):
        super().__init__()
        self.threshold, self.lines = level, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.threshold:
            for handler in logging.getLogger().handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            return
        cause = f": {describe(record.exc_info[1])}" if record.exc_info and record.exc_info[1] else ""
        self.lines.append(record.getMessage().splitlines()[0] + cause)


@contextmanager
def collected(logger_name: str, level: int = logging.ERROR) -> Iterator[list[str]]:
    """For the block, take the records of one logger (and its children) at `level` and above off the
    console and hand them to the caller, each as one line with its exception's: for a library that
    logs a failure and goes on, where the caller makes it one error of its own."""
    logger, collecting = logging.getLogger(logger_name), _Collecting(level)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(collecting)
    try:
        yield collecting.lines
    finally:
        logger.removeHandler(collecting)
        logger.propagate = propagate


@contextmanager
def root_logger_kept() -> Iterator[None]:
    """For a library that reconfigures the root logger and may not put it back."""
    root = logging.getLogger()
    level, filters, handlers = root.level, list(root.filters), list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.filters, root.handlers = filters, handlers


def set_job_prefix(prefix: str) -> None:
    """Start every console line of this process with `prefix` (a sweep job's number), so parallel jobs' lines can be told apart."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(logging.Formatter(prefix + "%(message)s"))


def move_log_file(target: Path) -> Optional[Path]:
    """Point the log file handler at `target`, appending what was logged so far; returns the file it wrote before."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            before = Path(handler.baseFilename)
            if before != target.resolve():
                handler.acquire()
                try:
                    handler.close()
                    with target.open("a") as log, before.open() as earlier:
                        log.write(earlier.read())
                    handler.baseFilename, handler.mode = str(target.resolve()), "a"
                finally:
                    handler.release()
            return before
    return None


def plain_console(level: int = logging.INFO) -> None:
    """Logging for the command-line tools outside Hydra (inspect, reproduce, sync): the same quiet console.
    Where logging is already set up (a caller's own, or a test runner's), it is left alone."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(LibraryNoise())
    logging.basicConfig(level=level, handlers=[handler], force=True)
