"""The compare step end to end on CPU: every S4 bundle trained briefly with `monai.bundle run`,
evaluated with the baselines on the same corrupted test slices, tested, reported, tracked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from mriae.compare.run import corrupt_all
from mriae.data.corruption import conditions

MODELS = ["res_unet@s4", "shallow_res_ae@s4:block=original", "skip_cae@s4", "myronenko_ae@s4", "res_unet"]
LABELS = ["res_unet-s4", "shallow_res_ae-s4-block_original", "skip_cae-s4", "myronenko_ae-s4", "res_unet"]


def test_conditions_and_their_corrupted_slices_are_fixed():
    conds = conditions()
    assert len(conds) == 17 and list(conds)[:2] == ["clean", "noise-0.01"] and "combined" in conds
    assert set(conditions(["blur"], [1])) == {"clean", "blur-1.0", "combined"}
    x = torch.zeros(3, 1, 64, 64)
    x[:, :, 2:62, 2:62] = torch.linspace(0.1, 0.9, 60)  # foreground all but a 2 px border
    for name, c in conds.items():
        a, b = corrupt_all(x, c, seed=7), corrupt_all(x, c, seed=7)
        assert torch.equal(a, b), name  # same seed, same slices: every model sees identical inputs
    assert not torch.equal(corrupt_all(x, conds["noise-0.03"], 7), corrupt_all(x, conds["noise-0.03"], 8))
    blank = corrupt_all(x, conds["blankout-25"], seed=1)
    for img, ref in zip(blank[:, 0], x[:, 0]):
        rows, cols = torch.nonzero((img == 0) & (ref > 0), as_tuple=True)
        assert 23 * 23 <= len(rows) <= 25 * 25  # one 25 px square on the foreground (at most 2 px off it)
        assert int(rows.max() - rows.min()) < 25 and int(cols.max() - cols.min()) < 25


@pytest.fixture(scope="module")
def compared(small_prepared, tmp_path_factory):
    from mriae.compare.cli import main

    tmp = tmp_path_factory.mktemp("compare")
    results = tmp / "results.md"
    shutil.copy(REPO / "docs" / "results.md", results)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["--models", *MODELS, "--dataset-dir", str(small_prepared.parent), "--output", str(tmp / "out"),
            "--epochs", "3", "--max-slices-per-subject", "4", "--batch-size", "8", "--test-max-slices-per-subject", "4",
            "--levels", "1", "--n-boot", "300", "--jobs", "2", "--results-md", str(results), "--tracking-uri", uri]  # fmt: skip
    res = main(argv)
    return {"res": res, "out": tmp / "out", "results": results, "uri": uri, "argv": argv}


@pytest.mark.slow
def test_compare_trains_every_bundle_and_writes_the_leaderboard(compared):
    out = compared["out"]
    assert [t["label"] for t in compared["res"]["trained"]] == LABELS
    for label in LABELS:  # each bundle learned: validation loss fell
        hist = json.loads((out / "bundles" / label / "outputs/training/history.json").read_text())
        val = [v["val_loss"] for v in hist["validation"]]
        assert len(val) == 3 and min(val[1:]) < val[0], (label, val)
    per = pd.read_csv(out / "per_slice.csv")
    entries = LABELS + ["identity", "gaussian", "nlm"]
    assert set(per.entry) == set(entries)  # bm4d is not installed here
    conds = ["clean", "noise-0.03", "rician-0.03", "dropout-0.03", "blankout-25", "blur-1.0", "combined"]
    assert list(per.condition.unique()) == conds
    n = 8  # 2 test subjects x 4 slices
    assert len(per) == len(entries) * len(conds) * n and per.subject.nunique() == 2
    # identity scores exactly what the corrupted input scores: the stored inputs are the seeded ones
    ident = per[(per.entry == "identity") & (per.condition == "clean")]
    assert (ident.psnr == 100).all() and np.allclose(ident.ssim, 1, atol=1e-5)
    summ = pd.read_csv(out / "summary.csv")
    assert ((summ.ci_low <= summ["mean"] + 1e-9) & (summ["mean"] <= summ.ci_high + 1e-9)).all()
    assert (summ.n_subjects == 2).all() and (summ.n_slices == n).all()
    lb = pd.read_csv(out / "leaderboard.csv")
    assert set(lb.entry) == set(entries) | {"bm4d"}
    assert lb[lb.entry == "skip_cae-s4"].parameters.item() == 191_041
    assert lb[lb.entry == "myronenko_ae-s4"].parameters.item() == 991_041
    assert lb[lb.entry == "bm4d"].note.item().startswith("not installed")
    md = compared["results"].read_text()
    block = md.split("<!-- compare:start -->")[1].split("<!-- compare:end -->")[0]
    assert md.startswith("# Results") and "| rank | entry |" in block and "not installed" in block
    assert (
        "figures/compare_pvalues.png" in block
        and (compared["results"].parent / "figures/compare_grid.png").is_file()
    )
    for f in ("pvalues.png", "grid.png"):
        assert (out / "figures" / f).stat().st_size > 20_000


@pytest.mark.slow
def test_compare_statistics_are_paired_and_holm_adjusted(compared):
    t = pd.read_csv(compared["out"] / "pairwise.csv")
    k = 8  # 5 models + 3 baselines (bm4d is not installed)
    for (_, _, level), g in t.groupby(["condition", "metric", "level"]):
        assert len(g) == k * (k - 1) // 2
        assert (g.p_t_holm.dropna() >= g.p_t.dropna() - 1e-12).all()
        assert set(g.n) == {2 if level == "subject" else 8}
    # the trained networks beat doing nothing on the combined corruption? Not after 3 CPU epochs:
    # assert only that every pair carries a finite effect size and mean difference at the slice level
    sl = t[(t.level == "slice") & (t.condition == "combined") & (t.metric == "psnr")]
    assert np.isfinite(sl.mean_diff).all() and np.isfinite(sl.d_z).all()


@pytest.mark.slow
def test_compare_logs_a_parent_run_with_a_child_per_entry(compared):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=compared["uri"])
    exp = client.get_experiment_by_name("s4_compare")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == compared["res"]["run_id"]][0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(
        LABELS + ["identity", "gaussian", "nlm", "bm4d"]
    )
    child = next(r for r in children if r.info.run_name == "skip_cae-s4")
    assert child.data.params["parameters"] == "191041" and "combined_psnr" in child.data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.md", "pairwise.csv", "figures"} <= arts
    # each bundle's own training run went to the same store, under its bundle's experiment
    assert client.get_experiment_by_name("skip_cae") is not None


@pytest.mark.slow
def test_compare_reuses_trained_checkpoints(compared, tmp_path):
    from mriae.compare.cli import main

    argv = list(compared["argv"])
    argv[argv.index("--results-md") + 1] = "none"
    argv[argv.index("--models") + 1 : argv.index("--models") + 1 + len(MODELS)] = ["skip_cae@s4"]
    first = pd.read_csv(compared["out"] / "per_slice.csv")
    stamp = (compared["out"] / "per_slice.csv").stat().st_mtime_ns
    res = main(argv + ["--no-mlflow", "--train-only"])  # training step alone: reuses, evaluates nothing
    assert [t["trained"] for t in res["trained"]] == [False]
    assert (compared["out"] / "per_slice.csv").stat().st_mtime_ns == stamp
    res = main(argv + ["--no-mlflow", "--baselines", "identity", "--kinds", "noise"])
    assert [t["trained"] for t in res["trained"]] == [False] and res["run_id"] is None
    per = pd.read_csv(Path(res["output"]) / "per_slice.csv")
    key = ["entry", "condition", "subject", "slice"]
    a = per[per.condition == "noise-0.03"].set_index(key).psnr
    b = first.set_index(key).psnr.reindex(a.index)
    np.testing.assert_allclose(a, b, rtol=1e-5)  # same weights, same corrupted slices, same numbers


def test_autoencoder_bundles_bundles_join_the_compare_on_the_test_grid(small_prepared, tmp_path):
    """cae_2d (trained on slices resized to 64) and conv_ae (slices padded to 176) are scored on the
    compare's own test slices: their input is brought to the training geometry and the output back."""
    from monai.bundle import ConfigParser

    from mriae.compare.run import AtTrainingGeometry, evaluate, load_network
    from mriae.data.slices import SliceDataset

    ds = SliceDataset(small_prepared, "test", max_slices_per_subject=2)
    side = int(ds.images.shape[-1])
    nets, seen = {}, {}
    for name, how, train_side in (("cae_2d", "resize", 64), ("conv_ae", "pad", 176), ("ae_2d", None, side)):
        root = tmp_path / name
        shutil.copytree(REPO / "bundles" / name / "configs", root / "configs")
        parser = ConfigParser(ConfigParser.load_config_file(root / "configs" / "train.json"))
        torch.manual_seed(0)
        (root / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
        net = load_network(root, {}, torch.device("cpu"), test_set=ds)
        inner = net.net if isinstance(net, AtTrainingGeometry) else net
        assert (net.how if isinstance(net, AtTrainingGeometry) else None) == how
        assert (net.side if isinstance(net, AtTrainingGeometry) else side) == train_side
        inner.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, tuple(i[0].shape[-2:])))
        nets[name] = net
    per, _ = evaluate(nets, {}, ds.images, [s for s, _ in ds.index], [z for _, z in ds.index],
                      {"clean": conditions()["clean"]}, 0, torch.device("cpu"))  # fmt: skip
    assert seen == {"cae_2d": (64, 64), "conv_ae": (176, 176), "ae_2d": (side, side)}
    assert set(per.entry) == set(nets) and len(per) == 3 * len(ds) and np.isfinite(per.psnr).all()
    # padding is exact: a network that returns its input gives the test slice back unchanged
    x = ds.images[:2].float()
    assert torch.equal(AtTrainingGeometry(torch.nn.Identity(), 176, "pad")(x), x)
    assert (AtTrainingGeometry(torch.nn.Identity(), 64, "resize")(x) - x).abs().mean() < 0.02
    # S1's volume CAE joins too: each test volume rebuilt from the corrupted test slices, resized to its
    # training size, reconstructed and resized back; the test slices' rows are its prediction
    from mriae.compare.run import OnWholeVolumes

    root = tmp_path / "cae_3d"
    shutil.copytree(REPO / "bundles" / "cae_3d" / "configs", root / "configs")
    small = {"img_size": [32, 16, 16], "latent_size": 16}
    parser = ConfigParser(ConfigParser.load_config_file(root / "configs" / "train.json"))
    for k, v in small.items():
        parser[k] = v
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    net3 = load_network(root, small, torch.device("cpu"), test_set=ds)
    assert isinstance(net3, OnWholeVolumes) and net3.size == (32, 16, 16)
    shapes = []
    net3.net.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    conds = {k: conditions()[k] for k in ("clean", "noise-0.03")}
    subjects, slices = [s for s, _ in ds.index], [z for _, z in ds.index]
    per3, _ = evaluate({"cae_3d": net3}, {}, ds.images, subjects, slices, conds, 0, torch.device("cpu"))
    n_subj = len(set(subjects))
    assert shapes == [(1, 1, 32, 16, 16)] * (2 * n_subj)  # one whole volume per subject and condition
    assert len(per3) == 2 * len(ds) and np.isfinite(per3.psnr).all()
    # the geometry is exact: an identity network at the prepared grid gives back the corrupted test
    # slices themselves, each in its own row, and the left-out slices are corrupted reproducibly
    sid0 = ds.index[0][0]
    rows = [i for i, (s, _) in enumerate(ds.index) if s == sid0]  # one subject: one volume shape
    sub_s, sub_z = [subjects[i] for i in rows], [slices[i] for i in rows]
    clean = net3.volumes[sid0]
    ident = OnWholeVolumes(torch.nn.Identity(), tuple(clean.shape), ds)
    x = corrupt_all(ds.images[rows], conds["noise-0.03"], seed=3)
    y = ident.predict(x, sub_s, sub_z, conds["noise-0.03"], 4, torch.device("cpu"))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    seen_vols = []
    ident.net.register_forward_pre_hook(lambda m, i: seen_vols.append(i[0].clone()))
    for _ in range(2):
        ident.predict(x, sub_s, sub_z, conds["noise-0.03"], 4, torch.device("cpu"))
    left_out = torch.ones(len(clean), dtype=torch.bool)
    left_out[sub_z] = False
    a, b = seen_vols[0][0, 0], seen_vols[1][0, 0]
    assert torch.equal(a, b)  # same seed, same corrupted volume
    assert torch.equal(a[sub_z], x[:, 0])  # the test slices are the very inputs the 2D entries get
    noise = (a[left_out] - clean[left_out]).std()
    assert 0.02 < float(noise) < 0.04  # the left-out slices carry the condition's noise (sigma 0.03)
