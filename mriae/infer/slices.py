"""A 2D network run over every slice of a volume along one axis, as stacks of ``2k + 1``
neighbouring slices (edge slices replicated), each slice padded to the network's stride and cropped
back. Shared by inference (``mriae.infer.pipeline.SliceStackInferer``) and the adaptation's
pre-adaptation outputs (``mriae.infer.adapt``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["along_axis", "flip_ensemble"]


def flip_ensemble(network: torch.nn.Module, stacks: torch.Tensor, flips: int = 1) -> torch.Tensor:
    """The network's output, averaged over ``flips`` in-plane flips of the input (each undone)."""
    dims = [(), (-1,), (-2,), (-2, -1)][:flips]
    out = None
    for i, d in enumerate(dims):
        y = network(stacks.flip(d) if d else stacks).float()
        y = y.flip(d) if d else y
        out = y if out is None else out + (y - out) / (i + 1)
    return out


def along_axis(
    vol: torch.Tensor, axis: int, network: torch.nn.Module, context: int, batch_size: int = 32, multiple: int = 8,
    flips: int = 1,
) -> torch.Tensor:
    """The network's centre-slice output for every slice of ``vol`` (X, Y, Z) along ``axis``, in
    ``vol``'s shape."""
    v = vol.movedim(axis, 0)
    n, h, w = v.shape
    k = context
    padded = F.pad(v[None, None], (0, 0, 0, 0, k, k), mode="replicate")[0, 0] if k else v
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    mode = "reflect" if min(h, w) > max(pads) else "replicate"
    res = torch.empty_like(v)
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(n, s + batch_size), device=v.device)
        stacks = padded[idx[:, None] + torch.arange(2 * k + 1, device=v.device)[None]]  # (b, 2k+1, h, w)
        if ph or pw:
            stacks = F.pad(stacks, pads, mode=mode)
        y = flip_ensemble(network, stacks, flips)
        res[s : s + len(idx)] = y[:, 0, pads[2] : pads[2] + h, pads[0] : pads[0] + w]
    return res.movedim(0, axis)
