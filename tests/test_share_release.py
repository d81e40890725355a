"""A released bundle (mriae.share pack / verify / run / fetch): res_unet trained and evaluated on the
small cohort, packed into a Model Zoo zip, checked like the Model Zoo's CI in a clean virtual
environment that has the zip's wheel but not this checkout, run on a real DICOM study, registered in
and fetched from a real MLflow server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import REPO, SENTINEL_BYTES, SENTINELS, check_derived, dicom_crop, flipped_rows, mlflow_server_at, patch_tags

from mriae.errors import InputError
from mriae.io.dicom import write_dicom_series
from mriae.share import dicom_out as dout

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def release(trained, tmp_path_factory):
    from mriae.share.pack import pack

    return pack(trained["root"], tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder with a positioned T1 series of the real template (sentinel identifiers) and a
    screen capture ('OT') beside it."""
    vol, aff = flipped_rows(*dicom_crop())
    root = tmp_path_factory.mktemp("study")
    uid = pydicom.uid.generate_uid()
    t1 = write_dicom_series(vol, aff, root / "t1", series_description="T1 MPRAGE", study_uid=uid,
                            image_type=("ORIGINAL", "PRIMARY", "M", "ND"))  # fmt: skip
    patch_tags(t1, SeriesNumber=3, **SENTINELS)
    ot = write_dicom_series(vol, aff, root / "ot", series_description="screen", study_uid=uid,
                            image_type=("ORIGINAL", "PRIMARY"), modality="OT")  # fmt: skip
    patch_tags(ot, SeriesNumber=5, **SENTINELS)
    return root


