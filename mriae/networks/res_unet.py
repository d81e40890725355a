"""Residual U-Net autoencoder of S4 (Arnaiz, brain MRI autoencoder thesis, section 5.4.4.4,
code ``res_skip_cae.py``), and the shallow residual autoencoder (5.4.4.1) as its no-skip variant.

Layer plan at 128x128x1 (widths ``channels=(32, 64, 128)``, ``block='full_preact'``)::

    x1 = Conv32 s2                      64x64x32
    RB64 s2 -> RB64 s1 = x2             32x32x64
    RB128 s2                            16x16x128  (latent)
    UP64 -> concat x2                   32x32x128
    UP32 -> concat x1                   64x64x64
    UP16                                128x128x16
    Conv1 3x3 + sigmoid                 128x128x1

483,649 parameters in Keras' count (which includes batch-norm running statistics; see
``count_parameters``); without ``skip`` it is the shallow residual AE (460,609).

Two options, off in S4's layer plan, make it a denoiser for real scans (bundles/res_unet's default):
``residual`` (the head predicts the corruption and subtracts it from the input: ``OutputHead``) and
``full_res`` (a full-resolution conv stage whose features are concatenated before the head, so the
per-pixel noise can be told from the anatomy: S4's first layer is already at half resolution).
With ``in_channels = 2k + 1`` the input is a stack of neighbouring slices and the output is the
centre slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mriae.networks.blocks import RES_BLOCKS, NoiseLevelMap, OutputHead, UpBlock, conv, records_init_args

__all__ = ["ResUNetAE"]


@records_init_args
class ResUNetAE(nn.Module):
    """Residual U-Net autoencoder (``skip=True``) or shallow residual autoencoder (``skip=False``).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels / out_channels: image channels (1 for MRI).
        channels: encoder widths (first conv, first residual stage, latent stage).
        block: ``"full_preact"`` (S4's Residual U-Net) or ``"original"``.
        skip: concatenate encoder features into the decoder (U-Net) or not.
        img_size: expected input size (informational); any size divisible by 8 works.
        residual: predict the corruption and return ``input - prediction`` (no sigmoid).
        full_res: width of a full-resolution stage (two 3x3 convs) concatenated before the head
            (0: none, S4).
        norm: ``"batch"`` (S4), ``"none"`` or ``"group"`` (``blocks.batch_norm``).
        noise_map: append the centre slice's estimated noise sigma as an input channel
            (``blocks.NoiseLevelMap``, FFDNet's noise-level map).

    Input ``(B, in_channels, *spatial)`` (spatial divisible by 8), in [0, 1]; output
    ``(B, out_channels, *spatial)``: in (0, 1) (sigmoid) or, with ``residual``, the denoised centre
    channel(s).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        block: str = "full_preact",
        skip: bool = True,
        img_size: int | Sequence[int] | None = 128,
        residual: bool = False,
        full_res: int = 0,
        norm: str = "batch",
        noise_map: bool = False,
    ) -> None:
        super().__init__()
        if block not in RES_BLOCKS:
            raise ValueError(f"block {block!r} is not one of {sorted(RES_BLOCKS)}")
        c1, c2, c3 = channels
        rb = RES_BLOCKS[block]
        self.spatial_dims, self.skip, self.img_size = spatial_dims, skip, img_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.residual, self.full_res = bool(residual), int(full_res)
        self.noise_map = NoiseLevelMap() if noise_map else None
        cin = in_channels + (1 if noise_map else 0)
        if self.full_res:
            f = self.full_res
            self.full = nn.Sequential(
                conv(spatial_dims, cin, f, 3, 1), nn.ReLU(), conv(spatial_dims, f, f, 3, 1), nn.ReLU()
            )
        self.stem = conv(spatial_dims, cin, c1, 3, 2)
        self.stage2 = nn.Sequential(rb(spatial_dims, c1, c2, 2, norm), rb(spatial_dims, c2, c2, 1, norm))
        self.stage3 = rb(spatial_dims, c2, c3, 2, norm)
        self.up1 = UpBlock(spatial_dims, c3, c2, norm)
        self.up2 = UpBlock(spatial_dims, 2 * c2 if skip else c2, c1, norm)
        self.up3 = UpBlock(spatial_dims, 2 * c1 if skip else c1, c1 // 2, norm)
        self.head = OutputHead(spatial_dims, c1 // 2 + self.full_res, out_channels, residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        if self.noise_map is not None:
            x = self.noise_map(x)
        x1 = self.stem(x)
        x2 = self.stage2(x1)
        z = self.stage3(x2)
        y = self.up1(z)
        if self.skip:
            y = torch.cat([y, x2], dim=1)
        y = self.up2(y)
        if self.skip:
            y = torch.cat([y, x1], dim=1)
        y = self.up3(y)
        if self.full_res:
            y = torch.cat([y, self.full(x)], dim=1)
        return self.head(y, image)
