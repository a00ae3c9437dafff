"""`pipeline.direct_io`: files built in memory the process keeps and written, and read, past the
page cache. Real files on the real file systems: the test folder's, and tmpfs, which refuses O_DIRECT."""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.direct_io import BLOCK, Image, Writer, blocks

TMPFS = Path("/dev/shm")


def folders(tmp_path: Path) -> list[Path]:
    """The test folder, and a tmpfs folder where there is one (O_DIRECT refused: the ordinary way)."""
    found = [tmp_path]
    if TMPFS.is_dir() and os.access(TMPFS, os.W_OK):
        found.append(TMPFS)
    return found


def test_an_image_is_the_file_written_to_it_holes_read_as_zeros_and_nothing_of_the_file_before(tmp_path):
    image = Image()
    image.write(b"\xff" * 10_000)
    image.save(tmp_path / "first")
    image.reset()
    image.write(b"head")
    image.seek(20)  # a hole, where the file before had bytes
    image.write(b"tail")
    assert image.tell() == 24
    image.seek(0)
    assert image.read(6) == b"head\0\0"
    image.truncate(30)  # grown: zeros, as a file reads
    for folder in folders(tmp_path):
        image.save(folder / f"second-{os.getpid()}")
        assert (folder / f"second-{os.getpid()}").read_bytes() == b"head" + bytes(16) + b"tail" + bytes(6)
        (folder / f"second-{os.getpid()}").unlink()
    assert (tmp_path / "first").read_bytes() == b"\xff" * 10_000
    image.close()


def test_blocks_read_back_every_byte_of_a_file_of_any_size(tmp_path):
    contents = [np.random.default_rng(0).bytes(BLOCK + 12_345), b""]  # more than a block, not a multiple of the alignment; empty
    for folder in folders(tmp_path):
        for number, data in enumerate(contents):
            path = folder / f"data-{os.getpid()}-{number}"
            path.write_bytes(data)
            assert b"".join(bytes(block) for block in blocks(path)) == data
            path.unlink()


def test_an_image_too_small_for_the_file_grows_and_keeps_what_it_held(tmp_path):
    image, data = Image(), np.random.default_rng(1).bytes(3 * BLOCK + 7)
    image.write(data[:100])
    image.write(data[100:])  # past the image's memory
    image.save(tmp_path / "large")
    assert (tmp_path / "large").read_bytes() == data


@pytest.mark.parametrize("size", [0, 1, 4096])
def test_an_image_of_an_aligned_or_empty_size_saves_exactly(tmp_path, size):
    image = Image()
    image.write(b"x" * size)
    image.save(tmp_path / "file")
    assert (tmp_path / "file").read_bytes() == b"x" * size


@pytest.mark.parametrize("sizes", [[0], [5], [BLOCK], [3, BLOCK - 3, 10], [2 * BLOCK + 1]])
def test_a_writer_writes_a_stream_exactly(tmp_path, sizes):
    data = np.random.default_rng(2).bytes(sum(sizes))
    for folder in folders(tmp_path):
        path, start = folder / f"stream-{os.getpid()}", 0
        with Writer(path) as file:
            for size in sizes:
                file.write(data[start : start + size])
                start += size
                assert file.tell() == start
        assert path.read_bytes() == data
        path.unlink()


def test_zipfile_writes_an_archive_to_a_writer_that_reads_back(tmp_path):
    """As a checkpoint's LoggedModel archive is written: a stream zipfile cannot seek back in."""
    member = np.random.default_rng(3).bytes(BLOCK + 99)
    with Writer(tmp_path / "model.keras") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w") as entry:
            entry.write(member)
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        assert archive.testzip() is None and archive.read("model.weights.h5") == member and archive.read("config.json") == b"{}"
