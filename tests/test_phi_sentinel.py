"""No identifier leaves a DICOM study: sentinel values in PatientName, PatientID, PatientBirthDate,
InstitutionName and free-text tags go through prepare, training with MLflow on, evaluation and
inference; not one byte of them is in any file those steps write (datalist, caches, weights, side
files, histories, figures, CSVs, the MLflow store and its artifacts) or in what they print."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pydicom
from conftest import REPO

SENTINELS = {
    "PatientName": "Qzxsentinel^Wilhelmina",
    "PatientID": "SENT-PID-424242",
    "PatientBirthDate": "19010203",
    "InstitutionName": "Sentinel Hospital Qzx",
    "ImageComments": "free text: sentinel-note-7781",
    "StudyDescription": "sentinel study qzx",
    "ReferringPhysicianName": "Qzxdoctor^Sentinel",
}
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # run inside the folder that is searched: whatever a step writes relative to its working
    # directory (MLflow's default artifact root among them) is searched too
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=900, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_sentinel_identifiers_appear_in_no_file_written(small_cohort, tmp_path):
    from mriae.io import write_dicom_series

    studies = tmp_path / "studies"
    for i, src in enumerate(sorted((small_cohort / "subjects").glob("demo-*.nii.gz"))[:4]):
        img = nib.load(src)
        files = write_dicom_series(img.get_fdata(), img.affine, studies / f"s{i}",
                                   patient_name=f"{SENTINELS['PatientName']}{i}", patient_id=f"{SENTINELS['PatientID']}{i}")  # fmt: skip
        for f in files:  # the other identifying tags a scanner writes
            ds = pydicom.dcmread(f)
            for tag, value in SENTINELS.items():
                if tag not in ("PatientName", "PatientID"):
                    setattr(ds, tag, value)
            ds.PatientSex = "F"
            ds.save_as(f)
    written = tmp_path / "written"  # everything the steps write lives here
    prep, root, mlruns = written / "prepared", written / "bundle" / "res_unet", written / "mlruns"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    mlruns.mkdir(parents=True)  # the store; written/ is every step's working directory
    outs = [_run("-m", "mriae.prepare", "--source", "dicom", "--input", str(studies), "--output", str(prep),
                 "--workers", "1", cwd=written)]  # fmt: skip
    cfg = [str(root / "configs" / f) for f in ("train.json", "s4.json")]
    common = ["--bundle_root", str(root), "--dataset_dir", str(prep), "--tracking_uri", uri, "--max_slices_per_subject", "4"]
    outs.append(_run("-m", "monai.bundle", "run", "training", "--config_file", str(cfg), *common,
                     "--train#trainer#max_epochs", "1", "--batch_size", "4", cwd=written))  # fmt: skip
    outs.append(_run("-m", "monai.bundle", "run", "evaluating", "--config_file",
                     str([*cfg, str(root / "configs" / "evaluate.json")]), *common,
                     "--validate#dataset#max_slices_per_subject", "4", cwd=written))  # fmt: skip
    outs.append(_run("-m", "monai.bundle", "run", "--config_file",
                     str([str(root / "configs" / "inference.json"), str(root / "configs" / "s4.json")]),
                     "--bundle_root", str(root), "--input_path", str(studies / "s0"),
                     "--output_dir", str(written / "inference"), cwd=written))  # fmt: skip
    files = [p for p in written.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".json", ".npy", ".pt", ".csv", ".png", ".db"} <= kinds and len(list((written / "inference").iterdir())) == 2
    stored = [p for p in files if p.name == "model.pt" and root / "models" not in p.parents]
    assert stored, sorted(str(p.relative_to(written)) for p in files)[:50]  # MLflow's copy of the weights
    needles = [v.encode() for v in SENTINELS.values()] + [b"Qzxsentinel", b"SENT-PID", b"Wilhelmina", b"sentinel-note"]
    needles += [v.split("^")[0].encode() for v in SENTINELS.values() if "^" in v]
    hits = [(str(p.relative_to(written)), n.decode()) for p in files for n in needles if n in p.read_bytes()]
    printed = [n.decode() for r in outs for n in needles if n in (r.stdout + r.stderr).encode()]
    assert not hits and not printed, (hits[:10], printed[:10])
