"""The MLflow store in a process of its own, beside the training process.

Opening a store costs a second or more before the first step: importing MLflow's SQL
layer and checking (for a new store, creating) its schema. A process started before
TensorFlow is imported does that on another core while TensorFlow loads, and every
later call to the store (a commit, an artifact copied into the store) runs there too,
not on the training process's interpreter lock. So does the tracking's own CPU work
(`beside`): drawing the run's pictures, listing the installed packages.

`StoreClient` is a drop-in for `MlflowClient`: each method is the client's, called in
that process, and returns what the client returns or raises what it raised. Calls are
synchronous, so whatever a job logged is in the store when the job ends. One process
serves every store a job uses; it ignores the signals a job is stopped with (the job
ends its run first) and exits when the job's end of the pipe closes, however it ended.
"""

import os
import pickle
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, NoReturn, Optional, TypeVar


T = TypeVar("T")


class StoreClient:
    """An `MlflowClient` for `tracking_uri` whose calls run in the store's process."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri

    def __getattr__(self, method: str):
        if method.startswith("__"):
            raise AttributeError(method)
        return lambda *args, **kwargs: _service().call(self.tracking_uri, method, args, kwargs)

    def __repr__(self) -> str:
        return f"StoreClient({self.tracking_uri!r})"


class _Service:
    """The store's process and the pipe to it; one call at a time, from any thread."""

    def __init__(self):
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        command = [sys.executable, "-m", "pipeline.tracking.service", str(requests_read), str(answers_write)]
        self.process = subprocess.Popen(command, pass_fds=(requests_read, answers_write), stdin=subprocess.DEVNULL)
        os.close(requests_read)
        os.close(answers_write)
        self._requests, self._answers = Connection(requests_write, readable=False), Connection(answers_read, writable=False)
        self._lock = threading.Lock()
        self._unread = 0  # answers to calls made ahead, not waited for

    def ahead(self, uri: str, method: str, **kwargs) -> None:
        """Make a call without waiting for it; its answer, whatever it is, is dropped."""
        with self._lock:
            try:
                self._requests.send((uri, method, (), kwargs))
            except OSError:  # the process is gone: the next call starts another and reports any error
                return
            self._unread += 1

    def call(self, uri: Optional[str], method, args: tuple, kwargs: dict) -> Any:
        """The store's `method` called on `uri`'s client, or with no uri, `method` itself (`beside`)."""
        with self._lock:
            try:
                for _ in range(self._unread):
                    self._answers.recv()
                self._unread = 0
                self._requests.send((uri, method, args, kwargs))
                ok, value = self._answers.recv()
            except (OSError, EOFError) as error:  # the process is gone: killed, or out of memory
                from mlflow.exceptions import MlflowException

                try:
                    code = self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                raise MlflowException(f"the tracking process ended (exit code {code}): {type(error).__name__}") from None
        if ok:
            return value
        raise value


_current: Optional[_Service] = None
_starting = threading.Lock()


def _service() -> _Service:
    global _current
    with _starting:
        if _current is None or _current.process.poll() is not None:
            _current = _Service()
        return _current


def beside(function: Callable[..., T], *args) -> T:
    """`function(*args)`, called in the store's process, on its own core: work that would otherwise
    hold this process's interpreter lock while it trains or verifies. `function` is sent by name, so
    it must be importable; its arguments and result are pickled."""
    return _service().call(None, function, args, {})


def prepare() -> None:
    """Start the store's process now, so that it imports MLflow while this one imports TensorFlow."""
    _service()


def open_ahead(uri: str) -> None:
    """Open a database store now (for a new one, create its tables), while this process goes on;
    a failure is left for the job's own first call to report. A server is left alone: one that
    does not answer is the job's to report, in seconds, not this process's to wait for."""
    if not uri.startswith(("http://", "https://", "databricks")):
        _service().ahead(uri, "search_experiments", max_results=1)


def _forget_in_child() -> None:
    """A forked process has its own pipe to its own store process, not a copy of its parent's."""
    global _current, _starting
    _current, _starting = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def _portable(error: BaseException) -> BaseException:
    """The error as the job can catch it: a lost connection as `requests` raises it, a database
    error as an MLflow one (the job need not import SQLAlchemy), else as it was, if it pickles."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    if isinstance(error, requests.RequestException):
        return requests.ConnectionError(str(error))
    if type(error).__module__.startswith("sqlalchemy"):
        return MlflowException(f"{type(error).__name__}: {str(error).splitlines()[0]}")
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # e.g. an exception class whose constructor takes other arguments than it keeps
        if isinstance(error, MlflowException):
            return MlflowException(error.message, error_code=ErrorCode.Value(error.error_code))
        return RuntimeError(f"{type(error).__name__}: {error} (in the tracking process)")


def serve(requests_fd: int, answers_fd: int) -> NoReturn:
    """Answer calls until the job closes its end of the pipe."""
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(stop, signal.SIG_IGN)  # the job, told to stop, ends its run through this process
    requests, answers = Connection(requests_fd, writable=False), Connection(answers_fd, readable=False)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: F401  (what makes opening a store slow)
    from mlflow.tracking import MlflowClient

    clients: dict[str, MlflowClient] = {}
    while True:
        try:
            uri, method, args, kwargs = requests.recv()
        except EOFError:  # the job has ended: every answer was sent, every write committed
            os._exit(0)  # not the half second of tearing down MLflow's modules, which a job's caller would wait for
        try:
            if uri is None:  # a function of the job's (`beside`)
                answer = pickle.dumps((True, method(*args, **kwargs)))
            else:
                client = clients.get(uri) or clients.setdefault(uri, MlflowClient(uri))
                answer = pickle.dumps((True, getattr(client, method)(*args, **kwargs)))
        except Exception as error:  # the call's error, or an answer that cannot be sent back
            answer = pickle.dumps((False, _portable(error)))
        answers.send_bytes(answer)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
