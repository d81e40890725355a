"""The CUDA paths of the fast training loop (bf16 autocast, channels-last, CUDA graphs, prefetch,
torch.compile): marked ``gpu``, skipped without a CUDA device, run on the GPU machine with
``pytest -m gpu`` before any speed figure is claimed (docs/performance.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, run_bundle

from mriae.data.corruption import Corruption
from mriae.data.slices import DeviceBatchLoader, SliceDataset
from mriae.train.engine import AutocastInferer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)"),
]


def test_bf16_autocast_inferer_stays_close_to_float32():
    from mriae.networks import ResUNetAE

    torch.manual_seed(0)
    net = ResUNetAE().cuda().eval()
    x = torch.rand(4, 1, 128, 128, device="cuda")
    with torch.no_grad():
        ref = net(x).float()
        got = AutocastInferer()(x, net)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert float((got - ref).abs().max()) < 0.05 and float((got - ref).abs().mean()) < 5e-3


def test_device_loader_on_cuda_gives_the_cpu_batches(small_prepared):
    """Unshuffled, the same clean targets on both devices; the corruption's statistics agree (the
    generators differ by device, so the noise itself, and a shuffled order, do too)."""
    ds = SliceDataset(small_prepared, "training", max_slices_per_subject=6)
    kw = dict(batch_size=8, shuffle=False, seed=3, corruption=Corruption(), corruption_seed=4)
    cpu, gpu = list(DeviceBatchLoader(ds, device="cpu", **kw)), list(DeviceBatchLoader(ds, device="cuda", **kw))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b["label"].cpu(), a["label"], rtol=0, atol=0)
    d_cpu = torch.cat([a["image"] - a["label"] for a in cpu]).std()
    d_gpu = torch.cat([b["image"].cpu() - b["label"].cpu() for b in gpu]).std()
    assert abs(float(d_cpu) - float(d_gpu)) < 0.25 * float(d_cpu)


@pytest.mark.parametrize("compile_", [False, True])
def test_res_unet_trains_on_cuda_with_its_speed_options(small_prepared, tmp_path, compile_):
    """res_unet's speed options together (bf16, channels-last, the CUDA-graph loader, prefetch), with
    and without torch.compile: the training loss falls and the best checkpoint is written."""
    root = tmp_path / "res_unet"
    shutil.copytree(REPO / "bundles" / "res_unet", root, ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    run_bundle("training", "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(small_prepared.parent), "--use_mlflow", "False", "--train#trainer#max_epochs", "4",
               "--max_slices_per_subject", "24", "--batch_size", "16", "--amp", "True", "--channels_last", "True", "--prefetch", "2",
               "--compile", str(compile_))
    hist = json.loads((root / "outputs" / "training" / "history.json").read_text())
    loss = hist["train_loss"]
    assert len(loss) == 4 and all(torch.isfinite(torch.tensor(loss))) and loss[-1] < loss[0]
    meta = json.loads((root / "models" / "model.json").read_text())
    assert meta["plan"] and (root / "models" / "model.pt").is_file()
