"""Inference by the model's own plan: the input's own grid, exactly; the plan's grid when the plan says
so; weights without a plan refused; the residual head; self-supervised adaptation; the real scan."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import NATIVE_PLAN, REPO
from conftest import identity_bundle as _identity_bundle
from conftest import template_crop as _template_crop
from monai.bundle import ConfigParser

from mriae.infer.pipeline import slicing_axes
from mriae.prepare.preprocessing import PreprocessConfig

NATIVE = NATIVE_PLAN


class _Recorder:
    """Wraps an inferer; keeps the spacing and shape of every volume the network is run on."""

    def __init__(self, inferer):
        self.inferer, self.seen = inferer, []

    def __call__(self, inputs, network, *a, **k):
        aff = np.asarray(inputs.affine).reshape(-1, 4, 4)[0]
        self.seen.append((np.sqrt((aff[:3, :3] ** 2).sum(0)), tuple(inputs.shape[2:])))
        return self.inferer(inputs, network, *a, **k)


def _run(root, src, out, **overrides):
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update(
        {
            "bundle_root": str(root),
            "input_path": str(src),
            "output_dir": str(out),
            "device": "$torch.device('cpu')",
            **overrides,
        }
    )
    p.get_parsed_content("initialize")
    ev = p.get_parsed_content("evaluator")
    ev.inferer = rec = _Recorder(ev.inferer)
    ev.run()
    rec.adaptation = rec.inferer.last_adaptation
    return rec.seen if not overrides else rec


@pytest.mark.parametrize("spacing, codes", [((1.0, 1.0, 1.0), "LPS"), ((0.5, 0.5, 5.0), "RAS")])
def test_identity_network_on_the_native_grid_returns_the_input_exactly(tmp_path, spacing, codes):
    root = _identity_bundle(tmp_path, NATIVE)
    data, _ = _template_crop()
    if spacing[2] > 1:  # a thick-slice scan: 0.5 x 0.5 x 5 mm
        data = np.repeat(np.repeat(data, 2, 0), 2, 1)[:, :, ::5]
    aff = np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(data, aff).as_reoriented(
        nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes)
        )
    )
    src = tmp_path / "scan.nii.gz"
    nib.save(img, src)
    seen = _run(root, src, tmp_path / "out")
    out = nib.load(tmp_path / "out" / "scan_recon.nii.gz")
    assert out.shape == img.shape and np.allclose(out.affine, img.affine, atol=1e-6)
    assert np.array_equal(out.get_fdata(dtype=np.float32), np.asarray(img.dataobj, dtype=np.float32))
    assert not np.any(nib.load(tmp_path / "out" / "scan_residual.nii.gz").get_fdata())
    ((sp, shape),) = seen
    np.testing.assert_allclose(
        sorted(sp), sorted(spacing), atol=1e-5
    )  # the network ran on the input's own grid
    assert sorted(shape) == sorted(img.shape)


def test_inference_config_adapts_by_sure_for_the_steps_asked(tmp_path):
    root = _identity_bundle(tmp_path, NATIVE)
    data, aff = _template_crop()
    noisy = data + 0.03 * data.max() * np.random.default_rng(0).standard_normal(data.shape).astype(np.float32)
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(noisy, aff), src)
    rec = _run(root, src, tmp_path / "out", adapt_steps=3, slice_batch_size=64, adapt_schedule="cosine",
               adapt_batch_size=4, adapt_crop=32)
    assert rec.adaptation["loss"] == "sure" and rec.adaptation["steps"] == 3
    assert rec.adaptation["schedule"] == "cosine"  # inference.json's adapt_schedule reaches the adaptation
    assert rec.adaptation["batch_size"] == 4 and rec.adaptation["crop"] == 32  # and its batch of crops
    assert 0.02 < rec.adaptation["sigma"] < 0.05  # the scan's own noise, read from the scaled input
    out = nib.load(tmp_path / "out" / "scan_recon.nii.gz").get_fdata(dtype=np.float32)
    assert out.shape == noisy.shape and not np.array_equal(out, noisy)  # the adapted copy changed it


def test_slicing_axes_follow_the_training_axes_and_the_voxel_shape():
    assert slicing_axes([0, 1, 2], (1.0, 1.0, 1.0)) == [0, 1, 2]  # near isotropic: three planes, averaged
    assert slicing_axes([0, 1, 2], (1.2, 1.0, 1.0)) == [0, 1, 2]
    assert slicing_axes([0, 1, 2], (0.5, 0.5, 5.0)) == [2]  # thick slices: the acquired planes only
    assert slicing_axes([0], (0.5, 0.5, 5.0)) == [0]  # a model trained on one axis stays on it


def test_flip_ensemble_averages_the_flipped_outputs_and_keeps_an_equivariant_network_exact():
    from mriae.infer.pipeline import SliceStackInferer

    torch.manual_seed(0)
    vol = torch.rand(1, 1, 6, 20, 13)  # odd sides: the stride padding is asymmetric
    conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=False)  # not flip-equivariant: a random kernel
    one = SliceStackInferer(context=1, axes=[0], multiple=8)
    four = SliceStackInferer(context=1, axes=[0], multiple=8, flips=4)
    with torch.no_grad():
        y1, y4 = one(vol, conv), four(vol, conv)
        by_hand = torch.stack([one(vol, lambda x, d=d: conv(x.flip(d)).flip(d) if d else conv(x))
                               for d in [(), (-1,), (-2,), (-2, -1)]]).mean(0)
    torch.testing.assert_close(y4, by_hand, atol=1e-6, rtol=0)
    assert float((y4 - y1).abs().max()) > 1e-3  # the ensemble changes this network's output
    centre = lambda x: x[:, 1:2]  # an identity network is flip-equivariant: unchanged, exactly
    assert torch.equal(four(vol, centre), vol)
    with pytest.raises(ValueError, match="flips"):
        SliceStackInferer(flips=3)


def test_the_plan_travels_weights_run_at_the_spacing_they_were_trained_at(tmp_path):
    s4 = (
        PreprocessConfig().to_dict()
    )  # S4's plan: 1.2 x 1.875 x 1.875 mm, 128 px, inference on the plan's grid
    plan = {k: s4[k] for k in ("axcodes", "spacing", "slice_size", "clip", "inference_grid")}
    root = _identity_bundle(tmp_path, plan)
    data, aff = _template_crop()
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), src)
    ((sp, shape),) = _run(root, src, tmp_path / "out")
    np.testing.assert_allclose(sp, [1.2, 1.875, 1.875], atol=1e-4)
    assert shape[1:] == (128, 128)
    # only the network's change is resampled back: an unchanged input comes back bit for bit
    out = nib.load(tmp_path / "out" / "scan_recon.nii.gz").get_fdata(dtype=np.float32)
    assert np.array_equal(out, data)


def test_weights_without_a_plan_are_refused_in_one_line(tmp_path):
    root = _identity_bundle(tmp_path, NATIVE)
    (root / "models" / "model.json").unlink()
    data, aff = _template_crop()
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), src)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(root / "configs" / "inference.json"),
        "--bundle_root",
        str(root),
        "--input_path",
        str(src),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(err) == 1 and "model.pt: no plan beside the weights" in err[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_weights_holding_nan_are_refused_before_any_output(tmp_path):
    """Diverged weights (one NaN) would write a volume of NaN with rc 0: refused in one line instead."""
    root = _identity_bundle(tmp_path, NATIVE)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = float("nan")
    torch.save(state, root / "models" / "model.pt")
    data, aff = _template_crop()
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), src)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"),
           "--bundle_root", str(root), "--input_path", str(src), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(err) == 1 and "model.pt: 1 weight tensor(s) hold NaN or Inf" in err[0] and name in err[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_weights_of_another_network_are_refused(tmp_path):
    root = _identity_bundle(tmp_path, NATIVE)
    side = json.loads((root / "models" / "model.json").read_text())
    side["model"]["network"]["residual"] = False  # weights of a sigmoid (S4) network
    (root / "models" / "model.json").write_text(json.dumps(side))
    from mriae.errors import find_user_error

    with pytest.raises(Exception) as e:
        _run(root, tmp_path / "none.nii.gz", tmp_path / "out")
    err = find_user_error(e.value)
    assert (
        err is not None and "residual: trained False, configured True" in str(err) and "s4.json" in str(err)
    )


def test_residual_head_predicts_the_corruption_of_the_centre_slice():
    from mriae.networks import ResUNetAE

    net = ResUNetAE(
        in_channels=5, residual=True, full_res=8, channels=(8, 16, 32), norm="none", noise_map=True
    )
    x = torch.rand(2, 5, 32, 40)
    with torch.no_grad():
        correction = net.head[0](
            torch.zeros(2, 8 // 2 + 8, 32, 40)
        )  # what a zero feature map gives: the bias
        net.head[0].weight.zero_()
        y = net(x)
    assert y.shape == (2, 1, 32, 40)
    torch.testing.assert_close(y, x[:, 2:3] - correction)  # output = centre slice - predicted corruption
    assert "Sigmoid" not in str(net.head) and "Sigmoid" in str(ResUNetAE().head)


def _small_denoiser_and_noisy_crop():
    """A small untrained residual denoiser (5 context slices, noise-level map) and a real template
    crop scaled to [0, 1]: ``(net, clean, noisy)`` with Gaussian noise 0.05, clipped."""
    from mriae.networks import ResUNetAE
    from mriae.prepare.preprocessing import robust_scale

    torch.manual_seed(0)
    data, _ = _template_crop()
    clean, _, _ = robust_scale(torch.from_numpy(data))
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    net = ResUNetAE(in_channels=5, residual=True, full_res=8, channels=(8, 16, 32), norm="none", noise_map=True)
    return net, clean, noisy


def test_adaptation_lowers_its_self_supervised_loss_on_a_small_real_volume():
    from mriae.infer.adapt import adapt_to_volume, blind_spot_batch

    net, _, noisy = _small_denoiser_and_noisy_crop()
    adapted, rec = adapt_to_volume(
        net, noisy, 2, [0, 1, 2], seconds=600, max_steps=60, crop=32, batch_size=8, lr=1e-3, loss="noise2self"
    )
    assert rec["loss"] == "noise2self" and rec["steps"] == 60 and rec["loss_last"] < 0.8 * rec["loss_first"]
    assert adapted is not net and not adapted.training
    x = torch.rand(1, 5, 16, 16)
    masked, mask = blind_spot_batch(x, 2, 0.25, torch.Generator().manual_seed(0))
    assert mask.float().mean() > 0.1 and torch.equal(masked[:, [0, 1, 3, 4]], x[:, [0, 1, 3, 4]])
    assert not torch.equal(masked[:, 2][mask[:, 0]], x[:, 2][mask[:, 0]])  # the hidden pixels are not shown


class _BoxBlur(torch.nn.Module):
    """A fixed linear denoiser of the centre slice of a stack: a 3 x 3 mean."""

    def forward(self, x):
        c = x.shape[1] // 2
        return torch.nn.functional.avg_pool2d(x[:, c : c + 1], 3, stride=1, padding=1, count_include_pad=False)


def test_sure_estimates_the_squared_error_against_the_clean_slices_it_never_sees():
    from mriae.infer.adapt import sure_loss, volume_sigma
    from mriae.prepare.preprocessing import robust_scale

    data, _ = _template_crop()
    clean, _, _ = robust_scale(torch.from_numpy(data))
    g = torch.Generator().manual_seed(0)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=g)  # not clipped: every voxel counts
    stacks = torch.stack([noisy[z - 2 : z + 3] for z in range(2, clean.shape[0] - 2)])  # (B, 5, H, W)
    target = clean[2:-2, None]
    net = _BoxBlur()
    out = net(stacks)
    mse = float(((out - target) ** 2).mean())
    valid = torch.ones_like(target, dtype=torch.bool)
    sure = float(sure_loss(net, stacks, valid, 2, 0.05, 1e-3, torch.Generator().manual_seed(1)))
    fidelity = float(((out - stacks[:, 2:3]) ** 2).mean())  # what a loss against the noisy slice says
    assert abs(sure - mse) < 0.05 * mse, (sure, mse)
    assert abs(fidelity - mse) > 0.5 * mse  # the naive loss is far off, SURE is not
    # the noise sigma read from the scan itself, robust to its anatomy
    assert abs(volume_sigma(noisy.clamp(0, 1)) - 0.05) < 0.004
    assert volume_sigma(clean) < 0.01


def _true_mse(model, noisy, clean) -> float:
    """Mean squared error against the clean volume of ``model`` run on ``noisy`` (axis 0 slices)."""
    from mriae.infer.pipeline import SliceStackInferer

    with torch.no_grad():
        return float(((SliceStackInferer(context=2, axes=[0])(noisy[None, None], model)[0, 0] - clean) ** 2).mean())


def test_sure_adaptation_lowers_the_true_error_without_seeing_the_clean_volume():
    from mriae.infer.adapt import adapt_to_volume

    net, clean, noisy = _small_denoiser_and_noisy_crop()
    net.eval()

    def true_mse(model):
        return _true_mse(model, noisy, clean)

    adapted, rec = adapt_to_volume(
        net, noisy, 2, [0, 1, 2], max_steps=60, crop=32, batch_size=8, lr=1e-3, loss="sure"
    )
    assert rec["loss"] == "sure" and rec["steps"] == 60 and abs(rec["sigma"] - 0.05) < 0.006
    before, after = true_mse(net), true_mse(adapted)
    assert rec["loss_last"] < 0.9 * rec["loss_first"]
    assert after < 0.7 * before, (before, after)
    with pytest.raises(ValueError, match="adaptation loss"):
        adapt_to_volume(net, noisy, 2, [0], max_steps=1, loss="n2n")


def test_cosine_schedule_lowers_the_learning_rate_to_zero_and_still_lowers_the_true_error(monkeypatch):
    from mriae.infer.adapt import adapt_to_volume

    net, clean, noisy = _small_denoiser_and_noisy_crop()
    net.eval()
    rates = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    adapted, rec = adapt_to_volume(
        net, noisy, 2, [0, 1, 2], float("inf"), max_steps=60, crop=32, batch_size=8, lr=1e-3, loss="sure",
        schedule="cosine",
    )
    assert rec["schedule"] == "cosine" and rec["steps"] == 60 and len(rates) == 60
    assert rates[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[29] == pytest.approx(0.5e-3, rel=0.06) and rates[-1] < 0.01 * 1e-3
    before, after = _true_mse(net, noisy, clean), _true_mse(adapted, noisy, clean)
    assert after < 0.7 * before, (before, after)
    rates.clear()
    adapt_to_volume(net, noisy, 2, [0], max_steps=5, crop=32, lr=1e-3)  # the default keeps its rate
    assert rates == [1e-3] * 5
    _, rec = adapt_to_volume(net, noisy, 2, [0], 0.0, max_steps=None, crop=32, schedule="cosine")
    assert rec["steps"] == 1  # a zero time budget still takes its one step
    with pytest.raises(ValueError, match="adaptation schedule"):
        adapt_to_volume(net, noisy, 2, [0], max_steps=1, schedule="step")


def test_each_adaptation_step_trains_on_the_batch_of_crops_asked():
    from mriae.infer.adapt import adapt_to_volume

    net, _, noisy = _small_denoiser_and_noisy_crop()
    shapes = set()
    net.register_forward_pre_hook(lambda m, args: shapes.add(tuple(args[0].shape)))  # copied with the network
    _, rec = adapt_to_volume(net, noisy, 2, [0], max_steps=2, batch_size=3, crop=16, lr=1e-3)
    assert rec["batch_size"] == 3 and rec["crop"] == 16
    # SURE runs the adapted copy on the crops and their nudged twins at once, the frozen copy on the crops
    assert shapes == {(6, 5, 16, 16), (3, 5, 16, 16)}
    for bad in ({"batch_size": 0}, {"crop": 20}, {"crop": 0}):
        with pytest.raises(ValueError, match="adaptation batch_size"):
            adapt_to_volume(net, noisy, 2, [0], max_steps=1, **bad)
    # one crop shape for both views, cut down to the smallest slice of either (a graph replays one shape)
    shapes.clear()
    part = noisy[:, :21, :27]
    assert part.shape[0] >= 32  # the slices along axis 1 (X x 27) alone would give 32 x 24 crops
    _, rec = adapt_to_volume(net, part, 2, [0, 1], max_steps=3, batch_size=2, crop=32, lr=1e-3)
    assert shapes == {(4, 5, 16, 24), (2, 5, 16, 24)} and not rec["cuda_graph"]  # never on a CPU


def test_sure_with_rademacher_probes_estimates_the_error_and_adapts():
    """Hutchinson's +1 / -1 probes: the same unbiased estimate of the squared error as Gaussian ones,
    and an adaptation driven by it lowers the true error."""
    from mriae.infer.adapt import adapt_to_volume, sure_loss
    from mriae.prepare.preprocessing import robust_scale

    data, _ = _template_crop()
    clean, _, _ = robust_scale(torch.from_numpy(data))
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    stacks = torch.stack([noisy[z - 2 : z + 3] for z in range(2, clean.shape[0] - 2)])
    net = _BoxBlur()
    mse = float(((net(stacks) - clean[2:-2, None]) ** 2).mean())
    signs = torch.randint(0, 2, stacks[:, :1].shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    sure = float(sure_loss(net, stacks, torch.ones_like(signs, dtype=torch.bool), 2, 0.05, 1e-3, probe=signs))
    assert abs(sure - mse) < 0.05 * mse, (sure, mse)

    small, clean, noisy = _small_denoiser_and_noisy_crop()
    small.eval()
    probes = []
    real_sure = sure_loss

    def recording(*a, **k):
        probes.append(k["probe"])
        return real_sure(*a, **k)

    import mriae.infer.adapt as adapt

    adapt.sure_loss = recording
    try:
        adapted, rec = adapt_to_volume(small, noisy, 2, [0, 1, 2], max_steps=60, crop=32, batch_size=8, lr=1e-3,
                                       probe="rademacher")
    finally:
        adapt.sure_loss = real_sure
    assert rec["probe"] == "rademacher" and len(probes) == 60
    assert all(set(p.unique().tolist()) == {-1.0, 1.0} for p in probes)
    assert _true_mse(adapted, noisy, clean) < 0.7 * _true_mse(small, noisy, clean)
    with pytest.raises(ValueError, match="adaptation probe"):
        adapt_to_volume(small, noisy, 2, [0], max_steps=1, probe="uniform")


def test_sure_anchor_from_whole_slices_runs_the_frozen_network_once_per_view():
    """anchor="volume": the network before adaptation runs over each view's whole slices (padded to
    the stride, as inference runs it) before the steps, never on a step's crops, and the adaptation
    still lowers the true error; on a CPU "auto" keeps the per-crop anchor."""
    from mriae.infer.adapt import adapt_to_volume

    net, clean, noisy = _small_denoiser_and_noisy_crop()
    net.eval()
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    adapted, rec = adapt_to_volume(net, noisy, 2, [0, 1], max_steps=40, crop=16, batch_size=4, lr=1e-3,
                                   anchor="volume")
    assert rec["anchor"] == "volume" and rec["steps"] == 40
    x, y, z = noisy.shape
    whole = [s for s in shapes if s[2:] != (16, 16)]
    pad = lambda n: n + (-n) % 8  # noqa: E731
    assert {s[2:] for s in whole} == {(pad(y), pad(z)), (pad(x), pad(z))}
    assert sum(s[0] for s in whole) == x + y  # every slice of the two views, once
    assert [s for s in shapes if s[2:] == (16, 16)] == [(8, 5, 16, 16)] * 40  # the steps: adapted copy only
    assert _true_mse(adapted, noisy, clean) < 0.8 * _true_mse(net, noisy, clean)
    shapes.clear()
    _, rec = adapt_to_volume(net, noisy, 2, [0], max_steps=2, crop=16, batch_size=4, lr=1e-3)
    assert rec["anchor"] == "crop" and shapes.count((4, 5, 16, 16)) == 2  # the frozen copy on each step's crops
    with pytest.raises(ValueError, match="adaptation anchor"):
        adapt_to_volume(net, noisy, 2, [0], max_steps=1, anchor="slice")


def test_adaptation_of_named_modules_keeps_the_others_as_trained():
    from mriae.infer.adapt import adapt_to_volume

    net, clean, noisy = _small_denoiser_and_noisy_crop()
    net.eval()
    adapted, rec = adapt_to_volume(net, noisy, 2, [0, 1, 2], max_steps=60, crop=32, batch_size=8, lr=1e-3,
                                   modules=["up3", "full", "head"])
    assert rec["modules"] == ["up3", "full", "head"]
    before, after = dict(net.named_parameters()), dict(adapted.named_parameters())
    moved = {n.split(".")[0] for n in before if not torch.equal(before[n], after[n])}
    assert moved == {"up3", "full", "head"}
    assert _true_mse(adapted, noisy, clean) < 0.9 * _true_mse(net, noisy, clean)
    assert all(p.requires_grad for p in net.parameters())  # the loaded model is left as it was
    with pytest.raises(ValueError, match=r"'decoder'.*stem"):
        adapt_to_volume(net, noisy, 2, [0], max_steps=1, modules=["decoder"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("loss,schedule,options", [
    ("sure", "constant", {}), ("sure", "cosine", {}), ("noise2self", "constant", {}),
    ("sure", "constant", {"probe": "rademacher", "anchor": "volume"}),
])
def test_adaptation_replayed_from_a_cuda_graph_takes_the_same_steps_as_eager(loss, schedule, options, monkeypatch):
    # full fp32 and deterministic convolutions: SURE's divergence divides an output difference by 1e-3,
    # so TF32 rounding and atomics would make any two runs differ, graphed or not
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32  # a property of cuBLAS: monkeypatch cannot undo it
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _graph_against_eager(loss, schedule, options, monkeypatch)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def _graph_against_eager(loss, schedule, options, monkeypatch):
    import mriae.infer.adapt as adapt

    class EagerStep(adapt._Step):  # the same optimiser as a graphed run (capturable Adam), never captured
        def __init__(self, opt, loss_fn, graph, warmup=3):
            super().__init__(opt, loss_fn, False, warmup)

    net, clean, noisy = _small_denoiser_and_noisy_crop()
    net, clean, noisy = net.cuda().eval(), clean.cuda(), noisy.cuda()
    kw = dict(max_steps=40, crop=32, batch_size=8, lr=1e-3, loss=loss, schedule=schedule, **options)
    graphed, rec_g = adapt.adapt_to_volume(net, noisy, 2, [0, 1, 2], float("inf"), cuda_graph=True, **kw)
    monkeypatch.setattr(adapt, "_Step", EagerStep)
    eager, rec_e = adapt.adapt_to_volume(net, noisy, 2, [0, 1, 2], float("inf"), cuda_graph=True, **kw)
    assert rec_g["cuda_graph"] and not rec_e["cuda_graph"] and rec_g["steps"] == rec_e["steps"] == 40
    assert all(rec_g[k] == rec_e[k] == v for k, v in options.items())  # the options were the ones run
    # replaying the captured step is taking the eager step: the same losses and weights
    assert rec_g["loss_last"] == pytest.approx(rec_e["loss_last"], rel=1e-6)
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert _true_mse(graphed, noisy, clean) < _true_mse(net, noisy, clean)


def test_real_scan_protocol_on_colin27(tmp_path):
    from mriae.errors import MissingFileError
    from mriae.compare.real_scan import corrupt, find_scan, reference, run_baseline, score

    try:
        scan = find_scan()
    except MissingFileError:
        pytest.skip("Debian's mricron-data is not unpacked (bash scripts/get_real_scan.sh)")
    ref = reference(scan)
    vol = ref["volume"]
    assert vol.shape == (181, 217, 181) and vol.min() == 0 and vol.max() == 1
    noisy = corrupt(vol, "gaussian-0.03")
    assert np.array_equal(noisy, corrupt(vol, "gaussian-0.03"))  # seeded
    assert abs(score(noisy, ref)["psnr"] - 31.3) < 0.3  # clipped noise of sigma 0.03 over the head's box
    assert score(vol, ref)["psnr"] > 100 and score(vol, ref)["mean_ratio"] == pytest.approx(1.0)
    out, info = run_baseline("gaussian", noisy, "gaussian-0.03")
    assert score(out, ref)["psnr"] > score(noisy, ref)["psnr"] + 1  # smoothing helps against heavy noise


def test_real_scan_audits_each_bundle_before_running_it(tmp_path, capsys):
    """scripts/real_scan.py runs bundles given on its command line: a hostile one is refused before
    anything of it runs (its payload would create a file); --trust-bundle is the explicit way past."""
    from mriae.compare.real_scan import main

    root = _identity_bundle(tmp_path, NATIVE)
    cfg = json.loads((root / "configs" / "inference.json").read_text())
    marker = tmp_path / "pwned"
    cfg["initialize"].insert(0, f"$__import__('pathlib').Path('{marker}').touch()")
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    rc = main(["--bundles", f"x={root}", "--baselines", "--conditions", "clean", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().out
    assert rc == 2 and not marker.exists() and not (tmp_path / "o").exists()
    assert "refused, 1 audit failure" in err and "__import__" in err and "--trust-bundle" in err


def test_adapt_select_grid_points_name_their_batch_and_crop_and_reach_the_inferer():
    """A grid point of scripts/adapt_select.py sets every adaptation key it tries, even where it equals a
    value that was once the default, so what ran is what its row says."""
    import importlib.util

    from mriae.config import bundle_config

    spec = importlib.util.spec_from_file_location("adapt_select", REPO / "scripts" / "adapt_select.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.point_overrides(None, "sure") == {}
    assert "adapt_cuda_graph" not in mod.point_overrides((1e-4, 9, 1, "constant", 32, 160), "sure")
    over = mod.point_overrides((3e-4, 900, 1, "constant", 8, 96), "sure", cuda_graph=False, seconds=2.4)
    root = REPO / "bundles" / "res_unet"
    parser = bundle_config(root, root / "configs" / "inference.json", overrides=over)
    kwargs = parser.get_parsed_content("inferer#adapt_kwargs")
    assert kwargs == {"loss": "sure", "lr": 3e-4, "schedule": "constant", "batch_size": 8, "crop": 96,
                      "cuda_graph": False}
    assert parser.get_parsed_content("adapt_steps") == 900 and parser.get_parsed_content("adapt_seconds") == 2.4
    default = bundle_config(root, root / "configs" / "inference.json").get_parsed_content("inferer#adapt_kwargs")
    assert default["cuda_graph"] is True and (default["batch_size"], default["crop"]) == (32, 160)
    # --also: any other inference.json key, each value JSON or a string, reaching the adaptation
    (probes, mods) = mod.parse_also(["inferer#adapt_kwargs#probe=gaussian|rademacher",
                                     'inferer#adapt_kwargs#modules=null|["up3","head"]'])
    assert [v for _, v in probes] == ['"gaussian"', '"rademacher"']
    assert [v for _, v in mods] == ["null", '["up3", "head"]']
    over = mod.point_overrides((3e-4, 900, 1, "constant", 16, 96, (probes[1], mods[1])), "sure")
    kwargs = bundle_config(root, root / "configs" / "inference.json", overrides=over).get_parsed_content(
        "inferer#adapt_kwargs")
    assert kwargs["probe"] == "rademacher" and kwargs["modules"] == ["up3", "head"] and kwargs["batch_size"] == 16
    from mriae.errors import InputError

    with pytest.raises(InputError, match="KEY=VALUE1"):
        mod.parse_also(["inferer#adapt_kwargs#probe"])
