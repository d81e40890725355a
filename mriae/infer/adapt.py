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

``cuda_graph=True`` (the bundles' ``inference.json`` turns it on with ``adapt_cuda_graph``): on a CUDA
device each step (the frozen network's output, the loss, its backward and Adam's update) is captured
once into a CUDA graph after a few eager steps and then replayed; the random crops and probes are
drawn as before, outside the graph. What goes is the launching of several hundred small kernels one
by one from Python: on an H200 a step of 8 crops of 96 px takes 2.8 ms instead of 8.8 ms, while one of
32 crops of 160 px (compute-bound) gains 2 % (docs/performance.md). A graph needs Adam's
``capturable`` form (its step counts and rate on the device); replaying the captured step takes
exactly the eager step of that optimiser (tests/test_denoising_inference.py, run on an H100), while
the plain Adam of an eager run rounds differently, so the two runs part like runs with two seeds.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mriae.infer.slices import along_axis
from mriae.networks.blocks import immerkaer_mask

__all__ = ["blind_spot_batch", "adapt_to_volume", "volume_sigma", "sure_loss"]
logger = logging.getLogger("mriae.infer")


def _donut(centre: torch.Tensor) -> torch.Tensor:
    """Each pixel of ``centre`` (B, 1, H, W) replaced by the mean of its four neighbours (reflect-padded)."""
    p = F.pad(centre, (1, 1, 1, 1), mode="reflect")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4


def blind_spot_batch(
    stacks: torch.Tensor, context: int, fraction: float, generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked input, mask)``: ``fraction`` of the centre slice's pixels hidden (replaced by the mean
    of their four neighbours, reflect-padded at the border); ``mask`` (B, 1, H, W) marks them (drawn
    with ``generator`` when None)."""
    centre = stacks[:, context : context + 1]
    if mask is None:
        mask = torch.rand(centre.shape, generator=generator, device=stacks.device) < fraction
    x = stacks.clone()
    x[:, context : context + 1] = torch.where(mask, _donut(centre), centre)
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
    cuda_graph: bool = False,
    probe: str = "gaussian",
    anchor: str = "crop",
    modules: Sequence[str] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of ``network`` on ``volume`` (X, Y, Z), scaled as the network expects, for
    at most ``seconds`` (or ``max_steps``) with the ``loss`` ``"noise2self"`` (blind spot) or
    ``"sure"`` (noise of ``sigma``, estimated from the volume when None). Returns the adapted copy
    (in eval mode) and a record ``{"loss", "steps", "schedule", "batch_size", "crop", "seconds",
    "loss_first", "loss_last", "cuda_graph"}`` (each step trains on ``batch_size`` random ``crop`` x ``crop`` stacks, the
    crop cut down to the smallest slice of any view, rounded down to a multiple of 8; the mean
    loss of the first and last tenth of the steps; with SURE the estimated mean squared error
    against the clean scan where the estimate holds, plus the term that holds the clipped voxels)
    and, for SURE, ``"sigma"``. ``schedule``: ``"constant"`` keeps ``lr``; ``"cosine"`` lowers it
    from ``lr`` to zero along a half cosine over the run (its progress: the larger of steps /
    ``max_steps`` and elapsed / ``seconds``), so that the last steps average out the noise of the
    random crops and probes instead of moving by a full step. ``cuda_graph``: on a CUDA device, replay
    each step from a CUDA graph (the record's ``"cuda_graph"`` says whether it was; elsewhere, or if
    the capture fails, the steps run eagerly). ``probe``: SURE's divergence direction, ``"gaussian"``
    (standard normal) or ``"rademacher"`` (+1 / -1 with equal odds: Hutchinson's trace estimator of
    least variance, Hutchinson 1990). ``anchor``: where SURE is blind, what holds the output,
    ``"crop"`` (the network before adaptation run on each step's crops) or ``"volume"`` (run once,
    before the steps, on the whole slices of each view, as inference runs it: one pass instead of one
    per step); ``"auto"``: ``"volume"`` on a CUDA device, ``"crop"`` elsewhere. ``modules``: names of
    the network's submodules (``named_modules``) whose weights adapt, the rest kept as trained; None
    adapts all.
    The record also names ``"probe"``, ``"anchor"`` and ``"modules"``."""
    if loss not in ("noise2self", "sure"):
        raise ValueError(f"adaptation loss {loss!r}: 'noise2self' or 'sure'")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"adaptation schedule {schedule!r}: 'constant' or 'cosine'")
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"adaptation probe {probe!r}: 'gaussian' or 'rademacher'")
    if anchor not in ("auto", "crop", "volume"):
        raise ValueError(f"adaptation anchor {anchor!r}: 'auto', 'crop' or 'volume'")
    if anchor == "auto":
        anchor = "volume" if volume.device.type == "cuda" else "crop"
    if int(batch_size) < 1 or int(crop) < 8 or int(crop) % 8:
        raise ValueError(f"adaptation batch_size {batch_size!r} and crop {crop!r}: at least 1, and a multiple of 8")
    with torch.inference_mode(False):  # an inference engine's tensors cannot be saved for backward
        return _adapt(
            network, volume.clone(), context, axes, seconds, lr, int(batch_size), int(crop), fraction, max_steps, seed,
            loss, sigma, float(epsilon), schedule, bool(cuda_graph), probe, anchor, modules,
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
    generator: torch.Generator | None = None, anchor: torch.Tensor | None = None, probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monte-Carlo SURE of ``net`` on noisy ``stacks`` (B, 2k + 1, H, W) over the centre-slice pixels
    where ``valid`` (B, 1, H, W) is true: the estimated mean squared error of the output against the
    clean centre slice, differentiable in the network's weights. Where ``valid`` is false (clipped
    voxels, about which SURE says nothing) the squared distance to ``anchor`` (the output of the
    network before adaptation) is added instead, so that the output there stays what it was.
    ``probe`` (B, 1, H, W): the divergence's random direction (standard normal; drawn with
    ``generator`` when None)."""
    y = stacks[:, context : context + 1]
    if probe is None:
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


class _Step:
    """One optimiser step of ``loss_fn(*inputs)``: eager, or (``graph`` true, on a CUDA device) eager
    for ``warmup`` steps on a side stream, then captured into a CUDA graph whose static inputs each
    later step copies its own into before replaying it. Returns the step's loss, detached."""

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor], graph: bool, warmup: int = 3):
        self.opt, self.loss_fn, self.warmup = opt, loss_fn, int(warmup)
        self.use_graph, self.steps = bool(graph), 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] = []
        self.static_loss: torch.Tensor | None = None
        self.side = torch.cuda.Stream() if self.use_graph else None

    def _eager(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        loss = self.loss_fn(*inputs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            for static, x in zip(self.static, inputs):
                static.copy_(x)
            self.graph.replay()
            return self.static_loss.clone()
        if not self.use_graph:
            return self._eager(inputs)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            loss = self._eager(inputs)
        torch.cuda.current_stream().wait_stream(self.side)
        self.steps += 1
        if self.steps >= self.warmup:
            self._capture(inputs)
        return loss

    def _capture(self, inputs: Sequence[torch.Tensor]) -> None:
        self.static = [x.clone() for x in inputs]
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self.loss_fn(*self.static)
                loss.backward()
                self.opt.step()
        except RuntimeError as e:  # something in the step cannot be captured: stay eager
            logger.warning("adaptation: the step could not be captured into a CUDA graph (%s); it runs eagerly",
                           str(e).splitlines()[0])
            self.use_graph, self.static = False, []
            self.opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            return
        self.graph, self.static_loss = graph, loss.detach()


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _crop_size(views: Sequence[torch.Tensor], crop: int) -> tuple[int, int]:
    """One crop shape for every view (a CUDA graph replays one shape): ``crop``, cut down to each
    view's smallest slice height / width, rounded down to a multiple of 8."""
    return (min([crop] + [v.shape[1] - v.shape[1] % 8 for v in views]),
            min([crop] + [v.shape[2] - v.shape[2] % 8 for v in views]))


def _trainable(net: torch.nn.Module, modules: Sequence[str] | None) -> list[torch.nn.Parameter]:
    """The parameters of ``net``'s named submodules (all when None); the others stop taking gradients."""
    if modules is None:
        return list(net.parameters())
    named = dict(net.named_modules())
    unknown = [m for m in modules if m not in named or not m]
    if unknown or not modules:
        top = ", ".join(n for n, _ in net.named_children())
        raise ValueError(f"adaptation modules {list(modules)!r}: not submodules of the network (its own: {top})")
    keep = {id(p) for m in modules for p in named[m].parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in net.parameters() if p.requires_grad]


def _whole_slice_outputs(frozen: torch.nn.Module, volume: torch.Tensor, context: int, axes: Sequence[int]) -> list:
    """The network's output on every whole slice of each view (slices along ``axes[i]`` first), as
    inference computes it (``mriae.infer.slices.along_axis``)."""
    with torch.no_grad():
        return [along_axis(volume, a, frozen, context).movedim(a, 0) for a in axes]


def _adapt(
    network, volume, context, axes, seconds, lr, batch_size, crop, fraction, max_steps, seed, loss, sigma, eps, schedule,
    cuda_graph, probe, anchor, modules,
):
    dev = volume.device
    net = copy.deepcopy(network).to(dev)
    net.train()
    _freeze_norm(net)
    params = _trainable(net, modules)
    graph = cuda_graph and dev.type == "cuda"
    # capturable: Adam's step counts live on the device (a graph replays them); the rate a tensor the
    # cosine schedule can change between replays
    opt = (torch.optim.Adam(params, lr=torch.tensor(float(lr), device=dev), capturable=True) if graph
           else torch.optim.Adam(params, lr=lr))
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
        held = _whole_slice_outputs(frozen, volume, context, axes) if anchor == "volume" else frozen
        sure = (masks, sigma, eps, held, probe)
    with torch.enable_grad():  # inference engines run under no_grad
        graphed = _train(net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0,
                         sure, lr if schedule == "cosine" else None, graph)
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
        "cuda_graph": graphed,
        **({"probe": probe, "anchor": anchor} if sure else {}),
        "modules": None if modules is None else list(modules),
    }
    return net, record


def _train(
    net, opt, views, context, offs, batch_size, crop, fraction, g, losses, seconds, max_steps, t0, sure, cosine_lr,
    graph,
) -> bool:
    """Run the steps; whether they were replayed from a CUDA graph."""
    dev = offs.device
    p_h, p_w = _crop_size(views, crop)
    if sure is not None:
        masks, sigma, eps, held, probe_kind = sure
        per_crop = isinstance(held, torch.nn.Module)
        if per_crop:  # the network before adaptation, run on each step's crops
            def loss_fn(stacks, valid, probe):
                with torch.no_grad():
                    anchor = held(stacks)
                return sure_loss(net, stacks, valid, context, sigma, eps, anchor=anchor, probe=probe)
        else:  # its outputs on the whole slices, cropped like the stacks
            def loss_fn(stacks, valid, probe, anchor):
                return sure_loss(net, stacks, valid, context, sigma, eps, anchor=anchor, probe=probe)
    else:
        def loss_fn(stacks, mask):  # the mean over the hidden pixels, without indexing by the mask (a graph
            x, _ = blind_spot_batch(stacks, context, fraction, mask=mask)  # replays fixed shapes)
            w = mask.to(stacks.dtype)
            return (((net(x) - stacks[:, context : context + 1]) ** 2) * w).sum() / w.sum().clamp_min(1.0)
    run = _Step(opt, loss_fn, graph)
    # with a time bound on a CUDA device, wait for the device every few steps: the host would otherwise
    # queue steps (replays above all) far ahead of the device and overrun the bound
    sync_every = 8 if dev.type == "cuda" and seconds < math.inf else 0
    step = 0
    while (max_steps is None or step < max_steps) and (time.perf_counter() - t0 < seconds or step == 0):
        if cosine_lr is not None:  # progress towards whichever bound ends the run first
            done = max(step / max_steps if max_steps else 0.0,
                       (time.perf_counter() - t0) / seconds if 0 < seconds < math.inf else 0.0)
            _set_lr(opt, 0.5 * cosine_lr * (1 + math.cos(math.pi * min(done, 1.0))))
        v = views[step % len(views)]
        n = v.shape[0] - 2 * context
        z = torch.randint(0, n, (batch_size,), generator=g, device=dev)
        y0 = torch.randint(0, v.shape[1] - p_h + 1, (batch_size,), generator=g, device=dev)
        x0 = torch.randint(0, v.shape[2] - p_w + 1, (batch_size,), generator=g, device=dev)
        ys = (y0[:, None] + torch.arange(p_h, device=dev))[:, None, :, None]
        xs = (x0[:, None] + torch.arange(p_w, device=dev))[:, None, None, :]
        stacks = v[(z[:, None] + offs[None])[:, :, None, None], ys, xs]
        if sure is not None:
            at = (z[:, None, None, None], ys, xs)
            valid = masks[step % len(views)][at]
            if probe_kind == "rademacher":
                probe = torch.randint(0, 2, (batch_size, 1, p_h, p_w), generator=g, device=dev).to(stacks.dtype) * 2 - 1
            else:
                probe = torch.randn((batch_size, 1, p_h, p_w), generator=g, device=dev, dtype=stacks.dtype)
            extra = () if per_crop else (held[step % len(views)][at],)
            losses.append(run(stacks, valid, probe, *extra))
        else:
            mask = torch.rand((batch_size, 1, p_h, p_w), generator=g, device=dev) < fraction
            losses.append(run(stacks, mask))
        step += 1
        if sync_every and step % sync_every == 0:
            torch.cuda.synchronize(dev)
    return run.graph is not None
