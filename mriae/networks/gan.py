"""Generator and discriminator (critic) of S1's DCGAN / WGAN-GP (knee MRI thesis, tables 2.3, 2.4),
for 2D slices and, with ``spatial_dims=3``, whole volumes (S1's future work).

Layer plan at 64x64 (``channels=(1024, 512, 256, 128)``, ``latent_size=200``)::

    Generator                                         Discriminator
    z (200) -> Dense 16384 -> 1024x4x4                1x64x64 -> Conv 128 5x5 s2 p2 + LeakyReLU 0.2  32x32
    ConvT 512 5x5 s2 + ReLU          8x8              Conv 256   16x16, Conv 512  8x8, Conv 1024  4x4
    ConvT 256, ConvT 128 (+ ReLU)    16x16, 32x32     flatten 16384 -> Dense 1 (+ sigmoid for DCGAN only)
    ConvT 1 + sigmoid                64x64

20,500,481 generator and 17,224,705 discriminator parameters in 2D. S1's "Crop 1" transposed
convolutions are ``padding=2, output_padding=1`` here (exact doubling with a 5x5 kernel; any kernel
size doubles exactly, e.g. 4 with ``padding=1, output_padding=0``). No batch norm by default: S1's
tables have none. ``GanGenerator(norm="batch")`` adds one after the dense layer and after every
hidden transposed convolution, each followed by ReLU, as in DCGAN (Radford et al. 2016) and
WGAN-GP's generators (Gulrajani et al. 2017); the critic never gets batch norm (the gradient penalty
is per sample, and batch norm would couple the samples of a batch). Layers come from MONAI's
factories (``Conv[Conv.CONV(TRANS), dims]``, ``Act``, ``get_norm_layer``), so the same class builds
the 3D networks (``1x64x64x64`` with ``spatial_dims=3``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Act, Conv
from monai.networks.layers.utils import get_norm_layer
from torch import nn

__all__ = ["GanGenerator", "GanDiscriminator"]


def _start_size(img_size: int, n_up: int) -> int:
    start = img_size // 2**n_up
    if start < 1 or start * 2**n_up != img_size:
        raise ValueError(
            f"img_size {img_size} must be divisible by 2**{n_up} (one halving per channel stage)"
        )
    return start


class GanGenerator(nn.Module):
    """S1's generator: latent ``(B, latent_size)`` -> image ``(B, out_channels, *[img_size] * spatial_dims)``
    in (0, 1).

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        latent_size: length of z (S1: 200; its table 2.3 says 100, its hyperparameter table 200).
        channels: widths after the dense layer and after each transposed convolution but the last
            (S1: 1024, 512, 256, 128); one stride-2 ConvTranspose per entry doubles the size.
        out_channels: image channels.
        img_size: output side length (64 in S1).
        kernel_size: transposed-convolution kernel (5).
        norm: None (S1) or a MONAI norm spec (``"batch"``): normalisation + ReLU after the dense layer
            and before the ReLU of every hidden transposed convolution.

    Any input whose trailing dims hold ``latent_size`` values per sample is accepted (``(B, nz)``,
    ``(B, nz, 1, 1)``), so MONAI's ``verify_net_in_out`` can feed ``(1, nz)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        latent_size: int = 200,
        channels: Sequence[int] = (1024, 512, 256, 128),
        out_channels: int = 1,
        img_size: int = 64,
        kernel_size: int = 5,
        norm: str | tuple | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.latent_size = spatial_dims, latent_size
        self.channels = tuple(channels)
        self.start = _start_size(img_size, len(self.channels))
        self.dense = nn.Linear(latent_size, self.channels[0] * self.start**spatial_dims)
        convt = Conv[Conv.CONVTRANS, spatial_dims]
        pad = (kernel_size - 1) // 2
        out_pad = 2 + 2 * pad - kernel_size  # output = 2 * input exactly
        self.norm = norm
        self.dense_norm = (
            nn.Sequential(get_norm_layer(norm, spatial_dims, self.channels[0]), Act[Act.RELU]())
            if norm is not None
            else nn.Identity()
        )
        layers: list[nn.Module] = []
        widths = [*self.channels, out_channels]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(convt(cin, cout, kernel_size, stride=2, padding=pad, output_padding=out_pad))
            hidden = i < len(widths) - 2
            if hidden and norm is not None:
                layers.append(get_norm_layer(norm, spatial_dims, cout))
            layers.append(Act[Act.RELU]() if hidden else Act[Act.SIGMOID]())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z.reshape(z.shape[0], -1))
        x = x.view(z.shape[0], self.channels[0], *[self.start] * self.spatial_dims)
        return self.deconv(self.dense_norm(x))


class GanDiscriminator(nn.Module):
    """S1's discriminator / critic: image -> one score per sample ``(B, 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: widths of the stride-2 5x5 convolutions (S1: 128, 256, 512, 1024).
        img_size: input side length (64).
        sigmoid: end with a sigmoid (DCGAN: a probability) or not (WGAN-GP: an unbounded critic).
        negative_slope: LeakyReLU slope (0.2).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (128, 256, 512, 1024),
        img_size: int = 64,
        sigmoid: bool = True,
        kernel_size: int = 5,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        end = _start_size(img_size, len(channels))
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        widths = [in_channels, *channels]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(conv(cin, cout, kernel_size, stride=2, padding=(kernel_size - 1) // 2))
            layers.append(Act[Act.LEAKYRELU](negative_slope=negative_slope))
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Linear(channels[-1] * end**spatial_dims, 1)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(self.conv(x).flatten(1))
        return torch.sigmoid(y) if self.sigmoid else y
