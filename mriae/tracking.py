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

from . import repo_root

__all__ = ["default_tracking_uri", "run_name", "flatten"]


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
