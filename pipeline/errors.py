"""The errors a user can act on.

Anything raised as a PipelineError is reported as one line and a non-zero
exit; everything else is a bug and keeps its traceback.
"""

import sys


class PipelineError(Exception):
    """A problem with the user's input or files, explained in its message."""


class ConfigError(PipelineError):
    """A config value that the schema's types allow but the pipeline cannot use."""


class DataError(PipelineError):
    """A dataset that is missing or not in the expected layout."""


class ArtifactError(PipelineError):
    """A saved model or checkpoint that cannot be written or read back."""


class ExportError(ArtifactError):
    """A model that a deploy format's converter cannot convert: that format fails, the others go on."""


class VerificationError(PipelineError):
    """A saved artifact that does not reproduce the trained model."""


def describe(error: BaseException) -> str:
    """An exception in one short line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def unreadable(path, what: str, error: BaseException) -> str:
    """The message for a file a reader could not make sense of."""
    return f"{path} is not a readable {what} (truncated or corrupt?): {describe(error)}"


def report(error: BaseException | str, code: int = 1) -> int:
    """The command-line contract for a problem the user can fix: one `error:` line on stderr; returns the exit code."""
    print(f"error: {error}", file=sys.stderr)
    return code
