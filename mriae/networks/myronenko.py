"""Myronenko autoencoder of S4 (Arnaiz, brain MRI autoencoder thesis, section 5.4.4.2, code
``residual_cae_myronenko.py``): the encoder branch of Myronenko's BraTS 2018 network (one level
shallower) with S4's decoder. Downsampling is a stride-2 convolution OUTSIDE the residual blocks.

Layer plan at 128x128x1 (widths ``channels=(32, 64, 128)``)::

    Conv32 s1 -> SpatialDropout(0.1)                128x128x32
    FPRB32 -> Conv32 s2                             64x64x32
    FPRB64 -> FPRB64 -> Conv64 s2                   32x32x64
    FPRB128 -> FPRB128 -> Conv128 s2                16x16x128 (latent)
    UP64 -> UP32 -> UP16 -> Conv1 3x3 + sigmoid     128x128x1

Every FPRB here is S4's full pre-activation block (BN -> ReLU -> Conv -> BN -> ReLU -> Conv) whose
shortcut is ALWAYS a 1x1 convolution, as in the seed's code (Myronenko's "green block"), even when
the width does not change. 991,041 parameters in Keras' count (SPEC: "about 991,000, computed").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Dropout
from torch import nn

from mriae.networks.blocks import FullPreActResBlock, OutputHead, UpBlock, conv, records_init_args

__all__ = ["MyronenkoAE", "GreenBlock"]


class GreenBlock(FullPreActResBlock):
    """Full pre-activation residual block with a 1x1 convolution on the shortcut in every case."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(spatial_dims, in_ch, out_ch, stride)
        self.shortcut = conv(spatial_dims, in_ch, out_ch, 1, stride)


@records_init_args
class MyronenkoAE(nn.Module):
    """Myronenko-encoder autoencoder.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels / out_channels: image channels (1 for MRI).
        channels: widths of the three encoder levels.
        blocks: residual blocks per level (S4: 1, 2, 2).
        dropout: spatial (channel-wise) dropout rate after the first convolution (S4: 0.1).
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
        blocks: Sequence[int] = (1, 2, 2),
        dropout: float = 0.1,
        img_size: int | Sequence[int] | None = 128,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.img_size = spatial_dims, img_size
        c1 = channels[0]
        layers: list[nn.Module] = [
            conv(spatial_dims, in_channels, c1, 3, 1),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
        ]
        prev = c1
        for ch, n in zip(channels, blocks):
            for _ in range(n):
                layers.append(GreenBlock(spatial_dims, prev, ch))
                prev = ch
            layers.append(conv(spatial_dims, ch, ch, 3, 2))
        self.encoder = nn.Sequential(*layers)
        ups, prev = [], channels[-1]
        for ch in (channels[1], channels[0], channels[0] // 2):
            ups.append(UpBlock(spatial_dims, prev, ch))
            prev = ch
        self.decoder = nn.Sequential(*ups)
        self.head = OutputHead(spatial_dims, prev, out_channels, residual)
        self.in_channels, self.out_channels, self.residual = in_channels, out_channels, bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)), x)
