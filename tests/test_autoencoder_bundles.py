"""Systems S1 to S3 as bundles: cae_2d, cae_3d (S1), conv_ae (S2), ae_2d and vae_2d (S3).

Fast tests check the networks against SPEC (parameter count, layer shapes, the VAE's loss), the
datasets against the cache they read, and every bundle's metadata and network shapes. The slow ones
train each bundle for a few epochs on the small real-template cohort (first through the same
``monai.bundle run`` entry point users call, the CLI for cae_2d) and check that validation loss
falls, then evaluate, infer on NIfTI, visualise feature maps and sample / interpolate with the VAE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO

BUNDLES = ("cae_2d", "cae_3d", "conv_ae", "ae_2d", "vae_2d")


def test_parameter_counts_and_shapes_match_spec():
    from mriae.networks import CAE, ConvAE, SimpleAE, SimpleVAE, count_parameters

    assert count_parameters(ConvAE()) == 427_713  # S2's Keras figure, exactly
    assert abs(count_parameters(ConvAE(), keras=False) - 427_713) / 427_713 < 0.01
    net = CAE().eval()
    x = torch.rand(3, 1, 64, 64)
    z = net.encode(x)
    assert z.shape == (3, 100) and 0 < z.min() and z.max() < 1  # dense sigmoid latent
    assert net.encoder(x).flatten(1).shape[1] == 4096 and net(x).shape == x.shape
    assert [m[0].kernel_size for m in net.encoder] == [(5, 5)] * 4 and [m[0].stride for m in net.encoder] == [
        (2, 2)
    ] * 4
    assert [m[0].kernel_size for m in net.decoder] == [(4, 4)] * 4
    net3 = CAE(spatial_dims=3, img_size=(160, 64, 64), latent_size=200)
    assert net3.bottom == (256, 10, 4, 4) and net3.to_latent[1].out_features == 200
    small3 = CAE(spatial_dims=3, img_size=(32, 16, 16), latent_size=20).eval()
    assert small3(torch.rand(2, 1, 32, 16, 16)).shape == (2, 1, 32, 16, 16)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net3.modules())  # S1: no normalisation
    # cae_3d's default: a GroupNorm between every (transposed) convolution and its activation, not after the head
    gn3 = CAE(spatial_dims=3, img_size=(160, 64, 64), latent_size=200, norm=("group", {"num_groups": 8}))
    norms = [m for m in gn3.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [n.num_channels for n in norms] == [64, 128, 256, 256, 256, 128, 64] and norms[0].num_groups == 8
    assert isinstance(gn3.decoder[-1][1], torch.nn.Sigmoid) and len(gn3.decoder[-1]) == 2
    assert count_parameters(gn3) == count_parameters(net3) + 2 * sum(n.num_channels for n in norms)
    groups = gn3.param_groups(5e-6)
    assert groups[1]["lr"] == 5e-6 and {id(p) for p in groups[1]["params"]} == {
        id(p) for p in gn3.to_latent.parameters()
    }
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(gn3, keras=False)
    assert "lr" not in net3.param_groups()[1]  # S1: one learning rate for everything
    assert ConvAE().eval()(torch.rand(1, 1, 176, 176)).shape == (1, 1, 176, 176)
    for cls in (SimpleAE, SimpleVAE):
        m = cls(latent_size=512)
        assert len(m.encoder) == 5 and len(m.decoder) == 5
        assert m.eval()(torch.rand(2, 1, 128, 128)).shape == (2, 1, 128, 128)


def test_vae_reparameterises_and_its_loss_is_bce_plus_beta_kl():
    from mriae.networks import SimpleAE, SimpleVAE, VAELoss

    torch.manual_seed(0)
    vae = SimpleVAE(img_size=64, channels=(8, 16, 32, 32, 32), latent_size=16)
    x = torch.rand(4, 1, 64, 64)
    vae.train()
    assert not torch.allclose(vae(x), vae(x))  # z is sampled in training
    vae.eval()
    y = vae(x)
    torch.testing.assert_close(y, vae(x))  # eval decodes the mean
    mu, logvar = vae.encode(x)
    torch.testing.assert_close(y, vae.decode(mu))
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
    torch.testing.assert_close(vae.kl, kl)
    bce = torch.nn.functional.binary_cross_entropy(y, x)
    for beta in (0.0, 1.0, 4.0):
        got = VAELoss(vae, beta)(y, x)
        torch.testing.assert_close(got, bce + beta * kl.mean() / (64 * 64))
    ae = SimpleAE(img_size=64, channels=(8, 16, 32, 32, 32), latent_size=16).eval()
    assert ae.encode(x)[1] is None and ae.kl is None


def test_coronal_slab_and_volume_datasets_read_the_cache(small_prepared):
    from mriae.data.volumes import CoronalSlabDataset, VolumeDataset

    dl = json.loads(small_prepared.read_text())
    train = CoronalSlabDataset(small_prepared, "training", n_slices=51, pad_to=176)
    assert len(train) == 51 * len(dl["training"]) and train[0]["image"].shape == (1, 176, 176)
    rec = dl["training"][0]
    vol = np.load(small_prepared.parent / rec["image"]).astype(np.float32)
    k0 = vol.shape[2] // 2 - 25
    assert train[0]["slice"] == k0 and train[50]["slice"] == k0 + 50
    lo, hi = train.intensity_range
    assert 0 <= lo < hi <= 1
    img = train[10]["image"][0].numpy()
    x0 = (176 - vol.shape[0]) // 2  # zero padding, centred (ResizeWithPadOrCrop)
    np.testing.assert_allclose(
        img[x0 : x0 + vol.shape[0], 24:152], (vol[:, :, k0 + 10] - lo) / (hi - lo), atol=1e-5
    )
    assert img[: x0 - 1].max() == 0 and img[:, :24].max() == 0
    test = CoronalSlabDataset(small_prepared, "test", slab=(60, 63), intensity_range=train.intensity_range)
    assert len(test) == 3 * len(dl["test"]) and test.intensity_range == train.intensity_range
    vols = VolumeDataset(small_prepared, "test", size=(40, 16, 16))
    assert len(vols) == len(dl["test"]) and vols[0]["image"].shape == (1, 40, 16, 16)
    assert 0 <= vols[0]["image"].min() and vols[0]["image"].max() <= 1
    assert (
        abs(
            float(vols[0]["image"].mean())
            - float(np.load(small_prepared.parent / dl["test"][0]["image"]).astype(np.float32).mean())
        )
        < 0.02
    )  # anti-aliased resize keeps the mean intensity
    # the 3D GAN's geometry: each axis padded / cropped to the in-plane field of view, then area-averaged
    cube = VolumeDataset(small_prepared, "test", size=16, cube=True, mode="area")
    sp = [float(v) for v in dl["preprocessing"]["spacing"]]
    side_mm = np.load(small_prepared.parent / dl["test"][0]["image"]).shape[1] * sp[1]
    assert cube[0]["image"].shape == (1, 16, 16, 16) and cube.voxel_mm == pytest.approx(side_mm / 16)
    assert vols.voxel_mm is None and cube[0]["slice"] == -1
    # area averaging of a padded cube: the mass of the volume scales by the cube's voxel count
    raw = np.load(small_prepared.parent / dl["test"][0]["image"]).astype(np.float32)
    want = raw.sum() * np.prod(sp) / (16**3 * cube.voxel_mm**3) if raw.shape[0] * sp[0] <= side_mm else None
    if want is not None:  # nothing was cropped: area resize preserves the integral
        assert float(cube[0]["image"].mean()) == pytest.approx(want, rel=0.02)


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_metadata_and_network_verify(name):
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    cfg = REPO / "bundles" / name / "configs"
    verify_metadata(meta_file=str(cfg / "metadata.json"), filepath=str(REPO / "bundles" / "meta_schema.json"))
    verify_net_in_out(
        "network_def", meta_file=str(cfg / "metadata.json"), config_file=str(cfg / "inference.json")
    )
    train, infer = (ConfigParser.load_config_file(cfg / f) for f in ("train.json", "inference.json"))
    assert train["network_def"] == infer["network_def"] and train["img_size"] == infer["img_size"]
    p = ConfigParser(train)
    for key in (
        "train#trainer#max_epochs",
        "train#dataset",
        "validate#evaluator",
        "network_def",
        "optimizer",
        "learning_rate",
        "batch_size",
        "dataset_dir",
        "use_mlflow",
        "tracking_uri",
    ):
        assert p.get(key) is not None, key
    for f in ("docs/README.md", "LICENSE", "configs/evaluate.json", "configs/logging.conf"):
        assert (REPO / "bundles" / name / f).is_file(), f
    assert "monai.bundle run training" in (REPO / "bundles" / name / "docs/README.md").read_text()


# ------------------------------------------------------------------------------------- end to end
TINY = {  # a budget a shared 2-core CPU trains in seconds; the data is the small real-template cohort
    "cae_2d": {"max_slices_per_subject": 8, "batch_size": 8, "learning_rate": 1e-3, "max_epochs": 3},
    # cae_3d keeps its own learning rates (2e-4, dense code layer 5e-6); 3 epochs of 10 steps
    "cae_3d": {
        "img_size": [32, 32, 32],
        "latent_size": 32,
        "batch_size": 2,
        "epoch_length": 10,
        "max_epochs": 3,
        "figure_interval": 1,
    },
    "conv_ae": {"n_slices": 9, "batch_size": 4, "max_epochs": 6},
    "ae_2d": {
        "max_slices_per_subject": 8,
        "batch_size": 8,
        "latent_size": 64,
        "learning_rate": 1e-3,
        "max_epochs": 3,
    },
    "vae_2d": {"max_slices_per_subject": 8, "batch_size": 8, "latent_size": 64, "max_epochs": 3},
}


def _copy(name, dest):
    root = dest / name
    shutil.copytree(
        REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("models", "eval", "outputs", "sweep")
    )
    return root


def _run(run_id, root, files, **over):
    from monai.bundle import run

    run(run_id, config_file=[str(root / "configs" / f) for f in files], bundle_root=str(root), **over)


@pytest.fixture(scope="module")
def trained(small_prepared, tmp_path_factory):
    """Each bundle copied and trained on the tiny budget; cae_2d through the CLI, cae_3d with MLflow."""
    base = tmp_path_factory.mktemp("s1s3")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    out = {"uri": uri, "dataset_dir": str(small_prepared.parent)}
    for name in BUNDLES:
        root = _copy(name, base)
        over = {
            "dataset_dir": str(small_prepared.parent),
            "tracking_uri": uri,
            "use_mlflow": name == "cae_3d",
            **TINY[name],
        }
        if name == "cae_2d":
            args = [
                x for k, v in over.items() for x in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)
            ]
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "monai.bundle",
                    "run",
                    "training",
                    "--config_file",
                    str(root / "configs/train.json"),
                    "--bundle_root",
                    str(root),
                    *args,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        else:
            _run("training", root, ["train.json"], **over)
        out[name] = root
    return out


def _history(root):
    return json.loads((root / "outputs/training/history.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_each_bundle_learns(trained, name):
    hist = _history(trained[name])
    val = [v["val_loss"] for v in hist["validation"]]
    assert len(val) == TINY[name]["max_epochs"] == len(hist["train_loss"])
    # validation loss falls (ae_2d's MSE + sigmoid head leaves its first plateau slowly: a weaker bound)
    assert val[-1] < (0.99 if name == "ae_2d" else 0.95) * val[0], val
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert torch.load(trained[name] / "models/model.pt", weights_only=True)
    side = json.loads((trained[name] / "models/model.json").read_text())
    assert side["epoch"] == int(np.argmin(val)) + 1


@pytest.mark.slow
def test_cae_3d_logs_depth_figures_each_epoch(trained):
    from mlflow.tracking import MlflowClient

    figs = sorted((trained["cae_3d"] / "outputs/training/depth_figures").glob("recon_epoch_*.png"))
    assert [f.name for f in figs] == [f"recon_epoch_{e:03d}.png" for e in (1, 2, 3)]
    assert all(f.stat().st_size > 5_000 for f in figs)
    client = MlflowClient(tracking_uri=trained["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("cae_3d").experiment_id])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "depth_figures")}
    assert names == {f"depth_figures/{f.name}" for f in figs}
    assert run.data.params["latent_size"] == "32" and run.data.params["betas"] == "[0.5, 0.999]"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 3


@pytest.mark.slow
def test_conv_ae_evaluation_reports_clean_and_noisy_psnr(trained, small_prepared):
    root = trained["conv_ae"]
    _run(
        "evaluating",
        root,
        ["train.json", "evaluate.json"],
        dataset_dir=trained["dataset_dir"],
        use_mlflow=False,
        n_slices=3,
    )
    summ = json.loads((root / "eval/summary.json").read_text())
    assert set(summ) == {"clean", "noise"}
    n_test = len(json.loads(small_prepared.read_text())["test"])
    assert summ["clean"]["psnr"]["n"] == summ["noise"]["psnr"]["n"] == 3 * n_test
    # Gaussian noise sigma 0.03 on [0, 1] inputs: the noisy input itself scores about 30.5 dB
    assert 29.5 < summ["noise"]["input_psnr"]["mean"] < 31.5
    # noise the network never saw costs the reconstruction little (S2 saw a 1.5 dB drop on its own pooled-MSE statistic)
    # the trained network beats a black output on the same slices by a margin
    from mriae.data.volumes import CoronalSlabDataset

    cfg = json.loads((root / "configs/train.json").read_text())
    train = CoronalSlabDataset(small_prepared, "training", n_slices=TINY["conv_ae"]["n_slices"], pad_to=cfg["img_size"])
    test = CoronalSlabDataset(small_prepared, "test", n_slices=3, pad_to=cfg["img_size"],
                              intensity_range=train.intensity_range)
    black = float((10 * torch.log10(1 / test.images.pow(2).mean(dim=(1, 2, 3)))).mean())
    assert summ["clean"]["psnr"]["mean"] > black + 3, (summ["clean"]["psnr"]["mean"], black)
    assert abs(summ["clean"]["psnr"]["mean"] - summ["noise"]["psnr"]["mean"]) < 1.6
    assert len(list((root / "eval/figures").glob("*.png"))) == n_test
    # S2's statistic (PSNR of one pooled MSE) beside ours, over the padded image and without the padding
    from mriae.evaluate.pooled_psnr import evaluate_bundle

    pooled = evaluate_bundle(root, trained["dataset_dir"], {"n_slices": 3})
    assert pooled["n_slices"] == 3 * n_test and 0.3 < pooled["padding_fraction"] < 0.6
    for cond in ("clean", "noise"):
        row = pooled["conditions"][cond]
        assert abs(row["mean_psnr_padded"] - summ[cond]["psnr"]["mean"]) < 1e-3  # evaluate.json's own number
        # slices of equal size: the mean of per-slice PSNRs is never below the pooled PSNR (Jensen)
        assert row["pooled_psnr_padded"] <= row["mean_psnr_padded"] + 1e-4
    noise = pooled["conditions"]["noise"]
    assert abs(noise["input_mean_psnr_padded"] - summ["noise"]["input_psnr"]["mean"]) < 1e-3
    assert abs(noise["input_pooled_psnr_unpadded"] - noise["input_pooled_psnr_padded"]) < 0.1  # noise is everywhere


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cae_3d", "conv_ae"])
def test_inference_writes_a_volume_on_the_input_grid(trained, small_cohort, tmp_path, name):
    src = sorted((small_cohort / "subjects").glob("heldout-*.nii.gz"))[0]
    root = trained[name]
    over = {k: v for k, v in TINY[name].items() if k in ("img_size", "latent_size")}
    _run("run", root, ["inference.json"], input_path=str(src), output_dir=str(tmp_path), **over)
    img = nib.load(src)
    stem = src.name[: -len(".nii.gz")]
    rec = nib.load(tmp_path / f"{stem}_recon.nii.gz")
    assert rec.shape == img.shape
    np.testing.assert_allclose(rec.affine, img.affine, atol=1e-4)
    assert np.isfinite(rec.get_fdata()).all() and rec.get_fdata().std() > 0


@pytest.mark.slow
def test_feature_map_figure_for_a_chosen_slice(trained, tmp_path):
    from mriae.tools.visualize import main

    root = trained["ae_2d"]
    sets = ["--set", f'dataset_dir="{trained["dataset_dir"]}"', "--set", "latent_size=64"]
    assert (
        main(
            [
                "--bundle",
                str(root),
                "--slice",
                "5",
                "--out",
                str(tmp_path),
                "--tracking_uri",
                trained["uri"],
                *sets,
            ]
        )
        == 0
    )
    (fig,) = tmp_path.glob("features_*.png")
    maps = np.load(next(tmp_path.glob("features_*.npz")))
    assert [k for k in maps.files if k.startswith("encoder")] == [f"encoder.{i}" for i in range(5)]
    assert maps["encoder.0"].shape == (32, 64, 64) and maps["encoder.4"].shape == (512, 4, 4)
    assert maps["decoder.4"].shape == (1, 128, 128)
    np.testing.assert_allclose(maps["decoder.4"], maps["reconstruction"], atol=1e-6)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("ae_2d").experiment_id])
    assert fig.name in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_vae_samples_from_the_prior_and_interpolates(trained, tmp_path):
    from mriae.tools.bundle import BundleHandle
    from mriae.tools.vae import main

    root = trained["vae_2d"]
    sets = ["--set", "latent_size=64", "--no-mlflow", "--out", str(tmp_path)]
    assert main(["sample", "--bundle", str(root), "--n", "6", *sets]) == 0
    s = np.load(tmp_path / "samples_seed0.npy")
    assert s.shape == (6, 1, 128, 128) and 0 < s.min() and s.max() < 1 and s.std(axis=0).mean() > 0
    assert (
        main(
            [
                "interpolate",
                "--bundle",
                str(root),
                "--slices",
                "0",
                "7",
                "--steps",
                "5",
                "--dataset_dir",
                trained["dataset_dir"],
                *sets,
            ]
        )
        == 0
    )
    (npy,) = tmp_path.glob("interp_*.npy")
    it = np.load(npy)
    h = BundleHandle(root, {"latent_size": 64, "dataset_dir": trained["dataset_dir"]})
    net, ds = h.network(), h.dataset("test")
    with torch.no_grad():  # the ends of the path are the reconstructions of the two slices
        ends = [net(ds[i]["image"][None]).numpy()[0] for i in (0, 7)]
    np.testing.assert_allclose(it[0], ends[0], atol=1e-5)
    np.testing.assert_allclose(it[-1], ends[1], atol=1e-5)
    assert np.abs(it[2] - it[0]).mean() > 0


@pytest.mark.slow
def test_cae_3d_code_is_alive_where_s1s_design_saturates(trained, tmp_path, capsys):
    """`python -m mriae.tools.latent_check` on the default cae_3d after the tiny budget (30 Adam steps):
    its sigmoid code is not saturated, differs between the training volumes and passes noise on to
    the reconstruction. S1's exact design (configs/s1.json over train.json), trained on the same
    budget, is the control: every unit sits at the sigmoid's flat top and every volume gets one
    reconstruction, as on the GPU after S1's 500 epochs (docs/results_s1_s3.md)."""
    from mriae.tools.latent_check import main

    small = {k: v for k, v in TINY["cae_3d"].items() if k in ("img_size", "latent_size")}
    s1 = _copy("cae_3d", tmp_path)
    _run(
        "training",
        s1,
        ["train.json", "s1.json"],
        dataset_dir=trained["dataset_dir"],
        use_mlflow=False,
        **TINY["cae_3d"],
    )
    capsys.readouterr()  # the training's log
    stats = {}
    for name, root, norm in (("default", trained["cae_3d"], None), ("s1", s1, "null")):
        sets = [x for k, v in small.items() for x in ("--set", f"{k}={json.dumps(v)}")]
        sets += ["--set", f"norm={norm}"] if norm else []
        assert (
            main(
                [
                    "--bundle",
                    str(root),
                    "--partition",
                    "training",
                    "--dataset-dir",
                    trained["dataset_dir"],
                    *sets,
                ]
            )
            == 0
        )
        stats[name] = json.loads(capsys.readouterr().out)
    live, dead = stats["default"], stats["s1"]
    assert live["n"] == dead["n"] >= 4 and live["input_spread"] == dead["input_spread"] > 0.01
    assert dead["latent_saturated_fraction"] > 0.95 and dead["latent_spread"] < 1e-5
    assert (
        dead["noise_output_change"] < 1e-5 < 0.04 < dead["noise_input_change"]
    )  # noise never reaches the output
    assert live["latent_saturated_fraction"] < 0.05 and abs(live["latent_mean"] - 0.5) < 0.2
    assert live["latent_spread"] > 5e-4 and live["latent_spread"] > 100 * dead["latent_spread"]
    assert live["output_spread"] > 10 * dead["output_spread"]
    assert live["noise_output_change"] > 10 * dead["noise_output_change"]
    val = [v["val_clean_psnr"] for v in _history(trained["cae_3d"])["validation"]]
    val_s1 = [v["val_clean_psnr"] for v in _history(s1)["validation"]]
    assert val[-1] > val_s1[-1] + 3  # same steps: the default learns faster (18.6 vs 9.4 dB measured)
    assert main(["--bundle", str(tmp_path / "nowhere")]) == 2
    assert "no trained weights" in capsys.readouterr().err
