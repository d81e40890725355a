"""Building blocks of the S4 autoencoders, for ``spatial_dims`` 2 or 3 (MONAI layer factories).

Batch norm uses Keras' epsilon (1e-3) because the seed models were Keras models, but PyTorch's
running-statistics momentum (0.1, i.e. Keras momentum 0.9) rather than Keras' 0.99: with 0.99 the
running statistics need thousands of steps to settle, and a short run (the CPU demo, CI) then
validates with statistics that are still mostly their initial values. ``same`` 3x3 convolutions; stride 2 halves every spatial size.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Optional

import torch
from monai.networks.layers import Conv, Norm
from torch import nn

__all__ = [
    "conv",
    "batch_norm",
    "FullPreActResBlock",
    "OriginalResBlock",
    "UpBlock",
    "OutputHead",
    "RES_BLOCKS",
]


def records_init_args(cls: type) -> type:
    """Class decorator: instances keep their constructor's arguments (defaults filled in) as
    ``init_args``, so a checkpoint's side file can say exactly which network its weights fit
    (``mriae.prepare.plan``) and inference can refuse weights made for another one."""
    init = cls.__init__
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.init_args = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in bound.arguments.items() if k != "self"
        }

    cls.__init__ = wrapped
    return cls


def conv(spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """A 'same' convolution with bias (as Keras' Conv2D default)."""
    return Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def batch_norm(spatial_dims: int, ch: int, norm: str = "batch") -> nn.Module:
    """S4's batch norm (``norm="batch"``), or a replacement: ``"none"`` (identity: what the network does
    in training it does at inference, whatever the input's statistics) or ``"group"`` (8 groups)."""
    if norm == "batch":
        return Norm[Norm.BATCH, spatial_dims](ch, eps=1e-3, momentum=0.1)
    if norm == "none":
        return nn.Identity()
    if norm == "group":
        return nn.GroupNorm(min(8, ch), ch, eps=1e-3)
    raise ValueError(f"norm {norm!r} is not one of batch, none, group")


class _Shortcut(nn.Module):
    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.proj = conv(spatial_dims, in_ch, out_ch, 1, stride) if (in_ch != out_ch or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


class FullPreActResBlock(nn.Module):
    """Full pre-activation residual block (He et al. 2016, "Identity mappings in deep residual networks"):
    BN -> ReLU -> Conv(stride) -> BN -> ReLU -> Conv, plus a shortcut (1x1 conv when the stride or the
    width changes), added; no activation after the addition."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            batch_norm(spatial_dims, in_ch, norm),
            nn.ReLU(),
            conv(spatial_dims, in_ch, out_ch, 3, stride),
            batch_norm(spatial_dims, out_ch, norm),
            nn.ReLU(),
            conv(spatial_dims, out_ch, out_ch, 3, 1),
        )
        self.shortcut = _Shortcut(spatial_dims, in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class OriginalResBlock(nn.Module):
    """Original residual block (He et al. 2015): Conv(stride) -> BN -> ReLU -> Conv -> BN, plus a
    shortcut (1x1 conv when the stride or width changes), added, then ReLU."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(spatial_dims, in_ch, out_ch, 3, stride),
            batch_norm(spatial_dims, out_ch, norm),
            nn.ReLU(),
            conv(spatial_dims, out_ch, out_ch, 3, 1),
            batch_norm(spatial_dims, out_ch, norm),
        )
        self.shortcut = _Shortcut(spatial_dims, in_ch, out_ch, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


RES_BLOCKS = {"full_preact": FullPreActResBlock, "original": OriginalResBlock}


class UpBlock(nn.Sequential):
    """S4's decoder block UP(f): ConvTranspose(f, 3, stride 2, 'same') -> BN -> ReLU; doubles the size."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        super().__init__(
            Conv[Conv.CONVTRANS, spatial_dims](in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
            batch_norm(spatial_dims, out_ch, norm),
            nn.ReLU(),
        )


class OutputHead(nn.Sequential):
    """The S4 networks' last layer, Conv(out, 3x3), with one of two outputs:

    - reconstruction (``residual=False``, S4): a sigmoid, so the network paints the image anew in (0, 1);
    - residual denoising (``residual=True``): no activation; the convolution predicts the corruption
      and the output is ``input - prediction`` (DnCNN, Zhang et al. 2017, "Beyond a Gaussian denoiser",
      IEEE TIP 26(7)). With context slices as input channels (``2k + 1`` of them) the prediction is
      subtracted from the centre channel. A clean input then only has to be left alone, which is
      what keeps a real scan's own anatomy and contrast.

    Keeps the parameter names of S4's ``Sequential(conv, Sigmoid)`` head (``head.0.*``)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, residual: bool = False) -> None:
        super().__init__(conv(spatial_dims, in_ch, out_ch, 3, 1), *([] if residual else [nn.Sigmoid()]))
        self.residual = bool(residual)

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        out = features
        for layer in self:  # (not super().forward: TorchScript compiles a loop over the layers)
            out = layer(out)
        if not self.residual:
            return out
        if image is None:
            raise ValueError("a residual head needs the network's input")
        return centre_channels(image, out.shape[1]) - out


def centre_channels(x: torch.Tensor, n: int) -> torch.Tensor:
    """The middle ``n`` channels of ``x`` (all of them when ``x`` has ``n``): the slice that a stack
    of ``2k + 1`` context slices is centred on."""
    c = x.shape[1]
    if c == n:
        return x
    if c < n or (c - n) % 2:
        raise ValueError(f"cannot centre {n} output channel(s) in an input of {c} channels")
    k = (c - n) // 2
    return x[:, k : k + n]


def immerkaer_mask() -> torch.Tensor:
    """Immerkaer's 3 x 3 mask ``(1, 1, 3, 3)``: it cancels planar structure; 6 sigma for pure noise."""
    return torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]


def noise_sigma(images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-image Gaussian noise sigma ``(B,)`` of a batch of 2D images ``(B, 1, H, W)`` by Immerkaer's
    Laplacian-difference method (CVIU 64(2), 1996): the mean absolute response to a mask that
    cancels planar structure, times sqrt(pi / 2) / 6. Fine anatomy adds little to it, noise a lot,
    which is what lets a denoiser conditioned on it leave a clean scan alone. ``mask``: the
    ``immerkaer_mask()`` already on the images' device (else it is made here, and a tensor built on
    the host and copied to a GPU makes the host wait for the GPU: once per call)."""
    k = immerkaer_mask() if mask is None else mask
    k = k.to(device=images.device, dtype=images.dtype)
    r = torch.nn.functional.conv2d(images, k).abs().flatten(1).mean(1)
    return r * (math.sqrt(math.pi / 2) / 6)


class NoiseLevelMap(nn.Module):
    """Append the input centre slice's estimated noise sigma (``noise_sigma``) as a constant channel:
    the noise-level map of FFDNet (Zhang et al., "FFDNet: Toward a fast and flexible solution for CNN
    based image denoising", IEEE TIP 27(9), 2018), estimated from the image itself, so the network
    stays blind to the user (nothing to set) but knows how much to remove. Immerkaer's mask is a
    buffer that moves with the module and is not saved with the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", immerkaer_mask(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        sigma = noise_sigma(x[:, c // 2 : c // 2 + 1].float(), self.mask).to(x.dtype)
        return torch.cat([x, sigma.view(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])], dim=1)
