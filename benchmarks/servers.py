"""Throwaway servers on 127.0.0.1, for the benchmarks and the tests alike: `mlflow server` over a
store, and a PostgreSQL cluster made from the system's binaries (Debian's `postgresql` package)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


class Unavailable(RuntimeError):
    """What a server needs is not on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until `url` answers; fails with the end of `log` if the process ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, process.args))} ended with exit code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def stop(process: subprocess.Popen) -> None:
    """End the server and every process it started (its session), waiting until all are gone."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_mlflow_server(store_uri: str, artifacts: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` over a store, proxying artifacts into `artifacts`, on a loopback port (a free one by default)."""
    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--artifacts-destination", str(artifacts)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / f"{artifacts.name}-server-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    with log.open("a") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", server, log)
    return server, url


class PostgreSQL:
    """A throwaway PostgreSQL: a cluster in a temporary folder on a free loopback port, run as the
    `postgres` user when this is root (PostgreSQL refuses to run as root), gone when stopped.
    `durable=False` turns fsync off, for tests; a benchmark keeps it on, as a real server has it."""

    def __init__(self, durable: bool = False):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise Unavailable("no PostgreSQL binaries under /usr/lib/postgresql (Debian: apt-get install postgresql)")
        self.bin, self.port = found[-1].parent, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="pipeline-postgresql-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "start",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync={'on' if durable else 'off'}")  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, text=True)

    def database(self, name: str) -> str:
        """A new, empty database's URI, as `mlflow server --backend-store-uri` takes it."""
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
