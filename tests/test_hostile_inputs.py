"""The bad-input corpus, through the command a user runs (``monai.bundle run`` of res_unet's
inference.json): every case exits non-zero with ONE line ``error: <file>: <problem>`` (a folder: one
line per bad file and a summary), no traceback, and nothing written."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import identity_bundle, template_crop


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _volume() -> np.ndarray:
    return template_crop()[0][:, :, :24]  # a small real volume (64 x 80 x 24)


def _case(name: str, tmp: Path) -> tuple[Path, Path, str]:
    """(input path, the file the error must name, a word of the problem it must state)."""
    vol = _volume()
    if name == "missing":
        p = tmp / "nope.nii.gz"
        return p, p, "not found"
    if name == "empty":
        p = tmp / "empty.nii.gz"
        p.write_bytes(b"")
        return p, p, "empty"
    if name == "truncated":
        p = _nifti(tmp / "full.nii.gz", vol)
        raw = gzip.decompress(p.read_bytes())
        t = tmp / "cut.nii.gz"
        t.write_bytes(gzip.compress(raw[: len(raw) // 3]))
        p.unlink()
        return t, t, "cannot read"
    if name == "2d":
        p = _nifti(tmp / "flat.nii.gz", vol[:, :, 0])
        return p, p, "single"
    if name == "4d":
        p = _nifti(tmp / "series.nii.gz", np.stack([vol, vol], -1))
        return p, p, "3-D"
    if name in ("nan", "inf"):
        v = vol.copy()
        v[10, 10, 10] = np.nan if name == "nan" else np.inf
        p = _nifti(tmp / f"{name}.nii.gz", v)
        return p, p, "NaN" if name == "nan" else "Inf"
    if name == "zeros":
        p = _nifti(tmp / "zeros.nii.gz", np.zeros_like(vol))
        return p, p, "no intensity range"
    if name == "singular_affine":
        aff = np.zeros((4, 4))
        aff[3, 3] = 1
        p = tmp / "noaffine.nii.gz"
        img = nib.Nifti1Image(vol, None)  # a header whose sform maps every voxel to one point
        img.set_qform(None, code=0)
        img.set_sform(aff, code=1)
        nib.save(img, p)
        return p, p, "affine"
    if name == "single_slice":
        p = _nifti(tmp / "one.nii.gz", vol[:, :, :1])
        return p, p, "single slice"
    if name == "complex":
        p = _nifti(tmp / "complex.nii.gz", (vol + 1j * vol).astype(np.complex64))
        return p, p, "complex"
    if name == "dicom_no_pixels":
        from mriae.io import write_dicom_series

        files = write_dicom_series(vol, np.eye(4), tmp / "study", patient_name="Doe^J", patient_id="P1")
        ds = pydicom.dcmread(files[3])
        del ds.PixelData
        ds.save_as(files[3])
        return tmp / "study", f"{tmp / 'study'}: {files[3].name}", "no pixel data"
    raise ValueError(name)


CASES = ["missing", "empty", "truncated", "2d", "4d", "nan", "inf", "zeros", "singular_affine",
         "single_slice", "complex", "dicom_no_pixels"]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return identity_bundle(tmp_path_factory.mktemp("bundle"))


def _infer(bundle: Path, inp: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--input_path", str(inp), "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _errors(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_input_gets_one_line_and_nothing_is_written(bundle, tmp_path, name):
    inp, named, word = _case(name, tmp_path)
    out = tmp_path / "out"
    res = _infer(bundle, inp, out)
    err = _errors(res)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(err) == 1, res.stderr[-2000:]
    assert str(named) in err[0] and word.lower() in err[0].lower(), err[0]
    assert not out.exists() or not any(out.iterdir())


def test_an_output_folder_that_is_a_file_is_refused_before_any_compute(bundle, tmp_path):
    src = _nifti(tmp_path / "scan.nii.gz", _volume())
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    res = _infer(bundle, src, out)
    err = _errors(res)
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(err) == 1
    assert str(out) in err[0] and out.read_text() == "keep me"


def test_a_folder_is_checked_whole_before_anything_is_written(bundle, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    _nifti(folder / "a_good.nii.gz", _volume())
    v = _volume()
    v[0, 0, 0] = np.nan
    _nifti(folder / "b_nan.nii.gz", v)
    _nifti(folder / "c_zeros.nii.gz", np.zeros_like(v))
    out = tmp_path / "out"
    res = _infer(bundle, folder, out)
    err = "\n".join(_errors(res)) + res.stderr
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "b_nan.nii.gz" in err and "c_zeros.nii.gz" in err and "a_good.nii.gz" not in err
    assert "2 of 3 inputs cannot be used; nothing was written" in err
    assert not out.exists() or not any(out.iterdir())  # not even the good file's output
