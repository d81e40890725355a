"""The fast training data path changes speed, not results: the device-resident batch loader yields
exactly the data a standard DataLoader yields, validation metrics are equal, and batched corruption
has the statistics of per-sample corruption."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import DataLoader

from mriae.corruption import Corruption
from mriae.data import DeviceBatchLoader, SliceDataset
from mriae.engine import ReconstructionEvaluator
from mriae.evaluation import ReconstructionMetrics
from mriae.networks import ResUNetAE


def test_device_loader_yields_the_dataloader_batches(small_prepared):
    ds = SliceDataset(small_prepared, "validation")
    ref = list(DataLoader(ds, batch_size=16, shuffle=False))
    fast = list(DeviceBatchLoader(ds, batch_size=16, shuffle=False, with_ids=True))
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast):
        assert torch.equal(a["image"], b["image"])
        assert list(a["subject"]) == b["subject"] and torch.equal(torch.as_tensor(a["slice"]), b["slice"])
    # shuffled: a permutation of all slices per epoch, seeded, different between epochs
    loader = DeviceBatchLoader(ds, batch_size=16, shuffle=True, seed=3)
    e1, e2 = loader.order(), loader.order()
    assert sorted(e1.tolist()) == list(range(len(ds))) and not torch.equal(e1, e2)
    again = DeviceBatchLoader(ds, batch_size=16, shuffle=True, seed=3).order()
    assert torch.equal(e1, again)


def _validate(loader, net):
    ev = ReconstructionEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=net, conditions={"corrupted": Corruption()},
        val_handlers=[ReconstructionMetrics(prefix="val_", loss_fn=torch.nn.MSELoss())], decollate=False,
    )
    ev.run()
    return ev.state.metrics


def test_validation_metrics_equal_reference_path(small_prepared):
    torch.manual_seed(0)
    net = ResUNetAE().eval()
    ds = SliceDataset(small_prepared, "validation", max_slices_per_subject=12)
    ref = _validate(DataLoader(ds, batch_size=8, shuffle=False), net)
    fast = _validate(DeviceBatchLoader(ds, batch_size=8, shuffle=False, with_ids=True), net)
    assert set(ref) == set(fast)
    for k in ref:
        assert abs(ref[k] - fast[k]) <= 1e-6 * max(1.0, abs(ref[k])), k


def test_batched_corruption_statistics_equal_per_sample_reference():
    x = 0.5 + 0.3 * torch.rand(400, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    c = Corruption(renormalize=False)
    batched = c(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    single = torch.cat([c(x[i : i + 1], g) for i in range(len(x))])
    for y in (batched, single):
        d = (y - x).flatten(1)
        y.stats = {
            "dropout": float((y == 0).float().mean()),
            "blanked": float((y == 0).flatten(1).sum(1).gt(90).float().mean()),
            "noise": float(d[(y.flatten(1) != 0)].std()),
        }
    assert abs(batched.stats["dropout"] - single.stats["dropout"]) < 0.01
    assert abs(batched.stats["blanked"] - single.stats["blanked"]) < 0.07
    assert abs(batched.stats["noise"] - single.stats["noise"]) < 0.003
    assert np.isclose(batched.stats["blanked"], 0.2, atol=0.06)
