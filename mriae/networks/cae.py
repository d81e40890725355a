"""S1's convolutional autoencoder with a dense latent (knee MRI; 2D and 3D through ``spatial_dims``).

Layer plan, 2D at 64x64 (``channels=(64, 128, 256, 256)``, ``latent_size=100``)::

    Conv64  5x5 s2 p2 + LeakyReLU 0.2      32x32x64
    Conv128 5x5 s2 p2 + LeakyReLU 0.2      16x16x128
    Conv256 5x5 s2 p2 + LeakyReLU 0.2      8x8x256
    Conv256 5x5 s2 p2 + LeakyReLU 0.2      4x4x256  -> flatten 4096
    Dense 100 + sigmoid                    latent
    Dense 4096 + ReLU -> 256x4x4
    ConvT256 4x4 s2 p1 + ReLU              8x8
    ConvT128 4x4 s2 p1 + ReLU              16x16
    ConvT64  4x4 s2 p1 + ReLU              32x32
    ConvT1   4x4 s2 p1 + sigmoid           64x64x1

3D (S1's volume CAE): the same with 3D kernels on 1x160x64x64, flatten 256x10x4x4, latent 200.
S1 does not state the activation after the decoder's dense layer; we use ReLU like the rest of the
decoder. Any input size divisible by 16 works (``img_size`` fixes the dense layers' sizes).

The defaults are S1's design exactly. ``norm`` (a MONAI norm spec such as ``("group", {"num_groups":
8})``) puts a normalisation layer between every convolution / transposed convolution and its
activation (not after the output head): the ``cae_3d`` bundle's default, because without it the
dense sigmoid code of the 3D network saturates within the first ten Adam steps (every unit at 1.0
for every volume; measured in ``docs/results_s1_s3.md``). ``param_groups`` gives the encoder's dense
layer its own learning rate (Adam moves each of its ``flatten x latent`` weights by about ``lr`` per
step, so the pre-sigmoid code moves by about ``lr x flatten width``: 40,960 in 3D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from monai.networks.layers.utils import get_norm_layer
from torch import nn

__all__ = ["CAE"]


def _size(img_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    size = (int(img_size),) * spatial_dims if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise ValueError(f"img_size {img_size} does not have {spatial_dims} dimensions")
    return size


class CAE(nn.Module):
    """S1's CAE (Conv 5x5 stride 2 encoder, dense sigmoid latent, ConvTranspose 4x4 decoder).

    Args:
        spatial_dims: 2 (slices, 1x64x64) or 3 (volumes, 1x160x64x64).
        in_channels: image channels.
        img_size: input size (int or per-axis); every axis divisible by ``2 ** len(channels)``.
        latent_size: width of the dense latent (S1: 100 in 2D, 200 in 3D).
        channels: encoder widths; the decoder mirrors them.
        negative_slope: LeakyReLU slope of the encoder (S1: 0.2).
        norm: None (S1) or a MONAI norm spec (``"batch"``, ``("group", {"num_groups": 8})``, ...)
            applied after every convolution and transposed convolution but the output head.

    ``encode(x)`` gives the latent in (0, 1), ``decode(z)`` the image in (0, 1); ``encoder`` and
    ``decoder`` are ``nn.Sequential`` of stages (``mriae.tools.visualize`` hooks them).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 64,
        latent_size: int = 100,
        channels: Sequence[int] = (64, 128, 256, 256),
        negative_slope: float = 0.2,
        norm: str | tuple | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.img_size = spatial_dims, _size(img_size, spatial_dims)
        f = 2 ** len(channels)
        if any(s % f for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be divisible by {f}")
        conv, convt = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.norm = norm

        def normed(layer: nn.Module, ch: int, act: nn.Module) -> nn.Sequential:
            if norm is None:
                return nn.Sequential(layer, act)
            return nn.Sequential(layer, get_norm_layer(norm, spatial_dims, ch), act)

        enc, prev = [], in_channels
        for ch in channels:
            enc.append(normed(conv(prev, ch, 5, stride=2, padding=2), ch, nn.LeakyReLU(negative_slope)))
            prev = ch
        self.encoder = nn.Sequential(*enc)
        self.bottom = (channels[-1], *(s // f for s in self.img_size))
        flat = int(torch.tensor(self.bottom).prod())
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(flat, latent_size), nn.Sigmoid())
        self.from_latent = nn.Sequential(nn.Linear(latent_size, flat), nn.ReLU())
        outs = [*reversed(channels[:-1]), in_channels]
        dec, prev = [], channels[-1]
        for i, ch in enumerate(outs):
            layer = convt(prev, ch, 4, stride=2, padding=1)
            last = i == len(outs) - 1
            dec.append(nn.Sequential(layer, nn.Sigmoid()) if last else normed(layer, ch, nn.ReLU()))
            prev = ch
        self.decoder = nn.Sequential(*dec)

    def param_groups(self, latent_lr: float | None = None) -> list[dict]:
        """Optimiser parameter groups: the encoder's dense layer (``to_latent``) with ``latent_lr``
        (None: the optimiser's own lr), everything else with the optimiser's lr."""
        dense = list(self.to_latent.parameters())
        ids = {id(p) for p in dense}
        rest = [p for p in self.parameters() if id(p) not in ids]
        groups = [{"params": rest}, {"params": dense}]
        if latent_lr is not None:
            groups[1]["lr"] = float(latent_lr)
        return groups

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(z.shape[0], *self.bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
