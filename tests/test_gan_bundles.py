"""End to end on CPU: train the three GAN bundles with `python -m monai.bundle run training` on a tiny
budget (small networks via config overrides, 2 epochs), read the MLflow runs back, and generate
NIfTI samples with the inference configs.

What is asserted is what a user relies on: losses, gradient penalty, Wasserstein estimate and the
quality metrics are finite and logged every epoch, `--tracking mlflow` joins the run instead of
failing on the missing `loss` key, `--use_mlflow False` writes no MLflow store, and generated samples
land as NIfTI with an RIA affine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, artifact_names

pytestmark = pytest.mark.slow

EPOCHS = 2
SMALL = {
    "dcgan_2d": [
        "--g_channels",
        "[32,16,8,4]",
        "--d_channels",
        "[4,8,16,32]",
        "--max_slices_per_subject",
        "4",
        "--batch_size",
        "8",
    ],
    "wgan_gp_2d": [
        "--g_channels",
        "[32,16,8,4]",
        "--d_channels",
        "[4,8,16,32]",
        "--max_slices_per_subject",
        "4",
        "--batch_size",
        "4",
        "--epoch_length",
        "10",
    ],
    "wgan_gp_3d": [
        "--g_channels",
        "[16,8,4]",
        "--d_channels",
        "[4,8,16]",
        "--img_size",
        "32",
        "--batch_size",
        "2",
        "--epoch_length",
        "5",
        "--grid_samples",
        "4",
    ],
}
INFER_SMALL = {
    "dcgan_2d": ["--g_channels", "[32,16,8,4]"],
    "wgan_gp_3d": ["--g_channels", "[16,8,4]", "--img_size", "32"],
}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", *args]


@pytest.fixture(scope="module")
def gan_runs(small_prepared, tmp_path_factory):
    """The three bundles trained side by side (subprocesses in parallel), each in its own copy."""
    base = tmp_path_factory.mktemp("gans")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    runs, procs = {}, {}
    for name, extra in SMALL.items():
        root = base / name
        shutil.copytree(
            REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("models", "eval", "outputs")
        )
        uri = f"sqlite:///{base / (name + '.db')}"
        args = [
            "training",
            "--config_file",
            str(root / "configs" / "train.json"),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(small_prepared.parent),
            "--tracking_uri",
            uri,
            "--train#trainer#max_epochs",
            str(EPOCHS),
            "--quality_samples",
            "8",
            *extra,
        ]
        if name == "wgan_gp_2d":
            args += ["--tracking", "mlflow"]
        if name == "wgan_gp_3d":
            args += ["--use_mlflow", "False"]
        runs[name] = {
            "root": root,
            "uri": uri,
            "db": base / (name + ".db"),
            "data": str(small_prepared.parent),
        }
        procs[name] = subprocess.Popen(
            _cmd(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, p in procs.items():
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"{name}:\n{out[-4000:]}"
        runs[name]["log"] = out
    return runs


def _curves(run) -> dict:
    return json.loads((run["root"] / "outputs" / "training" / "curves.json").read_text())


@pytest.mark.parametrize("name", ["dcgan_2d", "wgan_gp_2d"])
def test_losses_and_quality_are_finite_and_logged_to_mlflow_every_epoch(gan_runs, name):
    from mlflow.tracking import MlflowClient

    run = gan_runs[name]
    client = MlflowClient(tracking_uri=run["uri"])
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert len(runs) == 1  # with --tracking mlflow MONAI's handler joins our run
    r = runs[0]
    assert r.info.status == "FINISHED"
    keys = [
        "train_g_loss",
        "train_d_loss",
        "train_d_real",
        "train_d_fake",
        "gen_msssim",
        "real_msssim",
        "fd",
        "mmd",
        "mmd_rbf",
    ]
    if name.startswith("wgan"):
        keys += ["train_gp", "train_grad_norm", "train_wasserstein"]
    for k in keys:
        hist = client.get_metric_history(r.info.run_id, k)
        # (with --tracking mlflow MONAI's added handler logs the epoch metrics a second time, same steps)
        assert {m.step for m in hist} == set(range(1, EPOCHS + 1)), k
        assert all(np.isfinite(m.value) for m in hist), k
    p = r.data.params
    assert p["learning_rate"] == "5e-05" and p["betas"] == "[0.5, 0.9]" and p["latent_size"] == "200"
    assert (p["n_critic"], p["gp_weight"]) == (("5", "10.0") if name.startswith("wgan") else ("1", "0.0"))
    assert p["feature_space"].startswith(("trained ResUNetAE", "random-init ResUNetAE"))
    arts = artifact_names(client, r.info.run_id)
    assert {
        "epoch_001.png",
        "epoch_002.png",
        "real.png",
        "curves.json",
        "curves.png",
        "model.pt",
        "train.json",
    } <= arts
    c = _curves(run)
    assert len(c["epochs"]) == EPOCHS
    for e in c["epochs"]:
        assert (
            0 < e["gen_msssim"] <= 1
            and 0 < e["real_msssim"] < 1
            and e["fd"] >= 0
            and np.isfinite(e["mmd_rbf"])
        )
    if name == "wgan_gp_2d":
        # 10 critic iterations per epoch, a generator update every 5th
        assert [e["generator_updates"] for e in c["epochs"]] == [2, 4]
        assert c["epochs"][-1]["train_gp"] > 0
        # MONAI's `--tracking mlflow` handler logged the per-iteration 'loss' (the generator loss)
        it = client.get_metric_history(r.info.run_id, "train_loss")
        assert len(it) == EPOCHS * 10 and all(np.isfinite(m.value) for m in it)
        assert any(a.startswith("config_") and a.endswith(".json") for a in arts)


def test_3d_gan_trains_without_mlflow_and_draws_three_planes(gan_runs):
    run = gan_runs["wgan_gp_3d"]
    assert not run["db"].exists()  # --use_mlflow False: no store written
    c = _curves(run)
    assert [e["generator_updates"] for e in c["epochs"]] == [1, 2]
    for e in c["epochs"]:
        for k in (
            "train_g_loss",
            "train_d_loss",
            "train_gp",
            "train_wasserstein",
            "gen_msssim",
            "fd",
            "mmd_rbf",
        ):
            assert np.isfinite(e[k]), k
    samples = run["root"] / "outputs" / "training" / "samples"
    assert {p.name for p in samples.glob("*.png")} == {"real.png", "epoch_001.png", "epoch_002.png"}
    side = json.loads((run["root"] / "models" / "model.json").read_text())
    assert side["epoch"] == EPOCHS and side["generator_updates"] == 2 and side["critic_updates"] == 10


@pytest.mark.parametrize("name", ["dcgan_2d", "wgan_gp_3d"])
def test_inference_writes_generated_nifti(gan_runs, name, tmp_path):
    root = gan_runs[name]["root"]
    out = tmp_path / "gen"
    res = subprocess.run(
        _cmd(
            "--config_file",
            str(root / "configs" / "inference.json"),
            "--bundle_root",
            str(root),
            "--output_dir",
            str(out),
            "--n_samples",
            "3",
            *INFER_SMALL[name],
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    files = sorted(out.glob("sample_*.nii.gz"))
    assert [f.name for f in files] == ["sample_000.nii.gz", "sample_001.nii.gz", "sample_002.nii.gz"]
    imgs = [nib.load(f) for f in files]
    shape = (1, 64, 64) if name == "dcgan_2d" else (32, 32, 32)
    vox = 3.75 if name == "dcgan_2d" else 7.5
    for img in imgs:
        assert img.shape == shape and nib.aff2axcodes(img.affine) == ("R", "I", "A")
        np.testing.assert_allclose(img.header.get_zooms(), [vox] * 3)
        x = img.get_fdata()
        assert 0 <= x.min() and x.max() <= 1
    assert not np.allclose(imgs[0].get_fdata(), imgs[1].get_fdata())  # different latents, different samples


def test_3d_generator_io_verifies_at_full_size():
    from monai.bundle import verify_net_in_out

    cfg = REPO / "bundles" / "wgan_gp_3d" / "configs"
    verify_net_in_out(
        net_id="network_def", meta_file=str(cfg / "metadata.json"), config_file=str(cfg / "inference.json")
    )


def test_3d_gan_continues_with_resume_and_stops_at_its_time_limit(gan_runs):
    """A second command with ``--resume True`` continues the 2-epoch run of the fixture from its saved
    state (update counters, curves) instead of starting again; ``--stop_after_s 0`` stops after one
    more epoch, saved and resumable (runs are run last: they change the fixture's run)."""
    run = gan_runs["wgan_gp_3d"]
    root = run["root"]
    base = [
        "training", "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root),
        "--dataset_dir", run["data"], "--use_mlflow", "False", "--quality_samples", "8",
        "--resume", "True", *SMALL["wgan_gp_3d"],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    for extra in (
        ["--train#trainer#max_epochs", "5", "--stop_after_s", "0"],
        ["--train#trainer#max_epochs", "4"],
    ):
        res = subprocess.run(
            _cmd(*base, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    c = _curves(run)
    # 2 epochs from the fixture, 1 until the time limit, 1 more to max_epochs 4: one curve, no restart
    assert [e["epoch"] for e in c["epochs"]] == [1, 2, 3, 4]
    assert [e["generator_updates"] for e in c["epochs"]] == [1, 2, 3, 4]
    side = json.loads((root / "models" / "model.json").read_text())
    assert (side["epoch"], side["generator_updates"], side["critic_updates"]) == (4, 4, 20)
    assert "resumed from" in res.stdout + res.stderr