def _members(path: Path) -> dict[str, bytes]:
    """Every member of a zip, and of every zip inside it (``outer:inner``)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for n in z.namelist():
            out[n] = data = z.read(n)
            if data[:4] == b"PK\x03\x04":
                with zipfile.ZipFile(__import__("io").BytesIO(data)) as inner:
                    out.update({f"{n}:{m}": inner.read(m) for m in inner.namelist()})
    return out


# ------------------------------------------------------------------------------------------- pack


def test_pack_writes_a_model_zoo_release(release, trained):
    root = trained["root"]
    assert release.path.name == f"res_unet_{release.version}.zip" and release.sha256 == _sha(release.path)
    members = _members(release.path)
    files = {n for n in members if ":" not in n}
    for want in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "models/model.pt",
                 "models/model.json", "models/model.ts", "models/model.pt2", "docs/README.md",
                 "docs/data_license.txt", "docs/meta_schema.json", "LICENSE", "requirements.txt",
                 "manifest.sha256"):  # fmt: skip
        assert f"res_unet/{want}" in files, want
    assert any(n.startswith("res_unet/wheels/mriae-") and n.endswith(".whl") for n in files)
    assert release.exports == {"ts": "ok", "pt2": "ok"}
    # the shipped weights are the evaluated ones, and eval_metrics come from that evaluation
    assert hashlib.sha256(members["res_unet/models/model.pt"]).hexdigest() == _sha(root / "models" / "model.pt")
    meta = json.loads(members["res_unet/configs/metadata.json"])
    summ = json.loads((root / "eval" / "summary.json").read_text())
    m = meta["eval_metrics"]
    assert m["psnr_clean_input"] == round(summ["clean"]["psnr"]["mean"], 4)
    assert m["ssim_clean_input"] == round(summ["clean"]["ssim"]["mean"], 4)
    assert m["psnr_corrupted_input"] == round(summ["noise"]["psnr"]["mean"], 4)
    assert m["test_noise_input_psnr"] == round(summ["noise"]["input_psnr"]["mean"], 4)
    assert m["psnr_corrupted_input"] > m["test_noise_input_psnr"]  # the trained denoiser beats its input
    assert release.version in meta["changelog"]
    # no local absolute path anywhere, nested archives (TorchScript, torch.export, the wheel) included
    side = json.loads(members["res_unet/models/model.json"])
    assert not os.path.isabs(side["data"]["datalist"]) and side["data"]["datalist"].endswith("datalist.json")
    needles = {str(REPO).encode(), str(root.parent).encode(), str(Path.home()).encode(), sys.prefix.encode()}
    for name, data in members.items():
        assert not [n for n in needles if n in data], name
    # the manifest lists every file with its sha256
    listed = dict(reversed(line.split("  ", 1)) for line in members["res_unet/manifest.sha256"].decode().splitlines())
    assert set(listed) == {n[len("res_unet/"):] for n in files} - {"manifest.sha256"}
    assert all(hashlib.sha256(members[f"res_unet/{k}"]).hexdigest() == v for k, v in listed.items())
    readme = members["res_unet/docs/README.md"].decode()
    assert f"## This release: res_unet {release.version}" in readme and "pip install -r res_unet/requirements.txt" in readme


def test_release_audit_passes_and_a_changed_file_fails_it(release, study, tmp_path):
    from mriae.audit import audit
    from mriae.share.clinic import run_release
    from mriae.share.verify import unpack

    root = unpack(release.path, tmp_path / "u")
    rep = audit(root, require_manifest=True)
    assert rep.ok, [f.line() for f in rep.failures]
    warned = sorted(f.file for f in rep.warnings)  # the exports and the wheel hold code: said, not refused
    assert len(warned) == 2 and warned[0] == "models/model.ts" and warned[1].startswith("wheels/mriae-")
    with pytest.raises(InputError, match="exists already"):
        unpack(release.path, tmp_path / "u")
    cfg = root / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"slice_batch_size": 32', '"slice_batch_size": 31'))
    rep = audit(root, require_manifest=True)
    assert [f.file for f in rep.failures] == ["configs/inference.json"]
    with pytest.raises(InputError, match="refused, 1 audit failure"):
        run_release(root, study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pack_refuses_weights_it_did_not_evaluate(trained, tmp_path):
    from mriae.share.pack import pack

    root = tmp_path / "res_unet"
    shutil.copytree(trained["root"], root, ignore=shutil.ignore_patterns("outputs"))
    rec = json.loads((root / "eval" / "evaluated.json").read_text())
    (root / "eval" / "evaluated.json").write_text(json.dumps({**rec, "sha256": "0" * 64}))
    with pytest.raises(InputError, match="the evaluation is of other weights .* evaluating"):
        pack(root, tmp_path / "dist")
    (root / "eval" / "evaluated.json").write_text(json.dumps(rec))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="no changelog entry for version 9.9.9"):
        pack(root, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()  # nothing written


# ---------------------------------------------------------------------------- clean environment


def test_the_release_runs_in_a_clean_environment(release, study, tmp_path):
    """A new virtual environment with the third-party packages but not this checkout: the zip's own
    wheel is installed; verify (schema, net in/out, TorchScript and torch.export equal PyTorch,
    inference from inside the unpacked bundle) and a DICOM run both pass there."""
    import torch

    from mriae.share.verify import unpack

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "third_party.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    wheel = next((unpack(release.path, tmp_path / "u") / "wheels").glob("mriae-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True)  # fmt: skip
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["OMP_NUM_THREADS"] = "2"
    where = subprocess.run([py, "-c", "import mriae; print(mriae.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert where.startswith(str(site)) and not where.startswith(str(REPO))
    vol, aff = dicom_crop()
    scan = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), scan)
    r = subprocess.run([py, "-m", "mriae.share", "verify", str(release.path), "--input", str(scan)], cwd=tmp_path,
                       env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln[:4] in ("ok  ", "FAIL")]
    names = [ln.split()[1].rstrip(":") for ln in lines]
    assert names == ["audit", "verify_metadata", "verify_net_in_out", "torchscript", "export", "inference"]
    assert all(ln.startswith("ok  ") for ln in lines) and "max |diff|" in lines[3]
    out = tmp_path / "out"
    r = subprocess.run([py, "-m", "mriae.share", "run", str(release.path), "--input", str(study), "--output", str(out),
                        "--identity", "research"], cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["denoised", "denoised.nii.gz", "input.nii.gz", "report.html",
                                                     "residual.nii.gz", "residual_pmap.dcm", "run.json"]  # fmt: skip
    for f in out.rglob("*"):  # research export: no identifier survives, in any file
        if f.is_file():
            data = f.read_bytes()
            assert not any(s in data for s in SENTINEL_BYTES), f
    bad = subprocess.run([py, "-m", "mriae.share", "run", str(release.path), "--input", str(study), "--output", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "exists and is not empty" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------ DICOM run


def test_run_answers_in_dicom_on_the_series_grid(release, study, tmp_path):
    from mriae.share.clinic import run_release

    (res,) = run_release(release.path, study, tmp_path / "out")
    out = res.output
    sel = dout.select_series(study)
    vol, _ = dout.series_volume(sel)
    assert res.series == sel.label and res.shape == sel.shape
    # the NIfTI files overlay the series exactly; the network changed the volume, and not wildly
    inp, den_img, res_img = (nib.load(out / f) for f in ("input.nii.gz", "denoised.nii.gz", "residual.nii.gz"))
    for img in (inp, den_img, res_img):
        assert np.allclose(img.affine, dout.ras_affine_xyz(sel), atol=1e-4)
    np.testing.assert_allclose(dout.volume_on_series_grid(sel, inp.get_fdata(), inp.affine), vol, rtol=0, atol=1e-3)
    den = dout.volume_on_series_grid(sel, den_img.get_fdata(dtype=np.float32), den_img.affine)
    change = np.abs(den - vol).mean() / np.abs(vol).mean()
    assert 1e-4 < change < 0.2, change
    np.testing.assert_allclose(dout.volume_on_series_grid(sel, res_img.get_fdata(), res_img.affine), vol - den,
                               atol=1e-3 * float(vol.max()))  # fmt: skip
    # the derived series: identifiers kept (clinic), references, geometry, pixels = the NIfTI output
    derived = [pydicom.dcmread(f) for f in sorted((out / "denoised").glob("IM_*.dcm"))]
    check_derived(sel, derived, den, same_identity=True, bundle="res_unet", version=release.version)
    assert derived[0].PatientID == SENTINELS["PatientID"]
    equip = derived[0].ContributingEquipmentSequence[-1]
    assert release.version in str(equip.SoftwareVersions) and "res_unet" in str(equip.ManufacturerModelName)
    pm = pydicom.dcmread(out / "residual_pmap.dcm")
    assert pm.FrameOfReferenceUID == sel.headers[0].FrameOfReferenceUID and int(pm.NumberOfFrames) == sel.shape[0]
    run = json.loads((out / "run.json").read_text())
    assert run["release_sha256"] == release.sha256 and run["version"] == release.version
    html = (out / "report.html").read_text()
    assert "not for clinical use" in html and release.version in html and html.count("data:image/png;base64,") >= 3
    assert not any(v in html for v in SENTINELS.values())


def test_run_checks_every_study_before_writing(release, study, tmp_path):
    from mriae.share.clinic import run_release

    batch = tmp_path / "batch"
    shutil.copytree(study, batch / "a")
    shutil.copytree(study / "ot", batch / "b" / "ot")  # a study without an MR acquisition
    with pytest.raises(InputError) as e:
        run_release(release.path, batch, tmp_path / "out", batch=True)
    assert str(batch / "b") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["batch"]
    with pytest.raises(InputError, match="a file; --input takes a DICOM study folder"):
        run_release(release.path, next((study / "t1").glob("*.dcm")), tmp_path / "out")
    shutil.rmtree(batch / "b")
    shutil.copytree(study, batch / "c")
    results = run_release(release.path, batch, tmp_path / "out", batch=True, report=False, workers=2)
    assert [r.output.name for r in results] == ["a", "c"] and results[0].seconds["writers"] == 2
    a, c = (nib.load(tmp_path / "out" / n / "denoised.nii.gz").get_fdata() for n in ("a", "c"))
    np.testing.assert_array_equal(a, c)  # one workflow over the folder, two writer processes, one answer
    assert len(list((tmp_path / "out" / "c" / "denoised").glob("IM_*.dcm"))) == 24


# ------------------------------------------------------------------------------ MLflow hand-over


def test_pack_registers_and_fetch_returns_it(trained, tmp_path):
    from mriae.share.__main__ import main

    (tmp_path / "server").mkdir()
    with mlflow_server_at(tmp_path / "server") as uri:
        assert main(["pack", str(trained["root"]), "--out", str(tmp_path / "dist"), "--tracking-uri", uri,
                     "--alias", "production"]) == 0  # fmt: skip
        (made,) = (tmp_path / "dist").glob("res_unet_*.zip")
        assert main(["fetch", "--model", "res_unet", "--alias", "production", "--tracking-uri", uri,
                     "--out", str(tmp_path / "got")]) == 0  # fmt: skip
        (got,) = (tmp_path / "got").glob("*.zip")
        assert _sha(got) == _sha(made)
        from mlflow.tracking import MlflowClient

        mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias("res_unet", "production")
        assert mv.tags["sha256"] == _sha(made) and mv.tags["plan.spacing"]
        assert float(mv.tags["psnr_clean_input"]) > 0
        assert main(["fetch", "--model", "res_unet", "--version", "7", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
