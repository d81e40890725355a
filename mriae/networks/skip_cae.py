"""Skip-connection convolutional autoencoder of S4 (Arnaiz, brain MRI autoencoder thesis, section
5.4.4.3, code ``skip_connection_cae.py``): no residual blocks; encoder features are ADDED into the
decoder (FCN style), not concatenated (U-Net style).

Layer plan at 128x128x1 (widths ``channels=(32, 64, 128)``)::

    e1 = Conv32 s2 -> BN   (x1 = e1 before ReLU)    64x64x32
    e2 = Conv64 s2 -> BN   (x2)                     32x32x64
    e3 = Conv128 s2 -> BN -> ReLU                   16x16x128 (latent)
    ConvT64 s2 -> BN -> + x2 -> ReLU                32x32x64
    ConvT32 s2 -> BN -> + x1 -> ReLU                64x64x32
    UP16 (ConvT -> BN -> ReLU)                      128x128x16
    Conv1 3x3 + sigmoid                             128x128x1

191,041 parameters in Keras' count (``mriae.networks.count_parameters``), exactly S4's figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from mriae.networks.blocks import OutputHead, UpBlock, batch_norm, conv, records_init_args

__all__ = ["SkipCAE"]


class _SkipUp(nn.Module):
    """S4's decoder block with an additive skip: ConvT(3, s2) -> BN -> + skip -> ReLU."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_ch, out_ch, 3, stride=2, padding=1, output_padding=1)
        self.bn = batch_norm(spatial_dims, out_ch)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.up(x)) + skip)


@records_init_args
class SkipCAE(nn.Module):
    """Skip-connection convolutional autoencoder (additive encoder-to-decoder skips).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels / out_channels: image channels (1 for MRI).
        channels: encoder widths of the three stride-2 conv blocks.
        img_size: expected input size (informational); any size divisible by 8 works.
        residual: predict the corruption and return ``input - prediction`` (``OutputHead``).

    Input ``(B, in_channels, *spatial)`` in [0, 1]; output the same shape, in (0, 1) (sigmoid).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        img_size: int | Sequence[int] | None = 128,
        residual: bool = False,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.spatial_dims, self.img_size = spatial_dims, img_size
        self.enc1 = nn.Sequential(conv(spatial_dims, in_channels, c1, 3, 2), batch_norm(spatial_dims, c1))
        self.enc2 = nn.Sequential(conv(spatial_dims, c1, c2, 3, 2), batch_norm(spatial_dims, c2))
        self.enc3 = nn.Sequential(conv(spatial_dims, c2, c3, 3, 2), batch_norm(spatial_dims, c3), nn.ReLU())
        self.act = nn.ReLU()
        self.up1 = _SkipUp(spatial_dims, c3, c2)
        self.up2 = _SkipUp(spatial_dims, c2, c1)
        self.up3 = UpBlock(spatial_dims, c1, c1 // 2)
        self.head = OutputHead(spatial_dims, c1 // 2, out_channels, residual)
        self.in_channels, self.out_channels, self.residual = in_channels, out_channels, bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(x)  # BN output, before its ReLU: the skip
        x2 = self.enc2(self.act(x1))
        z = self.enc3(self.act(x2))
        y = self.up2(self.up1(z, x2), x1)
        return self.head(self.up3(y), x)
