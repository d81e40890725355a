"""Self-supervised adaptation of a trained denoiser to the user's own scan (no clean data needed).

Noise2Self (Batson and Royer, "Noise2Self: Blind denoising by self-supervision", ICML 2019): for
noise that is independent from voxel to voxel, a function that does not look at a voxel's own
value when it predicts that voxel (J-invariant) is best, in expectation, at predicting the NOISY
voxel when it predicts the CLEAN one. So: hide a random set J of centre-slice pixels (each
replaced by the mean of its four in-plane neighbours, the paper's "donut" interpolation), and
train to predict the noisy values at J from the rest. The neighbouring context slices stay as they
are: their noise is independent of the hidden pixels'. Starting from the supervised weights, a
bounded number of seconds of such training adapts the network to the scan's own contrast,
anatomy and noise, which the synthetic training data cannot cover.

Batch norm layers stay in evaluation mode (the statistics of one volume's crops would replace the
training cohort's); the adaptation works on a copy, so the loaded model is left as it was.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["blind_spot_batch", "adapt_to_volume"]


def blind_spot_batch(
    stacks: torch.Tensor, context: int, fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked input, mask)``: ``fraction`` of the centre slice's pixels hidden (replaced by the mean
    of their four neighbours, reflect-padded at the border); ``mask`` (B, 1, H, W) marks them."""
    centre = stacks[:, context : context + 1]
    mask = torch.rand(centre.shape, generator=generator, device=stacks.device) < fraction
    kernel = torch.tensor(
        [[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], device=stacks.device, dtype=stacks.dtype
    )
    donut = F.conv2d(F.pad(centre, (1, 1, 1, 1), mode="reflect"), kernel[None, None])
    x = stacks.clone()
    x[:, context : context + 1] = torch.where(mask, donut, centre)
    return x, mask


def _freeze_norm(net: torch.nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def adapt_to_volume(
    network: torch.nn.Module,
    volume: torch.Tensor,
    context: int,
    axes: Sequence[int] = (0,),
    seconds: float = 30.0,
    lr: float = 2e-5,
    batch_size: int = 8,
    crop: int = 96,
    fraction: float = 1 / 32,
    max_steps: int | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of ``network`` on ``volume`` (X, Y, Z), scaled as the network expects, for
    at most ``seconds`` (or ``max_steps``). Returns the adapted copy (in eval mode) and a record
    ``{"steps", "seconds", "loss_first", "loss_last"}`` of the blind-spot loss (the mean of the
    first and last tenth of the steps)."""
    with torch.inference_mode(False):  # an inference engine's tensors cannot be saved for backward
        return _adapt(network, volume.clone(), context, axes, seconds, lr, batch_size, crop, fraction, max_steps, seed)


def _adapt(network, volume, context, axes, seconds, lr, batch_size, crop, fraction, max_steps, seed):
    dev = volume.device
    net = copy.deepcopy(network).to(dev)
    net.train()
    _freeze_norm(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator(device=dev).manual_seed(seed)
    views = []
    for a in axes:
        v = volume.movedim(a, 0)
        views.append(
            F.pad(v[None, None], (0, 0, 0, 0, context, context), mode="replicate")[0, 0] if context else v
        )
    offs = torch.arange(2 * context + 1, device=dev)
    losses: list[float] = []
    t0 = time.perf_counter()
    with torch.enable_grad():  # inference engines run under no_grad
        _train(net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0)
    step = len(losses)
    net.eval()
    tenth = max(1, len(losses) // 10)
    record = {
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 3),
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
    }
    return net, record


def _train(net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0) -> None:
    dev = offs.device
    step = 0
    while (max_steps is None or step < max_steps) and (time.perf_counter() - t0 < seconds or step == 0):
        v = views[step % len(views)]
        n, h, w = v.shape[0] - 2 * context, v.shape[1], v.shape[2]
        p_h, p_w = min(crop, h - h % 8), min(crop, w - w % 8)
        z = torch.randint(0, n, (batch_size,), generator=g, device=dev)
        y0 = torch.randint(0, h - p_h + 1, (batch_size,), generator=g, device=dev)
        x0 = torch.randint(0, w - p_w + 1, (batch_size,), generator=g, device=dev)
        ys = (y0[:, None] + torch.arange(p_h, device=dev))[:, None, :, None]
        xs = (x0[:, None] + torch.arange(p_w, device=dev))[:, None, None, :]
        stacks = v[(z[:, None] + offs[None])[:, :, None, None], ys, xs]
        x, mask = blind_spot_batch(stacks, context, fraction, g)
        target = stacks[:, context : context + 1]
        pred = net(x)
        loss = ((pred - target) ** 2)[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
