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

SURE (``loss="sure"``, the default; Stein's unbiased risk estimate: Stein, Ann. Stat. 9(6), 1981; its Monte-Carlo
form for any black-box denoiser: Ramani, Blu and Unser, IEEE TIP 17(9), 2008; used to train deep
denoisers without clean data: Soltanayev and Chun, NeurIPS 2018): for Gaussian noise of sigma s,
``||f(y) - y||^2 / N - s^2 + 2 s^2 div f(y) / N`` is an unbiased estimate of the mean squared error
``||f(y) - x||^2 / N`` against the unseen clean image x, so it can be minimised on the noisy scan
itself without changing what the network sees (no hidden pixels). The divergence is estimated with
one random probe b: ``b . (f(y + e b) - f(y)) / e``. Sigma is the scan's own (Immerkaer's estimate,
``volume_sigma``, over the voxels that were not clipped) unless given.
The estimate only holds where the stored image was not clipped, so voxels whose local mean lies
within 3 sigma of 0 or 1 (air, the brightest fat) are left out of it; there the output is held to
what the network gave before adaptation. Measured on the real scan (docs/real_scans.md): Noise2Self
lowered PSNR under Gaussian noise, SURE raised it; SURE assumes noise, so it undoes the correction
of other corruptions (pixel dropout).

Batch norm layers stay in evaluation mode (the statistics of one volume's crops would replace the
training cohort's); the adaptation works on a copy, so the loaded model is left as it was.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mriae.networks.blocks import immerkaer_mask

__all__ = ["blind_spot_batch", "adapt_to_volume", "volume_sigma", "sure_loss"]


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
    lr: float = 1e-4,
    batch_size: int = 8,
    crop: int = 96,
    fraction: float = 1 / 32,
    max_steps: int | None = None,
    seed: int = 0,
    loss: str = "sure",
    sigma: float | None = None,
    epsilon: float = 1e-3,
    schedule: str = "constant",
) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of ``network`` on ``volume`` (X, Y, Z), scaled as the network expects, for
    at most ``seconds`` (or ``max_steps``) with the ``loss`` ``"noise2self"`` (blind spot) or
    ``"sure"`` (noise of ``sigma``, estimated from the volume when None). Returns the adapted copy
    (in eval mode) and a record ``{"loss", "steps", "schedule", "batch_size", "crop", "seconds",
    "loss_first", "loss_last"}`` (each step trains on ``batch_size`` random ``crop`` x ``crop`` stacks; the mean
    loss of the first and last tenth of the steps; with SURE the estimated mean squared error
    against the clean scan where the estimate holds, plus the term that holds the clipped voxels)
    and, for SURE, ``"sigma"``. ``schedule``: ``"constant"`` keeps ``lr``; ``"cosine"`` lowers it
    from ``lr`` to zero along a half cosine over the run (its progress: the larger of steps /
    ``max_steps`` and elapsed / ``seconds``), so that the last steps average out the noise of the
    random crops and probes instead of moving by a full step."""
    if loss not in ("noise2self", "sure"):
        raise ValueError(f"adaptation loss {loss!r}: 'noise2self' or 'sure'")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"adaptation schedule {schedule!r}: 'constant' or 'cosine'")
    if int(batch_size) < 1 or int(crop) < 8 or int(crop) % 8:
        raise ValueError(f"adaptation batch_size {batch_size!r} and crop {crop!r}: at least 1, and a multiple of 8")
    with torch.inference_mode(False):  # an inference engine's tensors cannot be saved for backward
        return _adapt(
            network, volume.clone(), context, axes, seconds, lr, int(batch_size), int(crop), fraction, max_steps, seed,
            loss, sigma, float(epsilon), schedule,
        )


_MEDIAN_ABS_NORMAL = 0.6744897501960817  # median of |N(0, 1)|


def volume_sigma(volume: torch.Tensor) -> float:
    """The Gaussian noise sigma of a volume (X, Y, Z) on the [0, 1] scale, from the response to
    Immerkaer's mask (``mriae.networks.blocks.noise_sigma``'s, slices along the first axis; 6 sigma
    for pure noise): its median absolute value (robust to the edges of the anatomy, which inflate
    the mean) over the voxels that were not clipped, those whose 3 x 3 x 3 mean lies more than
    3 sigma inside (0, 1) (in air and padding the noise is clipped to zero); twice, starting from
    0.05 / 0.95."""
    v = volume.float()
    response = F.conv2d(v[:, None], immerkaer_mask().to(v.device), padding=1)[:, 0].abs()
    local = F.avg_pool3d(v[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    margin, sigma = 0.05, 0.0
    for _ in range(2):
        inside = (local > margin) & (local < 1 - margin)
        inside[:, [0, -1]], inside[:, :, [0, -1]] = False, False  # the 2D mask's zero-padded border
        if not inside.any():
            return sigma
        sigma = float(response[inside].median()) / (6 * _MEDIAN_ABS_NORMAL)
        margin = min(0.45, 3 * sigma)
    return sigma


def sure_loss(
    net: torch.nn.Module, stacks: torch.Tensor, valid: torch.Tensor, context: int, sigma: float, epsilon: float,
    generator: torch.Generator | None = None, anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monte-Carlo SURE of ``net`` on noisy ``stacks`` (B, 2k + 1, H, W) over the centre-slice pixels
    where ``valid`` (B, 1, H, W) is true: the estimated mean squared error of the output against the
    clean centre slice, differentiable in the network's weights. Where ``valid`` is false (clipped
    voxels, about which SURE says nothing) the squared distance to ``anchor`` (the output of the
    network before adaptation) is added instead, so that the output there stays what it was."""
    y = stacks[:, context : context + 1]
    probe = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    nudged = stacks.clone()
    nudged[:, context : context + 1] += epsilon * probe
    out, out_nudged = net(torch.cat([stacks, nudged])).chunk(2)
    w = valid.to(y.dtype)
    n = w.sum().clamp_min(1.0)
    fidelity = ((out - y) ** 2 * w).sum() / n
    divergence = (probe * (out_nudged - out) * w).sum() / (epsilon * n)
    sure = fidelity - sigma**2 + 2 * sigma**2 * divergence
    if anchor is None:
        return sure
    return sure + ((out - anchor) ** 2 * (1 - w)).sum() / w.numel()


