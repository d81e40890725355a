"""End to end on CPU: train the res_unet bundle with `python -m monai.bundle run training` as a user
does, evaluate it, run inference on NIfTI, MGZ and DICOM inputs, and read the MLflow runs back.

The budget is tiny (a few epochs on a few slices of a small real-template cohort), yet the
assertions are about behaviour: validation PSNR rises, the reconstruction beats the corrupted
input, outputs land on the input's exact grid, and no DICOM identifier leaks anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EPOCHS, REPO, artifact_names, run_bundle

pytestmark = pytest.mark.slow

CONFIGS = REPO / "bundles" / "res_unet" / "configs"


def test_validation_psnr_rises_and_best_checkpoint_is_kept(trained_s4):
    trained = trained_s4
    root = trained["root"]
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    psnr = [v["val_clean_psnr"] for v in hist["validation"]]
    assert len(psnr) == EPOCHS and len(hist["train_loss"]) == EPOCHS
    assert psnr[-1] > psnr[0] + 5  # dB
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert (root / "outputs" / "training" / "curves.png").stat().st_size > 10_000
    # the checkpoint is a plain state_dict that loads with weights_only=True, from the best epoch
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "stem.weight" in state
    side = json.loads((root / "models" / "model.json").read_text())
    best = int(np.argmin([v["val_loss"] for v in hist["validation"]])) + 1
    assert side["epoch"] == best and side["metric"] == "val_loss"
    assert side["data"]["fingerprint"] == json.loads(trained["datalist"].read_text())["fingerprint"]["hash"]
    assert not list((root / "models").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_evaluation_reports_clean_and_corrupted(trained_s4):
    trained = trained_s4
    out = trained["root"] / "eval"
    df = pd.read_csv(out / "per_slice.csv")
    dl = json.loads(trained["datalist"].read_text())
    n_test = sum(len(r["slices"]) for r in dl["test"])
    assert set(df["condition"]) == {"clean", "noise", "dropout", "blankout", "blur", "combined"}
    assert len(df) == 6 * n_test and set(df["subject"]) == {"heldout-000", "heldout-001"}
    for col in ("mse", "dssim", "psnr", "ssim"):
        assert df[col].notna().all()
    np.testing.assert_allclose(df["dssim"], (1 - df["ssim"]) / 2, atol=1e-6)
    summ = json.loads((out / "summary.json").read_text())
    # the reconstruction beats the corrupted input it was given
    for cond in ("dropout", "combined"):  # severe enough that a tiny CPU budget must beat the input
        assert summ[cond]["psnr"]["mean"] > summ[cond]["input_psnr"]["mean"], cond
    assert summ["combined"]["ssim"]["mean"] > summ["combined"]["input_ssim"]["mean"]
    assert {p.name for p in (out / "figures").glob("*.png")} == {"heldout-000.png", "heldout-001.png"}
    assert "| combined |" in trained["evaluate"].stdout and "PSNR recon | PSNR input" in trained["evaluate"].stdout
    s = pd.read_csv(out / "summary.csv")
    assert {"mean", "std", "n"} <= set(s.columns)


def test_mlflow_runs_hold_params_metrics_and_artifacts(trained_s4):
    from mlflow.tracking import MlflowClient

    trained = trained_s4
    client = MlflowClient(tracking_uri=trained["uri"])
    exp = client.get_experiment_by_name("res_unet")
    runs = {r.info.run_name.split("-")[1]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"train", "evaluate"}
    tr = runs["train"]
    p = tr.data.params
    assert p["learning_rate"] == "0.001" and p["batch_size"] == "8" and p["max_epochs"] == str(EPOCHS)
    assert p["loss"] == "mse" and p["corruption.noise_std"] == "[0.0, 0.04]" and p["corruption.blankout_prob"] == "0.2"
    assert p["early_stop_patience"] == "20" and p["lr_factor"] == "0.2" and p["parameters_keras_count"] == "483649"
    hist = client.get_metric_history(tr.info.run_id, "val_clean_psnr")
    assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1))
    assert len(client.get_metric_history(tr.info.run_id, "train_loss")) == EPOCHS
    arts = artifact_names(client, tr.info.run_id)
    assert {"model.pt", "model.json", "curves.png", "history.json", "train.json", "README.md"} <= arts
    ev = runs["evaluate"]
    assert ev.data.metrics["test_combined_psnr"] > ev.data.metrics["test_combined_input_psnr"]
    assert {"per_slice.csv", "summary.json", "heldout-000.png"} <= artifact_names(client, ev.info.run_id)


def test_the_denoiser_learns_keeps_its_plan_and_beats_the_noisy_input(trained):
    root = trained["root"]
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    corrupted = [v["val_corrupted_psnr"] for v in hist["validation"]]
    assert len(corrupted) == EPOCHS and corrupted[-1] > corrupted[0] + 3  # dB
    side = json.loads((root / "models" / "model.json").read_text())
    dl = json.loads(trained["datalist"].read_text())
    assert side["plan"] == dl["preprocessing"]  # the plan travels with the weights
    assert side["model"]["context"] == 2 and side["model"]["axes"] == [0, 1, 2]
    net = side["model"]["network"]
    assert net["_target_"] == "mriae.networks.res_unet.ResUNetAE" and net["residual"] and net["in_channels"] == 5
    assert net["noise_map"] and net["norm"] == "none"
    summ = json.loads((root / "eval" / "summary.json").read_text())
    assert summ["noise"]["psnr"]["mean"] > summ["noise"]["input_psnr"]["mean"] + 1  # dB: it denoises
    assert summ["clean"]["psnr"]["mean"] > 30  # and leaves a clean slice nearly alone (a tiny CPU budget)


def _infer(trained, input_path: Path, out: Path) -> subprocess.CompletedProcess:
    root = trained["root"]
    return run_bundle("--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root),
                      "--input_path", str(input_path), "--output_dir", str(out))


def test_inference_overlays_the_input_exactly(trained, small_cohort, tmp_path):
    src = sorted((small_cohort / "subjects").glob("demo-*.nii.gz"))
    src = next(p for p in src if nib.aff2axcodes(nib.load(p).affine) != ("R", "A", "S"))  # a non-canonical one
    mgz = tmp_path / "vol.mgz"
    img = nib.load(src)
    nib.save(nib.MGHImage(img.get_fdata().astype(np.float32), img.affine), mgz)
    for inp, stem, ext in ((src, src.name[: -len(".nii.gz")], ".nii.gz"), (mgz, "vol", ".mgz")):
        out = tmp_path / f"out_{stem}"
        _infer(trained, inp, out)  # written like the input: NIfTI for NIfTI, MGZ for MGZ
        assert sorted(p.name for p in out.iterdir()) == [f"{stem}_recon{ext}", f"{stem}_residual{ext}"]
        rec, res = nib.load(out / f"{stem}_recon{ext}"), nib.load(out / f"{stem}_residual{ext}")
        for o in (rec, res):
            assert o.shape == img.shape
            np.testing.assert_allclose(o.affine, img.affine, atol=1e-4)
        x, y = img.get_fdata(), rec.get_fdata()
        fg = x > np.percentile(x, 60)
        assert np.corrcoef(x[fg], y[fg])[0, 1] > 0.8  # the reconstruction is the same anatomy, in input units
        assert 0.3 < y[fg].mean() / x[fg].mean() < 3


def test_dicom_in_no_identifiers_out(trained, small_cohort, tmp_path):
    from mriae.io import load_volume, write_dicom_series

    img = nib.load(small_cohort / "subjects" / "heldout-001.nii.gz")
    data = img.get_fdata()[:, :, 40:100]  # keep it quick: 60 axial slices
    aff = img.affine.copy()
    aff[:3, 3] += aff[:3, 2] * 40
    dcm = tmp_path / "study"
    write_dicom_series(data, aff, dcm, patient_name="Doe^Jane", patient_id="PID-998877")
    out = tmp_path / "out"
    res = _infer(trained, dcm, out)
    files = list(out.iterdir())
    assert len(files) == 2
    ref = load_volume(dcm)
    for f in files:
        o = nib.load(f)
        assert o.shape == tuple(ref.shape[1:])
        np.testing.assert_allclose(o.affine, np.asarray(ref.affine), atol=1e-4)
    prep = tmp_path / "prepared"
    subprocess.run([sys.executable, "-m", "mriae.prepare", "--source", "dicom", "--input", str(dcm), "--output",
                    str(prep), "--workers", "1", "--fractions", "1", "0", "0"], check=True, capture_output=True, text=True)
    texts = [res.stdout, res.stderr, (prep / "datalist.json").read_text()] + [p.name for p in files + list(prep.rglob("*"))]
    for secret in ("Doe", "Jane", "PID-998877"):
        assert not any(secret in t for t in texts), secret


def test_user_mistakes_get_one_line_errors(trained, tmp_path):
    root = trained["root"]
    res = run_bundle("--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root),
                     "--input_path", str(tmp_path / "nope.nii.gz"), check=False)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and f"error: {tmp_path / 'nope.nii.gz'}: input not found" in res.stderr
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b broken")
    res = run_bundle("--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root),
                     "--input_path", str(bad), "--output_dir", str(tmp_path / "o"), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "bad.nii.gz" in res.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
