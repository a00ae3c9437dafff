"""File-system helpers: atomic writes, sizes, hard links, digests and writability checks.

Every file the pipeline writes under a final name goes through `atomic_path`, so a
crash, kill or full disk never leaves a half-written file that looks complete.
"""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from pipeline.errors import ArtifactError


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to write to; rename it into place only on success.

    A crash, kill or full disk mid-write leaves no file under the final name: the
    `.partial-` file is removed, or left for the next write to replace after a kill.
    The suffix is kept because Keras picks the format from it.
    """
    temporary = final.with_name(f".partial-{final.name}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove(temporary)
        yield temporary
        remove(final)
        os.replace(temporary, final)
    except BaseException as error:
        _close_left_open(temporary)
        remove(temporary)
        reason = _io_reason(error)
        if reason is None:
            raise
        raise ArtifactError(f"writing {final} failed: {reason}; nothing was written under that name") from error


def _io_reason(error: BaseException) -> Optional[str]:
    """The operating system's reason for a failed write (disk full, read-only...), if that is what it was."""
    if isinstance(error, OSError):
        return os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    if any(cls.__name__ == "OpError" for cls in type(error).__mro__):  # TensorFlow's SaveV2 and friends
        return str(error).splitlines()[0].rsplit("; ", 1)[-1].split(" [Op:")[0]
    return None


def _close_left_open(temporary: Path) -> None:
    """Close an HDF5 file that a failed writer left open at `temporary`.

    Keras does not close its HDF5 store when a write fails (a full disk, say). h5py
    would retry the flush as the objects are collected, and at exit the interpreter
    crashes. Closing it here fails on the flush again, but releases the file.
    """
    import h5py

    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if os.path.abspath(os.fsdecode(file_id.name)) == os.path.abspath(temporary):
            try:
                h5py.File(file_id).close()
            except (OSError, RuntimeError):
                pass  # the flush failed again; the file is closed all the same


def remove(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink(missing_ok=True)


def files_under(path: Path) -> list[Path]:
    """A file, or every file under a folder, in a stable order."""
    return [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())


def disk_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    return sum(f.stat().st_size for f in files_under(path))


def hard_linked(source: Path, link: Path) -> bool:
    """Give `source`'s bytes a second name, unless the file system cannot."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


def linked_or_copied(source: Path, target: Path) -> None:
    """`source`'s bytes at `target`: a second name for them where the file system allows (no
    gigabytes copied), else a copy. For the pipeline's own files, which it never rewrites in
    place (a new version is a new file renamed over the old name, leaving other names' bytes alone)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not hard_linked(source, target):
        shutil.copy2(source, target)


def sha256_of(path: Path, copy_to: Optional[BinaryIO] = None) -> str:
    """The file's SHA-256, read once in 16 MiB blocks, and written on to `copy_to` as it is read.
    (One pass for both: `zipfile` copying a 1.2 GB checkpoint into an archive in its own 8 KiB
    blocks, then a second pass to hash it, took 3.2 s of CPU; this takes 1.75 s.)"""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
            if copy_to is not None:
                copy_to.write(block)
    return digest.hexdigest()


def unwritable(folder: Path) -> Optional[str]:
    """Why `folder` cannot be created or written to, or None if it can."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    try:  # root passes every access check, yet cannot write to /proc or a read-only mount
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-check-"))
    except OSError as error:
        return f"{existing} is not writable ({os.strerror(error.errno) if error.errno else error})"
    return None
