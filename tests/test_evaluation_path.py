"""One evaluation path: validation during training, a bundle's evaluate.json and the compare corrupt a
test slice the same way for the same condition (``mriae.data.corruption.corrupt_items``: one CPU
generator per item, seeded by the seed, the condition's settings and the item's subject and slice), so
they give the same PSNR for the same weights, whatever the batch size or the condition's name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO

OVER = {"use_mlflow": False}
RECIPE = ("train.json", "s4.json")  # res_unet as S4 trained it: single 2D slices, SliceDataset everywhere


def test_corrupt_items_does_not_depend_on_batching_order_or_name():
    from mriae.data.corruption import CORRUPTION_SEED, Corruption, conditions, corrupt_items, eval_conditions

    x = torch.rand(6, 1, 32, 32) * 0.8 + 0.1
    keys = [("a", i) for i in range(3)] + [("b", i) for i in range(3)]
    c = conditions()["noise-0.03"]
    whole = corrupt_items(c, x, keys)
    halves = torch.cat([corrupt_items(c, x[:2], keys[:2]), corrupt_items(c, x[2:], keys[2:])])
    assert torch.equal(whole, halves)  # batching changes nothing
    rev = corrupt_items(c, x.flip(0), keys[::-1]).flip(0)
    assert torch.equal(whole, rev)  # nor does the order
    # evaluate.json's short name ("noise") and the compare's long one ("noise-0.03") are one condition
    assert torch.equal(whole, corrupt_items(eval_conditions(["noise"])["noise"], x, keys, CORRUPTION_SEED))
    noise = whole - x
    assert 0.025 < float(noise.std()) < 0.035  # sigma 0.03
    # another key, seed or condition gives another corrupted image
    assert not torch.equal(whole[:1], corrupt_items(c, x[:1], [("a", 9)]))
    assert not torch.equal(whole, corrupt_items(c, x, keys, seed=CORRUPTION_SEED + 1))
    assert not torch.equal(whole, corrupt_items(Corruption(noise_std=0.05, dropout=0.0, blankout_prob=0.0,
                                                           blur_prob=0.0, renormalize=False), x, keys))
    with pytest.raises(ValueError, match="keys"):
        corrupt_items(c, x, keys[:2])


def test_validation_evaluate_and_compare_give_the_same_psnr(small_prepared, tmp_path):
    from monai.bundle import run

    from mriae.compare.run import evaluate, load_network
    from mriae.config import bundle_config
    from mriae.data.corruption import CORRUPTION_SEED, conditions
    from mriae.data.slices import SliceDataset
    from mriae.networks.checkpoint import load_weights

    root = tmp_path / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    data = {"dataset_dir": str(small_prepared.parent)}
    # a few seconds of training: weights whose output depends on the input
    files = [str(root / "configs" / f) for f in RECIPE]
    run("training", config_file=files, bundle_root=str(root), **OVER, **data,
        max_slices_per_subject=8, batch_size=4, **{"train#trainer#max_epochs": 3})

    # 1. evaluate.json (batch size of the bundle, condition "noise")
    run("evaluating", config_file=files + [str(root / "configs" / "evaluate.json")], bundle_root=str(root),
        **OVER, **data)
    summ = json.loads((root / "eval" / "summary.json").read_text())
    evaluated = {"clean": summ["clean"]["psnr"]["mean"], "noise": summ["noise"]["psnr"]["mean"]}

    # 2. the training config's own validation evaluator on the test slices, the condition under another
    #    name ("corrupted", as in training) and another batch size
    p = bundle_config(root, recipe="s4", overrides={
        **OVER, **data, "bundle_root": str(root),
        "validate#dataset#partition": "test",
        "validate#dataloader#batch_size": 3,
        "validate#evaluator#conditions": {"corrupted": "$mriae.data.corruption.conditions()['noise-0.03']"},
        "validate#handlers": [{"_target_": "mriae.evaluate.metrics.ReconstructionMetrics", "prefix": "val_"}],
    })
    p.get_parsed_content("determinism")
    load_weights(p.get_parsed_content("network"), root / "models" / "model.pt")
    ev = p.get_parsed_content("validate#evaluator")
    ev.run()
    validated = {"clean": ev.state.metrics["val_clean_psnr"], "noise": ev.state.metrics["val_corrupted_psnr"]}

    # 3. the compare, on its own test set, on the CPU
    ds = SliceDataset(small_prepared, "test")
    model = load_network(root, dict(OVER), torch.device("cpu"), test_set=ds, recipe="s4")
    subjects, slices = [s for s, _ in ds.index], [z for _, z in ds.index]
    conds = {k: conditions()[k] for k in ("clean", "noise-0.03")}
    per, _ = evaluate({"res_unet": model}, {}, ds.images, subjects, slices, conds, CORRUPTION_SEED, torch.device("cpu"))
    compared = {"clean": float(per[per.condition == "clean"].psnr.mean()),
                "noise": float(per[per.condition == "noise-0.03"].psnr.mean())}

    assert summ["noise"]["psnr"]["n"] == len(ds) == len(per) // 2
    for cond in ("clean", "noise"):
        np.testing.assert_allclose([validated[cond], compared[cond]], evaluated[cond], atol=1e-5, rtol=0)
    assert abs(evaluated["clean"] - evaluated["noise"]) > 2e-4  # the condition changes the score
    # the noisy inputs are the same images everywhere: their own PSNR agrees as well
    from mriae.compare.run import corrupt_all
    from mriae.evaluate.metrics import slice_metrics

    x = corrupt_all(ds.images, conds["noise-0.03"], CORRUPTION_SEED, list(zip(subjects, slices)))
    compared_input = float(slice_metrics(x, ds.images)["psnr"].mean())
    np.testing.assert_allclose([ev.state.metrics["val_corrupted_input_psnr"], compared_input],
                               summ["noise"]["input_psnr"]["mean"], atol=1e-5, rtol=0)
