"""The fast training data path changes speed, not results: the device-resident batch loader yields
exactly the data a standard DataLoader yields, validation metrics are equal, and batched corruption
has the statistics of per-sample corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from mriae.data.corruption import Corruption
from mriae.data.slices import DeviceBatchLoader, SliceDataset
from mriae.train.engine import ReconstructionEvaluator
from mriae.evaluate.metrics import ReconstructionMetrics
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


def test_loader_corruption_and_prefetch_change_timing_not_batches(small_prepared):
    """The training loader corrupts on the device with its own seeded generator; producing the
    batches ahead in a thread (prefetch) yields exactly the same batches, in the same order."""
    ds = SliceDataset(small_prepared, "training", max_slices_per_subject=6)
    kw = dict(batch_size=8, shuffle=True, seed=5, corruption=Corruption(), corruption_seed=9)
    plain = list(DeviceBatchLoader(ds, **kw))
    ahead = DeviceBatchLoader(ds, prefetch=2, **kw)
    threaded = list(ahead)
    assert len(plain) == len(threaded) == len(ahead)
    for a, b in zip(plain, threaded):
        assert set(a) == {"image", "label"}
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert not torch.equal(a["image"], a["label"])  # the input is corrupted, the target clean
    clean = torch.cat([b["label"] for b in plain])
    assert sorted(clean.flatten(1).sum(1).tolist()) == sorted(ds.images.float().flatten(1).sum(1).tolist())
    # the next epoch continues both streams: new order and new corruption, still identical
    fresh = DeviceBatchLoader(ds, **kw)
    list(fresh)
    e2_plain, e2_ahead = next(iter(fresh)), next(iter(ahead))
    assert torch.equal(e2_plain["image"], e2_ahead["image"]) and not torch.equal(e2_plain["image"], plain[0]["image"])
    # an early stop (Ignite terminate) ends the producer thread
    import threading

    it = iter(DeviceBatchLoader(ds, prefetch=1, **kw))
    next(it)
    it.close()
    assert not any(t.name == "DeviceBatchLoader-prefetch" for t in threading.enumerate())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_cuda_graph_loader_yields_the_eager_batches(small_prepared):
    """The loader's gather + corruption captured in a CUDA graph gives the eager loader's batches:
    same order, same corrupted inputs (the graph draws from the registered generator), across two
    epochs and through an epoch's last, smaller batch (eager in both)."""
    ds = SliceDataset(small_prepared, "training", max_slices_per_subject=7)
    kw = dict(batch_size=8, shuffle=True, seed=5, corruption=Corruption(), corruption_seed=9, device="cuda",
              channels_last=True)
    eager, graphed = DeviceBatchLoader(ds, **kw), DeviceBatchLoader(ds, cuda_graph=True, **kw)
    ahead = DeviceBatchLoader(ds, cuda_graph=True, prefetch=2, **kw)  # replayed from the producer thread
    assert len(ds) % 8 != 0  # the last batch is smaller
    for epoch in range(2):
        a, b, c = list(eager), list(graphed), list(ahead)
        assert len(a) == len(b) == len(c) == len(eager)
        for x, y, z in zip(a, b, c):
            for other in (y, z):
                torch.testing.assert_close(other["label"], x["label"], rtol=0, atol=0)
                torch.testing.assert_close(other["image"], x["image"], rtol=1e-6, atol=1e-6)
                assert other["image"].is_contiguous(memory_format=torch.channels_last)
    assert graphed._graphed is not None and not torch.equal(a[0]["image"], a[0]["label"])


def test_cuda_graph_option_needs_a_cuda_device(small_prepared):
    ds = SliceDataset(small_prepared, "training", max_slices_per_subject=1)
    with pytest.raises(ValueError, match="CUDA device"):
        DeviceBatchLoader(ds, cuda_graph=True, corruption=Corruption(), device="cpu")
    assert not DeviceBatchLoader(ds, cuda_graph=True, device="cpu").cuda_graph  # nothing to capture without corruption


def test_prefetch_raises_the_producer_error_in_the_consumer(small_prepared):
    ds = SliceDataset(small_prepared, "training", max_slices_per_subject=2)

    class Broken(Corruption):
        def __call__(self, x, generator=None):
            raise ValueError("corruption failed on purpose")

    loader = DeviceBatchLoader(ds, batch_size=4, corruption=Broken(), prefetch=2)
    try:
        next(iter(loader))
    except ValueError as e:
        assert "on purpose" in str(e)
    else:
        raise AssertionError("the producer's error was swallowed")


def test_fused_corruption_equals_the_reference_formulas():
    """Corruption's fused kernels (aminmax, addcmul, where) compute the module docstring's formulas."""
    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    c = Corruption(blankout_prob=1.0, blankout_size=(5, 12), blur_prob=0.5, rician_std=(0.0, 0.03))
    got = c(x, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # the same draws, in the same order, spelled out
    b, view = 16, (16, 1, 1, 1)
    rate = (0.05 * torch.rand(b, generator=g)).view(view)
    out = x * (torch.rand(x.shape, generator=g) >= rate) / (1 - rate)
    out = out + (0.04 * torch.rand(b, generator=g)).view(view) * torch.randn(x.shape, generator=g)
    sig = (0.03 * torch.rand(b, generator=g)).view(view)
    n1, n2 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    out = torch.sqrt((out + sig * n1) ** 2 + (sig * n2) ** 2)
    out = out * ~c._blank_mask(x, g)
    apply = (torch.rand(b, generator=g) < 0.5).view(view)
    out = torch.where(apply, c._blur(out), out)
    dims = (1, 2, 3)
    lo, hi = out.amin(dims, keepdim=True), out.amax(dims, keepdim=True)
    cmin, cmax = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    ref = (out - lo) / (hi - lo) * (cmax - cmin) + cmin
    assert (got - ref).abs().max() < 2e-6, float((got - ref).abs().max())
    assert not torch.allclose(got, x, atol=1e-2)


def test_bundle_speed_options_reach_the_trainer_and_loader(small_prepared):
    """res_unet's speed options are wired: compile with static shapes (and the chosen mode) drops the
    epoch's short last batch so no second graph is compiled; the loader's CUDA graph follows the
    device (off on a CPU)."""
    from monai.bundle import ConfigParser

    from conftest import REPO

    def trainer_with(**over):
        p = ConfigParser()
        p.read_config(str(REPO / "bundles" / "res_unet" / "configs" / "train.json"))
        p["bundle_root"] = str(REPO / "bundles" / "res_unet")
        p["dataset_dir"], p["use_mlflow"], p["max_slices_per_subject"], p["batch_size"] = str(small_prepared.parent), False, 3, 4
        p["device"] = "$torch.device('cpu')"
        for k, v in over.items():
            p[k] = v
        return p.get_parsed_content("train#trainer"), p

    plain, _ = trainer_with()
    assert not plain.compile and not plain.data_loader.drop_last and not plain.data_loader.cuda_graph
    fast, p = trainer_with(compile=True, compile_mode="reduce-overhead", prefetch=1)
    assert fast.compile and fast.data_loader.drop_last and fast.data_loader.prefetch == 1
    assert p.get_parsed_content("train#trainer#compile_kwargs") == {"dynamic": False, "mode": "reduce-overhead"}
    n = len(fast.data_loader.dataset)
    assert n % 4 and len(fast.data_loader) == n // 4 and len(plain.data_loader) == n // 4 + 1
