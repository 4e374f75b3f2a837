"""Where the particles of one iteration are evaluated: in-process, joblib/loky workers, Dask or Ray.

Every backend returns one plain record per candidate, in particle order, so results never depend on
which worker finished first. The evaluator is shipped once per worker and kept alive across iterations:

- loky: the evaluator is cloudpickled once to a temporary file; each worker loads it on its first task
  and keeps it in a module-level cache keyed by a per-search token (tasks only carry widths);
- Dask: ``client.scatter(evaluator, broadcast=True)``, then tasks take the scattered future;
- Ray: ``ray.put(evaluator)``, then tasks take the object reference.

An evaluator that raises is turned into a failed record here (``status = "failed: ..."``): the search
records it and goes on. A NaN or infinite score is a failure too.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from acp.errors import UserError, one_line

log = logging.getLogger(__name__)

_WORKER_EVALUATORS: dict[str, object] = {}  # token -> evaluator, in loky worker processes


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def evaluate_record(evaluator, widths) -> dict:
    """Evaluate one candidate; never raises (except KeyboardInterrupt/SystemExit)."""
    began = time.perf_counter()
    try:
        result = evaluator.evaluate([int(w) for w in widths])
    except Exception as error:  # a failing candidate must not stop the search
        reason = one_line(f"{type(error).__name__}: {error}")[:500]
        log.warning("evaluation of %s raised: %s", list(widths), reason)
        return _failed(reason, time.perf_counter() - began)
    record = {
        "score": _float(getattr(result, "score", None)),
        "accuracy": _float(getattr(result, "accuracy", None)),
        "loss": _float(getattr(result, "loss", None)),
        "macs": _int(getattr(result, "macs", None)),
        "params": _int(getattr(result, "params", None)),
        "seconds": _float(getattr(result, "seconds", None)),
        "status": str(getattr(result, "status", "ok")),
        "worker": worker_name(),
    }
    if record["seconds"] is None:
        record["seconds"] = time.perf_counter() - began
    if record["status"] == "ok" and (record["score"] is None or not math.isfinite(record["score"])):
        record["status"] = f"failed: non-finite score {record['score']!r}"
    if record["status"] != "ok":
        record["score"] = None
    return record


def _failed(reason: str, seconds: float) -> dict:
    return {
        "score": None, "accuracy": None, "loss": None, "macs": None, "params": None,
        "seconds": seconds, "status": f"failed: {reason}", "worker": worker_name(),
    }  # fmt: skip


def _float(value) -> float | None:
    return None if value is None else float(value)


def _int(value) -> int | None:
    return None if value is None else int(value)


class SerialBackend:
    """Evaluate in this process, one candidate after the other."""

    name = "serial"

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def map(self, widths_list) -> list[dict]:
        return [evaluate_record(self.evaluator, widths) for widths in widths_list]

    def close(self) -> None:
        pass


PARENT_CHECK_SECONDS = 1.0  # how often a loky worker checks that the search process is still there
_PARENT_WATCH: list = []  # the watchdog thread of this loky worker, once started


def _exit_with_parent() -> None:
    """Start (once per worker) a thread that ends this loky worker when the search process that started
    it is gone: after a kill -9 nobody stops the workers, and loky's idle timeout would keep them, and the
    evaluator's memory, for minutes."""
    if _PARENT_WATCH:
        return
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    thread = threading.Thread(target=watch, name="acp-exit-with-parent", daemon=True)
    thread.start()
    _PARENT_WATCH.append(thread)


def _loky_task(token: str, path: str, widths) -> dict:
    _exit_with_parent()
    evaluator = _WORKER_EVALUATORS.get(token)
    if evaluator is None:
        import pickle

        with open(path, "rb") as stream:
            evaluator = pickle.load(stream)
        _WORKER_EVALUATORS.clear()  # one search per worker process at a time
        _WORKER_EVALUATORS[token] = evaluator
    return evaluate_record(evaluator, widths)


class LokyBackend:
    """``workers`` local processes through joblib's loky backend (reused across iterations)."""

    name = "loky"

    def __init__(self, evaluator, workers: int):
        from joblib import Parallel

        try:  # loky's own serializer: also ships evaluators defined in __main__ or by lambdas
            import cloudpickle
        except ImportError:
            import pickle as cloudpickle
        self.token = uuid.uuid4().hex
        self._directory = Path(tempfile.mkdtemp(prefix="acp-evaluator-"))
        self._path = self._directory / "evaluator.pkl"
        self._path.write_bytes(cloudpickle.dumps(evaluator))
        self._parallel = Parallel(n_jobs=workers, backend="loky")
        self._parallel.__enter__()

    def map(self, widths_list) -> list[dict]:
        from joblib import delayed

        task = delayed(_loky_task)
        return list(self._parallel(task(self.token, str(self._path), list(w)) for w in widths_list))

    def close(self) -> None:
        try:
            self._parallel.__exit__(None, None, None)
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)


def _with_evaluator(evaluator, widths) -> dict:
    return evaluate_record(evaluator, widths)


class DaskBackend:
    """A Dask cluster at ``address`` (``tcp://host:8786``); the evaluator is scattered to every worker."""

    name = "dask"

    def __init__(self, evaluator, address: str, timeout: float = 10.0):
        try:
            from distributed import Client
        except ImportError:
            raise UserError("--dask-scheduler needs Dask: pip install 'acp[dask]'") from None
        try:
            self.client = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise UserError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({one_line(error)[:160]})"
            ) from None
        try:
            self._handle = self.client.scatter(evaluator, broadcast=True, hash=False)
        except (OSError, KeyError) as error:  # a worker died while receiving (CommClosedError is an OSError)
            self.client.close()
            raise UserError(
                f"the Dask cluster at {address} lost a worker while receiving the evaluator; run the "
                f"command again ({type(error).__name__}: {one_line(error)[:120]})"
            ) from None

    def map(self, widths_list) -> list[dict]:
        futures = [
            self.client.submit(_with_evaluator, self._handle, list(w), pure=False) for w in widths_list
        ]
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()


class RayBackend:
    """Ray (``address=None``: a local Ray instance; else ``ray://host:10001`` or ``auto``)."""

    name = "ray"

    def __init__(self, evaluator, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray: pip install 'acp[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            options = {"address": address} if address else {"num_cpus": workers}
            ray.init(**options, include_dashboard=False, log_to_driver=False)
        self._remote = ray.remote(_with_evaluator)
        self._handle = ray.put(evaluator)

    def map(self, widths_list) -> list[dict]:
        return self._ray.get([self._remote.remote(self._handle, list(w)) for w in widths_list])

    def close(self) -> None:
        pass  # leave Ray running for the caller (it may be shared)


def make_backend(
    evaluator,
    *,
    workers: int = 1,
    backend: str = "loky",
    dask_scheduler: str | None = None,
    scheduler_timeout: float = 10.0,
):
    """The backend the settings ask for: Dask when a scheduler is given, Ray, loky for workers > 1,
    else in-process."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be an integer >= 1, got {workers!r}")
    if dask_scheduler is not None or backend == "dask":
        if dask_scheduler is None:
            raise UserError("backend 'dask' needs --dask-scheduler tcp://HOST:PORT")
        return DaskBackend(evaluator, dask_scheduler, scheduler_timeout)
    if backend == "ray":
        return RayBackend(evaluator, None, workers)
    if workers > 1:
        return LokyBackend(evaluator, workers)
    return SerialBackend(evaluator)
