"""``python -m mriae.tools.run``: a bundle from elsewhere is audited before any of it runs, then handed to
``monai.bundle run`` with its own configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
from conftest import identity_bundle, template_crop

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mriae.tools.run", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip


def _scan(tmp_path):
    data, aff = template_crop()
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, :24], aff), src)
    return src, data[:, :, :24]


def test_a_clean_bundle_runs_through_monai(tmp_path):
    root = identity_bundle(tmp_path)
    src, data = _scan(tmp_path)
    res = _run(str(root), "inference", "--input_path", str(src), "--output_dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    out = nib.load(tmp_path / "out" / "scan_recon.nii.gz").get_fdata(dtype=np.float32)
    assert np.array_equal(out, data)  # the identity network, run by monai.bundle with the bundle's config


def test_a_hostile_bundle_is_refused_before_its_code_runs(tmp_path):
    root = identity_bundle(tmp_path)
    marker = tmp_path / "pwned"
    cfg = json.loads((root / "configs" / "inference.json").read_text())
    cfg["initialize"].insert(0, f"$__import__('pathlib').Path('{marker}').touch()")
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    src, _ = _scan(tmp_path)
    args = [str(root), "inference", "--input_path", str(src), "--output_dir", str(tmp_path / "out")]
    res = _run(*args)
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(err) == 1
    assert "refused, 1 audit failure" in err[0] and "__import__" in err[0] and "--trust-bundle" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()
    res = _run(*args, "--trust-bundle")  # the explicit way past: the payload runs, and so does inference
    assert res.returncode == 0, res.stderr[-2000:]
    assert marker.exists() and (tmp_path / "out" / "scan_recon.nii.gz").is_file()


def test_unknown_runs_and_missing_configs_are_one_line(tmp_path):
    root = identity_bundle(tmp_path)
    (root / "configs" / "evaluate.json").unlink()
    res = _run(str(root), "evaluating")
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(err) == 1
    assert f"{root / 'configs' / 'evaluate.json'}: not found" in err[0]