def _adapt(
    network, volume, context, axes, seconds, lr, batch_size, crop, fraction, max_steps, seed, loss, sigma, eps, schedule
):
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
    losses: list[torch.Tensor] = []  # kept on the device: read once at the end, not once per step
    t0 = time.perf_counter()
    sure = None
    if loss == "sure":
        sigma = volume_sigma(volume) if sigma is None else float(sigma)
        local = F.avg_pool3d(volume[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
        inside = (local > 3 * sigma) & (local < 1 - 3 * sigma)
        masks = [inside.movedim(a, 0) for a in axes]  # the centre slices' own voxels, unpadded
        frozen = copy.deepcopy(network).to(dev).eval()  # the output before adaptation, kept where SURE is blind
        sure = (masks, sigma, eps, frozen)
    with torch.enable_grad():  # inference engines run under no_grad
        _train(net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0, sure,
               lr if schedule == "cosine" else None)
    step = len(losses)
    net.eval()
    tenth = max(1, len(losses) // 10)
    values = torch.stack(losses).tolist() if losses else [float("nan")]
    record = {
        "loss": loss,
        **({"sigma": round(sure[1], 6)} if sure else {}),
        "steps": step,
        "schedule": schedule,
        "batch_size": batch_size,
        "crop": crop,
        "seconds": round(time.perf_counter() - t0, 3),
        "loss_first": sum(values[:tenth]) / tenth,
        "loss_last": sum(values[-tenth:]) / tenth,
    }
    return net, record


def _train(
    net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0, sure, cosine_lr
) -> None:
    dev = offs.device
    step = 0
    while (max_steps is None or step < max_steps) and (time.perf_counter() - t0 < seconds or step == 0):
        if cosine_lr is not None:  # progress towards whichever bound ends the run first
            done = max(step / max_steps if max_steps else 0.0,
                       (time.perf_counter() - t0) / seconds if 0 < seconds < math.inf else 0.0)
            for group in opt.param_groups:
                group["lr"] = 0.5 * cosine_lr * (1 + math.cos(math.pi * min(done, 1.0)))
        v = views[step % len(views)]
        n, h, w = v.shape[0] - 2 * context, v.shape[1], v.shape[2]
        p_h, p_w = min(crop, h - h % 8), min(crop, w - w % 8)
        z = torch.randint(0, n, (batch_size,), generator=g, device=dev)
        y0 = torch.randint(0, h - p_h + 1, (batch_size,), generator=g, device=dev)
        x0 = torch.randint(0, w - p_w + 1, (batch_size,), generator=g, device=dev)
        ys = (y0[:, None] + torch.arange(p_h, device=dev))[:, None, :, None]
        xs = (x0[:, None] + torch.arange(p_w, device=dev))[:, None, None, :]
        stacks = v[(z[:, None] + offs[None])[:, :, None, None], ys, xs]
        if sure is not None:
            masks, sigma, eps, frozen = sure
            valid = masks[step % len(views)][z[:, None, None, None], ys, xs]
            with torch.no_grad():
                anchor = frozen(stacks)
            loss = sure_loss(net, stacks, valid, context, sigma, eps, g, anchor)
        else:
            x, mask = blind_spot_batch(stacks, context, fraction, g)
            target = stacks[:, context : context + 1]
            pred = net(x)
            loss = ((pred - target) ** 2)[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        step += 1
