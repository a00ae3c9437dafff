"""Which process owns a run: the `host` and `pid` tags it is started with, and whether that
process is still alive. An unfinished run whose process is gone is one to continue."""

import os
import socket


def owner_tags() -> dict:
    return {"host": socket.gethostname(), "pid": str(os.getpid())}  # tag values: strings, as a tracking server takes them


def process_alive(tags: dict) -> bool:
    """Whether the process that wrote a run (from its tags) is still running on this machine."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid"):
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
