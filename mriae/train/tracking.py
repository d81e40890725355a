"""MLflow conventions of the bundles.

- Default store: ``<repo>/mlruns/mlflow.db`` (SQLite; MLflow 3.13+ refuses the old file store),
  artifacts in ``<repo>/mlruns/artifacts``. See them with
  ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.
- One override points a run at a server: ``--tracking_uri http://host:5000`` (or set the
  ``MLFLOW_TRACKING_URI`` environment variable, which MONAI's handler honours first).
- ``run_name`` is made once per process, so training and validation handlers (and the ones that
  ``--tracking mlflow`` adds) all write into one run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from monai.utils import path_to_sqlite_uri

from mriae import repo_root

__all__ = ["default_tracking_uri", "run_name", "flatten", "MLFlowHandler"]


def default_tracking_uri() -> str:
    d = repo_root() / "mlruns"
    d.mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(d / "mlflow.db"))


def run_name(bundle: str, step: str) -> str:
    """``<bundle>-<step>-<date>-<time>-<4 hex>``: unique also for runs started in the same second (MONAI's
    handler joins an existing run of the same name, which would mix two trainings' parameters)."""
    import secrets

    return f"{bundle}-{step}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def flatten(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested hyperparameters -> flat ``{"corruption.noise_std": "[0.0, 0.04]", ...}`` for MLflow."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _mlflow_handler_base():
    from monai.handlers import MLFlowHandler as _Base

    return _Base


class MLFlowHandler(_mlflow_handler_base()):
    """MONAI's ``MLFlowHandler`` that survives its tracking server.

    - The server unreachable at the start or in the middle of a run: the training goes on, one
      warning is printed, tracking stops for this process (the metrics stay in the training's
      ``history.json`` and the weights in ``models/``: nothing is lost). HTTP calls give up after a
      few seconds (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``..._MAX_RETRIES``, unless already set).
    - A run whose process dies is not left RUNNING: an exception (Ctrl-C, SIGTERM included) ends it
      as FAILED / KILLED; a process killed outright (SIGKILL) cannot say so, so every run records
      its host and process id as tags, and the next run of the same experiment marks such runs
      KILLED when their process no longer exists (a run resumed under its own name goes on).
    """

    _warned = False

    def __init__(self, *args, **kwargs) -> None:
        import os

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        super().__init__(*args, **kwargs)
        self.offline = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        super().attach(engine)
        if not engine.has_event_handler(self._failed, Events.EXCEPTION_RAISED):
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
            # first in line: MONAI's StatsHandler re-raises from its own EXCEPTION_RAISED handler, and
            # handlers after it would not run (Ignite keeps them in attach order, in a private list)
            handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
            if isinstance(handlers, list) and len(handlers) > 1:
                handlers.insert(0, handlers.pop())

    def _guard(self, what: str, fn, *args):
        if self.offline:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - the server, the network or the store: training goes on
            self.offline = True
            if not MLFlowHandler._warned:
                MLFlowHandler._warned = True
                import logging

                logging.getLogger("mriae.train.tracking").warning(
                    "MLflow tracking stopped (%s failed: %s); training goes on, metrics stay in history.json",
                    what,
                    " ".join(str(e).split())[:200],
                )
            return None

    def start(self, engine) -> None:
        self._guard("start", self._start, engine)

    def _start(self, engine) -> None:
        import os
        import signal
        import socket

        super().start(engine)
        if self.cur_run is None:
            return
        self.client.set_tag(self.cur_run.info.run_id, "mriae.host", socket.gethostname())
        self.client.set_tag(self.cur_run.info.run_id, "mriae.pid", str(os.getpid()))
        self._mark_dead_runs(socket.gethostname())
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # SIGTERM ends the run as KILLED
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def _mark_dead_runs(self, host: str) -> None:
        import os

        for r in self.client.search_runs([self.experiment.experiment_id], "attributes.status = 'RUNNING'"):
            if r.info.run_id == self.cur_run.info.run_id or r.data.tags.get("mriae.host") != host:
                continue
            try:
                os.kill(int(r.data.tags.get("mriae.pid", "-1")), 0)
            except ProcessLookupError:
                self.client.set_terminated(r.info.run_id, "KILLED")
            except (ValueError, PermissionError, OSError):
                continue

    def epoch_completed(self, engine) -> None:
        self._guard("epoch logging", super().epoch_completed, engine)

    def iteration_completed(self, engine) -> None:
        self._guard("iteration logging", super().iteration_completed, engine)

    def complete(self) -> None:
        self._guard("logging the artifacts", super().complete)

    def close(self) -> None:
        if self.offline:
            self.cur_run = None
            return
        self._guard("closing the run", super().close)

    def _failed(self, engine, e: BaseException) -> None:
        if self.offline or self.cur_run is None:
            raise e
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
        self._guard("ending the run", self.client.set_terminated, self.cur_run.info.run_id, status)
        self.cur_run = None
        raise e  # Ignite re-raises only when no EXCEPTION_RAISED handler exists


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
