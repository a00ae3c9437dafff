"""What a re-run needs to match: the code's commit, library versions, the platform and every installed package."""

import platform
import subprocess
from importlib import metadata

from pipeline.paths import PROJECT_DIR


def git_state() -> dict:
    """The commit the code ran from, and whether it had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def environment_tags() -> dict:
    """Library versions and the platform."""
    versions = {name: metadata.version(name) for name in ("tensorflow", "keras", "mlflow", "hydra-core", "numpy")}
    return {"version.python": platform.python_version(), **{f"version.{k}": v for k, v in versions.items()}, "platform": platform.platform()}


def installed_packages() -> str:
    """`pip freeze` without a pip subprocess: every installed distribution as name==version."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"
