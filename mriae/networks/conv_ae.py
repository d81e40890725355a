"""S2's convolutional autoencoder (the NIfTI brain-MRI tutorial): BatchNorm, max-pooling, upsampling.

Layer plan at 176x176x1 (3x3 'same' convolutions, each followed by ReLU then BatchNorm, as the
tutorial's Keras ``Conv2D(activation='relu')`` + ``BatchNormalization()``)::

    [32, 32]  maxpool 2     88x88x32
    [64, 64]  maxpool 2     44x44x64
    [128, 128]              44x44x128   (latent)
    [64, 64]  upsample 2    88x88x64
    [32, 32]  upsample 2    176x176x32
    Conv1 3x3 + sigmoid     176x176x1

427,713 parameters in Keras' count (``mriae.networks.count_parameters``), S2's figure.
Upsampling is nearest neighbour (Keras' ``UpSampling2D`` default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Pool
from torch import nn

from mriae.networks.blocks import batch_norm, conv

__all__ = ["ConvAE"]


def _double_conv(spatial_dims: int, in_ch: int, out_ch: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        layers += [conv(spatial_dims, c_in, out_ch, 3), nn.ReLU(), batch_norm(spatial_dims, out_ch)]
    return nn.Sequential(*layers)


class ConvAE(nn.Module):
    """S2's BatchNorm convolutional autoencoder.

    Args:
        spatial_dims: 2 (S2) or 3.
        in_channels: image channels.
        channels: encoder widths per stage (S2: 32, 64, 128); the decoder mirrors all but the last.

    Input sizes must be divisible by ``2 ** (len(channels) - 1)`` (176 = 4 x 44 for S2).
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128)
    ) -> None:
        super().__init__()
        pool = Pool[Pool.MAX, spatial_dims]
        enc: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            stage = _double_conv(spatial_dims, prev, ch)
            enc.append(nn.Sequential(stage, pool(2)) if i < len(channels) - 1 else stage)
            prev = ch
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for ch in reversed(channels[:-1]):
            dec.append(nn.Sequential(_double_conv(spatial_dims, prev, ch), nn.Upsample(scale_factor=2)))
            prev = ch
        dec.append(nn.Sequential(conv(spatial_dims, prev, in_channels, 3), nn.Sigmoid()))
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
